"""Keyword strategies by name: which words a page's bookmark carries.

A strategy sees all pages of a conversation at once (some keywords only make sense
against the others) and returns one bookmark per page. Strategies are looked up by name
in a registry: the lexical ones (`lexical_keywords`), the paper's `llm-batch` and
`hybrid` (`llm_keywords`), which ask a model and take a completion function besides
`n`, and any that `register` adds.

A session uses a strategy's incremental form (`incremental`), which bookmarks pages as
they close at a cost that does not grow with the conversation (see `lexical_keywords`
and `llm_keywords` for how each differs from its batch form); a registered strategy
without one runs over every page so far each time pages close.
"""

from __future__ import annotations

from typing import Callable, Sequence

from . import lexical_keywords, llm_keywords
from .bookmarks import Bookmark
from .lexical_keywords import Incremental, KeywordStrategy, Rebatch
from .pages import Page

StrategyFactory = Callable[..., KeywordStrategy]

_REGISTRY: dict[str, StrategyFactory] = {**lexical_keywords.STRATEGIES, **llm_keywords.STRATEGIES}
_INCREMENTAL: dict[str, Callable[..., Incremental]] = {**lexical_keywords.INCREMENTAL, **llm_keywords.INCREMENTAL}
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


def incremental(name: str, **options) -> Incremental:
    """The strategy for pages that come one by one (a session's), fresh; the options as `make`'s."""
    if name in _INCREMENTAL:
        return _INCREMENTAL[name](**options)
    return Rebatch(lambda: make(name, **options))
