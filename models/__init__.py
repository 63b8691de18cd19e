"""`paged_context.models`: the Page Controller network and its training, and fetching the
embedded default LLM, the opt-in evaluation model and the embedding model of `bench
evidence`. Filled by the controller and transformers-engine issues."""
