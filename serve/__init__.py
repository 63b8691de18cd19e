"""`paged_context.serve`: paged conversations served: the OpenAI-compatible server
(`paged-context serve`), `PagedLLM` in-process, and the terminal chat."""

from .llm import PagedLLM

__all__ = ["PagedLLM"]
