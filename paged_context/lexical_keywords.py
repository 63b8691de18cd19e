"""Keyword strategies that read only the pages' words: `random` (the paper's floor),
`heuristic` (the cooperative-paging paper's rule), `tfidf`, and `distinctive` (the default).

A strategy sees all pages of a conversation at once (some keywords only make sense
against the others) and returns one bookmark per page; `keywords` looks them up by name.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Callable, Sequence

from .bookmarks import Bookmark
from .pages import Page
from .text import STOP_WORDS, STOP_WORDS_60, normalize, words

KeywordStrategy = Callable[[Sequence[Page]], list[Bookmark]]


# --- shared term statistics ------------------------------------------------------------


def _terms(page: Page) -> Counter[str]:
    return Counter(t for t in (normalize(w) for w in words(page.text)) if len(t) > 2 and t not in STOP_WORDS)


def _surface_forms(page: Page) -> dict[str, str]:
    """The most frequent spelling of each normalised term on the page, so bookmarks
    read 'Caroline' rather than 'caroline'."""
    forms: dict[str, Counter[str]] = {}
    for w in words(page.text):
        forms.setdefault(normalize(w), Counter())[w] += 1
    return {t: c.most_common(1)[0][0] for t, c in forms.items()}


def _idf(n_pages: int, df: int) -> float:
    return math.log((1 + n_pages) / (1 + df)) + 1


def _tfidf(pages: Sequence[Page]) -> list[dict[str, float]]:
    tfs = [_terms(p) for p in pages]
    df = Counter(t for tf in tfs for t in tf)
    return [{t: c * _idf(len(pages), df[t]) for t, c in tf.items()} for tf in tfs]


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
        out = []
        for p, scores in zip(pages, _tfidf(pages)):
            forms = _surface_forms(p)
            top = sorted(scores, key=lambda t: (-scores[t], t))[:n]
            out.append(Bookmark(p.id, tuple(forms[t] for t in top)))
        return out

    return strategy


def distinctive_keywords(n: int = 4) -> KeywordStrategy:
    """Keywords that tell a page apart from every other page.

    Terms are scored sqrt(tf) * idf^2: rarity across pages matters more than repetition
    within one, because a word that appears on many pages cannot point to any of them.
    They are handed out greedily, best score first, each term to one page only (the page
    where it scores best). A page left short, all its terms taken, falls back to its best
    shared terms: the only case where two bookmarks share a keyword.
    """

    def strategy(pages: Sequence[Page]) -> list[Bookmark]:
        tfs = [_terms(p) for p in pages]
        df = Counter(t for tf in tfs for t in tf)
        scored = sorted(
            (-math.sqrt(c) * _idf(len(pages), df[t]) ** 2, i, t) for i, tf in enumerate(tfs) for t, c in tf.items()
        )
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


STRATEGIES = {
    "random": random_keywords,
    "heuristic": heuristic_keywords,
    "tfidf": tfidf_keywords,
    "distinctive": distinctive_keywords,
}
