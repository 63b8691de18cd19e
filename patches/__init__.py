"""`paged_context.patches`: what plugs into vLLM and transformers (recall tool parser,
logits processors, Cache subclasses, generation hooks). Filled by the engine issues."""
