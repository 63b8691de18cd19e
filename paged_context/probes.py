"""The cooperative-paging simulator: which pages are in context when a question comes.

A conversation streams in turn by turn. A page enters the resident set when its first
turn arrives (the page being written is always in context) and the policy evicts down to
`k` resident pages. A probe asks a question after some turn; it is *available* when its
evidence pages are resident at that moment. Afterwards the evidence pages are referenced
(recalled if evicted), so every policy sees the same access sequence and Belady can be
given it in advance.

A deterministic lexical stand-in plays the model's choice among bookmarks: on a probe
whose evidence is not resident it recalls the evicted page whose bookmark shares the most
words with the question, if any does. It observes the cache without changing it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from .bookmarks import Bookmark
from .conversations import Conversation, Probe
from .pages import Page, segment
from .policies import ResidentSet, make_policy
from .text import content_terms, normalize, words


@dataclass(frozen=True)
class ProbeOutcome:
    conversation: str
    category: str
    needed: tuple[int, ...]  # pages holding the evidence
    any_resident: bool
    all_resident: bool
    recalled: int | None = None  # the stand-in's pick when the evidence was not resident
    recall_correct: bool = False

    @property
    def answered(self) -> bool:
        """In context, or brought back by the stand-in's recall."""
        return self.any_resident or self.recall_correct


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


def simulate(
    conversation: Conversation,
    boundary: str,
    policy: str,
    k: int = 5,
    seed: int = 0,
    bookmarks: Sequence[Bookmark] | None = None,
    pages: Sequence[Page] | None = None,
) -> list[ProbeOutcome]:
    """Outcomes of every probe whose evidence was said before it was asked.

    `bookmarks` (one per page, for the recall stand-in) are made once over the whole
    conversation: exact for probes at the end, and for probes mid-way the keywords of
    earlier pages may have been chosen knowing later pages too.
    """
    pages = list(pages) if pages is not None else segment(conversation.turns, boundary)
    page_of_turn = {t.index: p.id for p in pages for t in p.turns}
    by_page = {b.page_id: b for b in bookmarks or ()}
    events = [
        (kind, item, _needed(item, page_of_turn) if kind == "probe" else (item,))
        for kind, item in _events(conversation, pages)
    ]
    cache = ResidentSet(k, make_policy(policy, seed), future=[p for _, _, refs in events for p in refs])
    outcomes = []
    for kind, item, needed in events:
        if kind == "page":
            cache.access(item)
            continue
        if not needed:
            continue
        resident = [p in cache for p in needed]
        recalled = None
        if not any(resident) and by_page:
            written = page_of_turn[item.at - 1]  # pages after it do not exist yet
            recalled = pick_bookmark(item.question, [b for pid, b in by_page.items() if pid <= written and pid not in cache])
        outcomes.append(
            ProbeOutcome(conversation.id, item.category, needed, any(resident), all(resident), recalled, recalled in needed)
        )
        for p in needed:
            cache.access(p)
    return outcomes
