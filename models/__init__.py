"""`paged_context.models`: the Page Controller network and its training, and fetching the
embedded default LLM and the opt-in evaluation model. Filled by the controller and
transformers-engine issues."""
