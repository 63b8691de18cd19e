"""`paged_context.serve`: the OpenAI-compatible paging server (`paged-context serve`)."""
