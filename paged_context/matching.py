"""The pages a question names: stemmed BM25 over each page's text.

The learned controller prefetches what its training taught it to expect (in chat, the
opening pages, where LoCoMo's personas live); a user who asks about "the retry limit in
config/ingest.yaml" names a page outright. Matching the question's stemmed words
against the pages finds it, whatever the controller's habits; `PagedSession` puts these
pages beside the controller's for a user's question.
"""

from __future__ import annotations

from typing import Collection, Hashable, Sequence

from .bm25 import BM25
from .pages import Turn
from .text import content_terms, restates, stem

# Pages a question is scored against in full, at least: a few times what it brings back.
SHORTLIST = 16
# A page cut to fit the window shows this many turns: the one that matches the question
# best and two either side. In `bench evidence` (883 LoCoMo dev questions, 1,000 prompt
# tokens) the session's context held all the evidence for 51.8% of the questions with
# pages cut to 5 turns, 29.9% when pages that did not fit were dropped whole; in a sweep
# on 150 of them, 3-turn excerpts held as much at 1,000 tokens and 7 points less at 2,000.
EXCERPT_TURNS = 5


def terms(text: str) -> list[str]:
    return [stem(t) for t in content_terms(text)]


class PageMatcher:
    def __init__(self):
        self.index = BM25()

    def add(self, page_id: Hashable, text: str) -> None:
        self.index.add(page_id, terms(text))

    def best(self, question: str, among: Collection[Hashable], n: int) -> list[Hashable]:
        """Up to `n` of the pages `among` that share a word with the question, best first,
        from the index's shortlist (`BM25.shortlist`: exact for a short conversation, and
        at any length for the question's rarer words), so the cost does not grow with the
        conversation; but for pages the question restates (`text.restates`)."""
        if n <= 0 or not among:
            return []
        asked = terms(question)
        words = set(asked)
        ranked = self.index.shortlist(asked, max(n, SHORTLIST), among)
        return [page for page, score in ranked if score > 0 and not restates(words, set(self.index.docs[page]))][:n]

    def excerpt(self, question: str, turns: Sequence[Turn], width: int = EXCERPT_TURNS) -> tuple[Turn, ...]:
        """`width` consecutive turns of a page: around the one whose words weigh most for
        the question (the index's idf; the first on a tie, so a page sharing no word with
        the question shows its opening turns)."""
        if len(turns) <= width:
            return tuple(turns)
        idf = self.index.idf(terms(question))
        weight = [sum(idf.get(t, 0.0) for t in sorted(set(terms(turn.said)))) for turn in turns]  # in one order: a float sum depends on it
        best = max(range(len(turns)), key=lambda i: (weight[i], -i))
        start = min(max(best - width // 2, 0), len(turns) - width)
        return tuple(turns[start : start + width])
