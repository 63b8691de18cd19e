"""`paged_context.serve`: the OpenAI-compatible paging server. Filled by the server issue."""
