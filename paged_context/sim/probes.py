"""The cooperative-paging simulator: which pages are in context when a question comes.

A conversation streams in turn by turn. A page enters the resident set when its first
turn arrives (the page being written is always in context) and the policy evicts down to
`k` resident pages. A probe asks a question after some turn; it is *available* when its
evidence pages are resident at that moment. Afterwards the evidence pages are referenced
(recalled if evicted), so every policy sees the same access sequence and Belady can be
given it in advance.

With a prefetch budget, up to that many non-resident pages chosen for the question (by
BM25, or by the learned controller) join the context for this probe only: the resident
set stays k pages, so prefetching never changes what the policy sees.

A deterministic lexical stand-in plays the model's choice among bookmarks: on a probe
whose evidence is not in context it recalls the evicted page whose bookmark shares the
most words with the question, if any does. It observes the cache without changing it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from ..bm25 import BM25
from ..bookmarks import Bookmark
from ..pages import Page, segment
from ..policies import Policy, ResidentSet
from ..policy_registry import make_policy
from ..text import content_terms, normalize, words
from .conversations import Conversation, Probe


@dataclass(frozen=True)
class ProbeOutcome:
    conversation: str
    category: str
    needed: tuple[int, ...]  # pages holding the evidence
    resident: tuple[bool, ...]  # per needed page: resident when asked
    prefetched: tuple[int, ...] = ()
    recalled: int | None = None  # the stand-in's pick when no evidence was in context
    recall_correct: bool = False

    @property
    def any_resident(self) -> bool:
        return any(self.resident)

    @property
    def all_resident(self) -> bool:
        return all(self.resident)

    @property
    def _in_context(self) -> list[bool]:
        return [r or p in self.prefetched for p, r in zip(self.needed, self.resident)]

    @property
    def any_in_context(self) -> bool:
        return any(self._in_context)

    @property
    def all_in_context(self) -> bool:
        return all(self._in_context)

    @property
    def answered(self) -> bool:
        """In context, or brought back by the stand-in's recall."""
        return self.any_in_context or self.recall_correct


def _events(conversation: Conversation, pages: Sequence[Page]) -> list[tuple[str, object]]:
    """('page', page_id) when a page starts and ('probe', probe) when one is asked, in order."""
    starts = {p.first_turn: p.id for p in pages}
    probes = sorted(conversation.probes, key=lambda p: p.at)
    events: list[tuple[str, object]] = []
    i = 0
    for t in range(len(conversation.turns) + 1):
        while i < len(probes) and probes[i].at == t:
            events.append(("probe", probes[i]))
            i += 1
        if t in starts:
            events.append(("page", starts[t]))
    return events


def _needed(probe: Probe, page_of_turn: dict[int, int]) -> tuple[int, ...]:
    return tuple(sorted({page_of_turn[e] for e in probe.evidence if e < probe.at}))


def pick_bookmark(question: str, candidates: Sequence[Bookmark]) -> int | None:
    """The page whose bookmark best matches the question, or None when none shares a word.

    Shared words count by their rarity among the candidates' bookmarks (log(1 + n/df)),
    as a reader would: a name on every bookmark says nothing about which page to open.
    Ties go to the earliest page.
    """
    asked = set(content_terms(question))
    terms = {b.page_id: {normalize(w) for k in b.keywords for w in words(k)} for b in candidates}
    df = Counter(t for ts in terms.values() for t in ts)
    best, best_score = None, 0.0
    for page_id, ts in terms.items():
        score = sum(math.log(1 + len(terms) / df[t]) for t in asked & ts)
        if score > best_score:
            best, best_score = page_id, score
    return best


PREFETCHERS = ("bm25", "learned")


def split_spec(spec: str) -> tuple[str, str | None]:
    """A policy spec names the eviction policy and, after '+', the prefetcher:
    'lru' -> ('lru', None), 'lru+bm25' -> ('lru', 'bm25'), and 'learned+prefetch' ->
    ('learned', 'learned'), the controller prefetching for itself."""
    policy, _, extra = spec.partition("+")
    if extra not in ("", "bm25", "prefetch") or (extra == "prefetch" and policy != "learned"):
        raise ValueError(f"bad policy spec {spec!r}: use NAME, NAME+bm25 or learned+prefetch")
    return policy, {"": None, "bm25": "bm25", "prefetch": "learned"}[extra]


def simulate(
    conversation: Conversation,
    boundary: str,
    policy: str | Policy,
    k: int = 5,
    seed: int = 0,
    bookmarks: Sequence[Bookmark] | None = None,
    pages: Sequence[Page] | None = None,
    prefetch: str | None = None,
    budget: int = 3,
) -> list[ProbeOutcome]:
    """Outcomes of every probe whose evidence was said before it was asked.

    `policy` is a name or a fresh Policy. `prefetch` is 'bm25' or 'learned' (the latter
    needs the learned policy, which ranks pages for the question itself).
    `bookmarks` (one per page, for the recall stand-in) are made once over the whole
    conversation: exact for probes at the end, and for probes mid-way the keywords of
    earlier pages may have been chosen knowing later pages too.
    """
    if prefetch not in (None, *PREFETCHERS):
        raise ValueError(f"unknown prefetch {prefetch!r}; expected one of {PREFETCHERS}")
    pages = list(pages) if pages is not None else segment(conversation.turns, boundary)
    page_of_turn = {t.index: p.id for p in pages for t in p.turns}
    by_page = {b.page_id: b for b in bookmarks or ()}
    events = [
        (kind, item, _needed(item, page_of_turn) if kind == "probe" else (item,))
        for kind, item in _events(conversation, pages)
    ]
    policy = make_policy(policy, seed) if isinstance(policy, str) else policy
    if prefetch == "learned" and not hasattr(policy, "prefetch"):
        raise ValueError(f"learned prefetch needs the learned policy, not {policy.name}")
    cache = ResidentSet(k, policy, future=[p for _, _, refs in events for p in refs])
    policy.attach(pages)
    index, text_of = BM25(), {p.id: p.text for p in pages}
    outcomes = []
    for kind, item, needed in events:
        if kind == "page":
            if prefetch == "bm25":
                index.add(item, content_terms(text_of[item]))
            cache.access(item)
            continue
        policy.on_request(item.question)
        if not needed:
            continue
        written = page_of_turn[item.at - 1]  # pages after it do not exist yet
        evicted = [pid for pid in range(1, written + 1) if pid not in cache]
        fetched: list[int] = []
        if prefetch == "bm25":
            fetched = index.top(content_terms(item.question), budget, among=evicted)
        elif prefetch == "learned":
            fetched = policy.prefetch(evicted, budget, cache.step)
        outcome = ProbeOutcome(conversation.id, item.category, needed, tuple(p in cache for p in needed), tuple(fetched))
        if not outcome.any_in_context and by_page:
            recalled = pick_bookmark(item.question, [by_page[pid] for pid in evicted if pid in by_page and pid not in fetched])
            outcome = replace(outcome, recalled=recalled, recall_correct=recalled in needed)
        outcomes.append(outcome)
        for p in needed:
            cache.access(p)
    return outcomes
