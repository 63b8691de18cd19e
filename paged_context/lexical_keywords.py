"""Keyword strategies that read only the pages' words: `random` (the paper's floor),
`heuristic` (the cooperative-paging paper's rule), `tfidf`, and `distinctive` (the default).

A strategy sees all pages of a conversation at once (some keywords only make sense
against the others) and returns one bookmark per page; `keywords` looks them up by name.

A session meets its pages one at a time and freezes each bookmark as its page closes, so
each strategy also has an incremental form (`Incremental`), whose cost per new page does
not grow with the conversation: `random` and `heuristic` read the page alone anyway;
`tfidf` and `distinctive` keep their term statistics as pages come (`TermStats`), and
`distinctive` the keywords it has handed out. Their keywords may differ slightly from
the batch ones over the same pages: a page is scored against the pages before it only,
and a term goes to the first page that takes it, not to the page where it scores best.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Callable, Collection, Mapping, Sequence

from .bookmarks import Bookmark
from .pages import Page
from .text import STOP_WORDS, STOP_WORDS_60, normalize, words

KeywordStrategy = Callable[[Sequence[Page]], list[Bookmark]]
# A strategy's incremental form: called with pages as they close, in order, it returns
# their bookmarks. `made` holds bookmarks made before (a session reopened from its store):
# those come back as they are, and their pages still count for the pages after them.
Incremental = Callable[[Sequence[Page], Mapping[int, Bookmark]], list[Bookmark]]


# --- shared term statistics ------------------------------------------------------------


def _terms(page: Page) -> Counter[str]:
    return Counter(t for t in (normalize(w) for w in words(page.text)) if len(t) > 2 and t not in STOP_WORDS)


def _surface_forms(page: Page, terms: Collection[str] | None = None) -> dict[str, str]:
    """The most frequent spelling of each normalised term on the page (of `terms`, if
    given), so bookmarks read 'Caroline' rather than 'caroline'."""
    forms: dict[str, Counter[str]] = {}
    for w in words(page.text):
        term = normalize(w)
        if terms is None or term in terms:
            forms.setdefault(term, Counter())[w] += 1
    return {t: c.most_common(1)[0][0] for t, c in forms.items()}


def _idf(n_pages: int, df: int) -> float:
    return math.log((1 + n_pages) / (1 + df)) + 1


class TermStats:
    """Document frequencies over the pages seen so far."""

    def __init__(self) -> None:
        self.pages = 0
        self.df: Counter[str] = Counter()

    def add(self, tf: Counter[str]) -> None:
        self.pages += 1
        self.df.update(tf.keys())

    def idf(self, term: str) -> float:
        return _idf(self.pages, self.df[term])


def _stats(tfs: Sequence[Counter[str]]) -> TermStats:
    stats = TermStats()
    for tf in tfs:
        stats.add(tf)
    return stats


def _tfidf_bookmark(page: Page, tf: Counter[str], stats: TermStats, n: int) -> Bookmark:
    scores = {t: c * stats.idf(t) for t, c in tf.items()}
    top = sorted(scores, key=lambda t: (-scores[t], t))[:n]
    forms = _surface_forms(page, top)
    return Bookmark(page.id, tuple(forms[t] for t in top))


def _distinctive_score(count: int, idf: float) -> float:
    """sqrt(tf) * idf^2: rarity across pages matters more than repetition within one, because
    a word that appears on many pages cannot point to any of them."""
    return math.sqrt(count) * idf**2


# --- strategies -----------------------------------------------------------------------


def random_keywords(n: int = 4, seed: int = 0) -> KeywordStrategy:
    """The paper's floor: any words of the page."""

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        out = []
        for p in pages:
            pool = sorted({w for w in words(p.text) if w.lower() not in STOP_WORDS_60})
            out.append(Bookmark(p.id, tuple(random.Random(seed * 1_000_003 + p.id).sample(pool, min(n, len(pool))))))
        return out

    return strategy


_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_HEURISTIC_PATTERNS = re.compile(
    rf"\$\d[\d,]*(?:\.\d+)?"  # dollar amounts
    rf"|\b\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?\b"  # 7 May 2023
    rf"|\b(?:{_MONTHS}) \d{{1,2}}(?:, \d{{4}})?\b"  # May 7, 2023
    rf"|\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}/\d{{1,2}}(?:/\d{{2,4}})?\b"  # ISO and slashed dates
    rf"|\b\d[\d,.]*\b"  # numbers
    rf"|\b[A-Z][A-Za-z'’\-]+\b"  # capitalised multi-character tokens
)


def heuristic_keywords(n: int = 5, first_turns: int = 4, minimum: int = 3) -> KeywordStrategy:
    """The cooperative-paging paper's rule: capitalised tokens, numbers, dollar amounts and
    dates from the first turns of the page, minus the stop list, keeping 3-5. Pages with
    fewer such tokens are topped up with their most frequent content words."""

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        out = []
        for p in pages:
            head = " ".join(t.text for t in p.turns[:first_turns])
            found: list[str] = []
            for m in _HEURISTIC_PATTERNS.finditer(head):
                k = m.group(0).rstrip(".,")
                if k.lower() not in STOP_WORDS_60 and k.lower() not in (f.lower() for f in found):
                    found.append(k)
            if len(found) < minimum:
                forms = _surface_forms(p)
                extra = [forms[t] for t, _ in _terms(p).most_common() if forms[t].lower() not in (f.lower() for f in found)]
                found += extra[: minimum - len(found)]
            out.append(Bookmark(p.id, tuple(found[:n])))
        return out

    return strategy


def tfidf_keywords(n: int = 4) -> KeywordStrategy:
    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        tfs = [_terms(p) for p in pages]
        stats = _stats(tfs)
        return [_tfidf_bookmark(p, tf, stats, n) for p, tf in zip(pages, tfs)]

    return strategy


def distinctive_keywords(n: int = 4) -> KeywordStrategy:
    """Keywords that tell a page apart from every other page.

    Terms are scored by `_distinctive_score` and handed out greedily, best score first,
    each term to one page only (the page where it scores best). A page left short, all
    its terms taken, falls back to its best shared terms: the only case where two
    bookmarks share a keyword.
    """

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        tfs = [_terms(p) for p in pages]
        stats = _stats(tfs)
        scored = sorted((-_distinctive_score(c, stats.idf(t)), i, t) for i, tf in enumerate(tfs) for t, c in tf.items())
        chosen: list[list[str]] = [[] for _ in pages]
        taken: set[str] = set()
        for _, i, t in scored:
            if len(chosen[i]) < n and t not in taken:
                chosen[i].append(t)
                taken.add(t)
        for _, i, t in scored:
            if len(chosen[i]) < n and t not in chosen[i]:
                chosen[i].append(t)
        forms = [_surface_forms(p) for p in pages]
        return [Bookmark(p.id, tuple(forms[i][t] for t in chosen[i])) for i, p in enumerate(pages)]

    return strategy


# --- incremental forms -----------------------------------------------------------------


class Rebatch:
    """Any batch strategy, fed pages as they close: it runs over the new pages and the
    pages before them it must compare against, from `since(page id)` (the first page id
    that the page with this id must be seen with) on; by default every page before, as
    when the strategy ran over every page each time. The strategy is made (`make()`) when
    a page first needs it, so pages that all have their bookmarks need nothing."""

    def __init__(self, make: Callable[[], KeywordStrategy], since: Callable[[int], int] = lambda page_id: 1):
        self.make, self.since = make, since
        self.strategy: KeywordStrategy | None = None
        self.seen: dict[int, Page] = {}

    def __call__(self, pages: Sequence[Page], made: Mapping[int, Bookmark]) -> list[Bookmark]:
        self.seen.update((p.id, p) for p in pages)
        todo = [p for p in pages if p.id not in made]
        fresh = {}
        if todo:
            self.strategy = self.strategy or self.make()
            window = [self.seen[i] for i in range(self.since(todo[0].id), todo[-1].id + 1) if i in self.seen]
            fresh = {b.page_id: b for b in self.strategy(window)}
        return [made[p.id] if p.id in made else fresh[p.id] for p in pages]


def rebatched(factory: Callable[..., KeywordStrategy], since: Callable[[int], int]) -> Callable[..., Incremental]:
    """A batch strategy's factory as the factory of its incremental form, by `Rebatch`."""
    return lambda **options: Rebatch(lambda: factory(**options), since)


def _alone(page_id: int) -> int:
    return page_id


class IncrementalTfidf:
    """`tfidf`, each page scored against the pages before it and itself."""

    def __init__(self, n: int = 4):
        self.n = n
        self.stats = TermStats()

    def __call__(self, pages: Sequence[Page], made: Mapping[int, Bookmark]) -> list[Bookmark]:
        out = []
        for p in pages:
            tf = _terms(p)
            self.stats.add(tf)
            out.append(made[p.id] if p.id in made else _tfidf_bookmark(p, tf, self.stats, self.n))
        return out


class IncrementalDistinctive:
    """`distinctive`, page by page: a new page's terms are scored against the pages so far
    and it takes its best ones that no page before it took; left short, it falls back to
    its best taken ones. A page from `made` takes what it would have taken, so a session
    reopened from its store goes on handing out what it would have."""

    def __init__(self, n: int = 4):
        self.n = n
        self.stats = TermStats()
        self.taken: set[str] = set()

    def __call__(self, pages: Sequence[Page], made: Mapping[int, Bookmark]) -> list[Bookmark]:
        out = []
        for p in pages:
            tf = _terms(p)
            self.stats.add(tf)
            ranked = sorted(tf, key=lambda t: (-_distinctive_score(tf[t], self.stats.idf(t)), t))
            chosen = [t for t in ranked if t not in self.taken][: self.n]
            chosen += [t for t in ranked if t not in chosen][: self.n - len(chosen)]
            self.taken.update(chosen)
            if p.id in made:
                out.append(made[p.id])
            else:
                forms = _surface_forms(p, chosen)
                out.append(Bookmark(p.id, tuple(forms[t] for t in chosen)))
        return out


STRATEGIES = {
    "random": random_keywords,
    "heuristic": heuristic_keywords,
    "tfidf": tfidf_keywords,
    "distinctive": distinctive_keywords,
}
INCREMENTAL: dict[str, Callable[..., Incremental]] = {
    "random": rebatched(random_keywords, _alone),
    "heuristic": rebatched(heuristic_keywords, _alone),
    "tfidf": IncrementalTfidf,
    "distinctive": IncrementalDistinctive,
}
