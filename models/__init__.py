"""`paged_context.models`: the Page Controller network and its training, and fetching the
embedded default LLM. Filled by the controller and transformers-engine issues."""
