"""Okapi BM25 over a growing set of documents (pages), in pure Python.

Pages arrive one by one, so the index is incremental: adding a document updates the
document frequencies and length statistics that every later query is scored against.

Scoring every document costs time in proportion to the collection. `shortlist` does not:
each term keeps a champion list (Manning, Raghavan and Schütze, Introduction to
Information Retrieval, 7.1.3), the `champions` documents where it weighs most, and only
documents on the lists of the query's rarest terms are considered. The list of a term on
at most `champions` documents is complete; the rare terms are the ones that tell pages
apart and weigh most in a score.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from itertools import islice
from typing import Collection, Hashable, Iterable

# A term's champion list: long enough that a term on up to 32 pages (a name, a file, a
# number) finds every one of them, short enough that reading a dozen lists stays cheap.
CHAMPIONS = 32
# A collection this small is scored in full: that costs no more than the lists would.
EXACT_UP_TO = 64
# The most list entries a shortlist reads: the rarest query terms' lists, a dozen or so
# full ones, and no more, so a long request costs no more than a short one.
POSTINGS = 16 * CHAMPIONS


class BM25:
    def __init__(self, k1: float = 1.2, b: float = 0.75, champions: int = CHAMPIONS):
        self.k1, self.b, self.champions = k1, b, champions
        self.docs: dict[Hashable, Counter[str]] = {}
        self.lengths: dict[Hashable, int] = {}
        self.order: dict[Hashable, int] = {}  # insertion order, which breaks ties
        self.total = 0  # of the lengths
        self.df: Counter[str] = Counter()
        # per term, a min-heap of (weight, order, document) of its champion documents: the
        # term's BM25 weight in the document as it came (its occurrences, saturated and
        # normalised by its length against the average then), the newest on a tie
        self.lists: dict[str, list[tuple[float, int, Hashable]]] = {}
        self._last: tuple[tuple, dict[str, float]] = ((), {})

    def add(self, doc_id: Hashable, terms: Iterable[str]) -> None:
        if doc_id in self.docs:
            raise ValueError(f"document {doc_id!r} is already indexed")
        tf = Counter(terms)
        self.order[doc_id] = order = len(self.docs)
        self.docs[doc_id] = tf
        self.lengths[doc_id] = sum(tf.values())
        self.total += self.lengths[doc_id]
        self.df.update(tf.keys())
        norm = self._norm(self.lengths[doc_id], self._average())
        for term, count in tf.items():
            champion = (count * (self.k1 + 1) / (count + norm), order, doc_id)
            champions = self.lists.setdefault(term, [])
            if len(champions) < self.champions:
                heapq.heappush(champions, champion)
            elif champion[:2] > champions[0][:2]:
                heapq.heapreplace(champions, champion)

    def __len__(self) -> int:
        return len(self.docs)

    def _weights(self, query: Iterable[str]) -> dict[str, float]:
        """The query terms' idf; the last query's are kept until a document comes, as a
        request is scored several times."""
        key = (len(self.docs), tuple(query))
        if self._last[0] != key:
            n = len(self.docs)
            self._last = (key, {t: math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5)) for t in set(key[1]) if self.df[t]})
        return self._last[1]

    def idf(self, query: Iterable[str]) -> dict[str, float]:
        """The inverse document frequency of each query term found in the index."""
        return dict(self._weights(query))

    def _norm(self, length: int, average: float) -> float:
        return self.k1 * (1 - self.b + self.b * length / average)

    def _average(self) -> float:
        return self.total / len(self.docs) or 1.0

    def scores(self, query: Iterable[str], docs: Iterable[Hashable] | None = None) -> dict[Hashable, float]:
        """Every indexed document's score for the query, or those of `docs` that are indexed
        (0 for those sharing no term)."""
        if not self.docs:
            return {}
        idf, average = self._weights(query), self._average()
        out = {}
        for doc_id in self.docs if docs is None else [d for d in docs if d in self.docs]:
            tf, norm = self.docs[doc_id], self._norm(self.lengths[doc_id], average)
            out[doc_id] = sum(idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in idf.keys() & tf.keys())
        return out

    def top(self, query: Iterable[str], n: int, among: Iterable[Hashable] | None = None) -> list[Hashable]:
        """The n best-scoring documents (of `among`, if given) that share a term with the
        query, best first, ties by insertion order."""
        scores = self.scores(query)
        pool = list(scores) if among is None else [d for d in among if d in scores]
        ranked = sorted((d for d in pool if scores[d] > 0), key=lambda d: -scores[d])
        return ranked[:n]

    def shortlist(self, query: Iterable[str], k: int, among: Collection[Hashable] | None = None) -> list[tuple[Hashable, float]]:
        """About the k best documents (of `among`, if given) with their scores, best first,
        ties by insertion order, at a cost that does not grow with the collection. With at
        most k (or EXACT_UP_TO) documents indexed, all of them (of `among`), zero scores
        included: exact. Beyond, the documents on the champion lists of the query's rarest
        terms (POSTINGS entries at most) are ranked by the part of their score those lists
        hold (weighed as they came: the average length moves little), and the k best of
        them scored in full."""
        if len(self.docs) <= max(k, EXACT_UP_TO):
            scores = self.scores(query, self.docs if among is None else [d for d in self.docs if d in among])
        else:
            weights, partial, read = self._weights(query), {}, 0
            for term in sorted(weights, key=lambda t: (self.df[t], t)):
                if read >= POSTINGS:
                    break
                read += len(self.lists[term])
                for weight, _, doc_id in self.lists[term]:
                    partial[doc_id] = partial.get(doc_id, 0.0) + weights[term] * weight
            ranked = sorted(partial, key=partial.__getitem__, reverse=True)
            scores = self.scores(query, list(islice((d for d in ranked if among is None or d in among), k)))
        return sorted(scores.items(), key=lambda item: (-item[1], self.order[item[0]]))[:k]
