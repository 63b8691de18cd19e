"""Keyword strategies by name: which words a page's bookmark carries.

A strategy sees all pages of a conversation at once (some keywords only make sense
against the others) and returns one bookmark per page. Strategies are looked up by name
in a registry: the lexical ones (`lexical_keywords`), the paper's `llm-batch` and
`hybrid` (`llm_keywords`), which ask a model and take a completion function besides
`n`, and any that `register` adds.
"""

from __future__ import annotations

from typing import Callable, Sequence

from . import lexical_keywords, llm_keywords
from .bookmarks import Bookmark
from .lexical_keywords import KeywordStrategy
from .pages import Page

StrategyFactory = Callable[..., KeywordStrategy]

_REGISTRY: dict[str, StrategyFactory] = {**lexical_keywords.STRATEGIES, **llm_keywords.STRATEGIES}
LLM_STRATEGIES = tuple(llm_keywords.STRATEGIES)


def register(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Make a strategy available by name; the factory takes keyword options (n, seed,
    and whatever it needs, e.g. an endpoint) and returns the strategy."""

    def add(factory: StrategyFactory) -> StrategyFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **options) -> KeywordStrategy:
    if name not in _REGISTRY:
        raise ValueError(f"unknown keyword strategy {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name](**options)


def bookmarks(pages: Sequence[Page], strategy: str = "distinctive", **options) -> list[Bookmark]:
    return make(strategy, **options)(pages)
