"""Okapi BM25 over a growing set of documents (pages), in pure Python.

Pages arrive one by one, so the index is incremental: adding a document updates the
document frequencies and length statistics that every later query is scored against.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Iterable


class BM25:
    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.docs: dict[Hashable, Counter[str]] = {}
        self.lengths: dict[Hashable, int] = {}
        self.df: Counter[str] = Counter()

    def add(self, doc_id: Hashable, terms: Iterable[str]) -> None:
        if doc_id in self.docs:
            raise ValueError(f"document {doc_id!r} is already indexed")
        tf = Counter(terms)
        self.docs[doc_id] = tf
        self.lengths[doc_id] = sum(tf.values())
        self.df.update(tf.keys())

    def __len__(self) -> int:
        return len(self.docs)

    def scores(self, query: Iterable[str]) -> dict[Hashable, float]:
        """Every indexed document's score for the query (0 for those sharing no term)."""
        n = len(self.docs)
        if not n:
            return {}
        avg = sum(self.lengths.values()) / n or 1.0
        idf = {t: math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5)) for t in set(query) if self.df[t]}
        out = {}
        for doc_id, tf in self.docs.items():
            norm = self.k1 * (1 - self.b + self.b * self.lengths[doc_id] / avg)
            out[doc_id] = sum(w * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t, w in idf.items() if t in tf)
        return out

    def top(self, query: Iterable[str], n: int, among: Iterable[Hashable] | None = None) -> list[Hashable]:
        """The n best-scoring documents (of `among`, if given) that share a term with the
        query, best first, ties by insertion order."""
        scores = self.scores(query)
        pool = list(scores) if among is None else [d for d in among if d in scores]
        ranked = sorted((d for d in pool if scores[d] > 0), key=lambda d: -scores[d])
        return ranked[:n]
