"""The learned Page Controller at inference: per-page features, the scoring network (in
NumPy, so the core needs no torch), and the policy that plugs it into `ResidentSet`.

The controller scores a page's future utility: high means "needed soon". It evicts the
resident page with the lowest score and prefetches the non-resident pages with the highest
scores for a new request. It was trained (see `paged_context.models.train`) to imitate
Belady's choice, which needs the future, from features that only need the past:

- history: recency, time since admission, total references, references decayed over four
  half-lives, and the same relative to the other candidates;
- the probability that the page is the next reference, from a change-point posterior over
  the reference stream (`paged_context.changepoint`), alone and relative to the other
  candidates, and the expected length of the current segment;
- load: how often recent requests were misses, and how often they went to pages unseen
  for a long time (a shift of the working set);
- the request, when pages have text: BM25 of the request against the page, names and
  numbers of the request found on the page, distance to the pages the last request used,
  and page size.

As trained, it ranks every page against the request and scores every candidate, work
that grows with the conversation. A session bounds it (`shortlist`): the request's BM25
ranking is the index's shortlist (`BM25.shortlist`; a page off it ranks last), and
prefetch scores that many candidates at most, the request's best matches among them
and the pages evicted most recently (`LearnedPolicy.prefetch`).
"""

from __future__ import annotations

import bisect
import copy
import functools
import math
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Collection, Hashable, Sequence

import numpy as np

from .bm25 import BM25
from .changepoint import RunLengthPosterior
from .pages import Page
from .policies import Policy
from .text import content_terms, normalize, restates, words

Key = Hashable

HALF_LIVES = (8.0, 32.0, 128.0, 512.0)
FEATURES = (
    "log_recency",
    "log_previous_gap",
    "log_novel_since",
    "log_misses_since",
    "log_age",
    "log_references",
    "log_run_references",
    "log_run_age",
    "relative_run_rate",
    *(f"log_decayed_{int(h)}" for h in HALF_LIVES),
    *(f"relative_decayed_{int(h)}" for h in HALF_LIVES),
    "recency_rank",
    "log_next_probability",
    "relative_next_probability",
    "log_segment_length",
    "novelty_rate_16",
    "novelty_rate_64",
    "miss_rate_32",
    "log_capacity",
    "has_text",
    "bm25",
    "bm25_rank",
    "entity_overlap",
    "log_distance_to_last_request",
    "log_tokens",
    "resident",
)
_COLUMN = {name: i for i, name in enumerate(FEATURES)}
# The most pages a session's controller scores per decision (`LearnedPolicy.shortlist`).
# It was trained on conversations of up to about 140 pages (LoCoMo), scoring all of them,
# and brings back 3; sixty synthetic planted-fact conversations played in one session
# (1,950 pages of fixed_5): with 64 it prefetched the pages it prefetched with all of them
# for 281 of the 344 questions asked past 64 evicted pages, and the evidence for 59 of them
# against 54.
SHORTLIST = 64
# rows of LearnedPolicy.features computed together
_LOG1P = ("log_recency", "log_previous_gap", "log_novel_since", "log_misses_since", "log_age", "log_references", "log_run_references", "log_run_age")
_LOG_DECAYED = slice(_COLUMN["log_decayed_8"], _COLUMN["log_decayed_512"] + 1)
_RELATIVE_DECAYED = slice(_COLUMN["relative_decayed_8"], _COLUMN["relative_decayed_512"] + 1)
_RATES = slice(_COLUMN["novelty_rate_16"], _COLUMN["miss_rate_32"] + 1)
assert FEATURES[: len(_LOG1P)] == _LOG1P
# A reference counts as novel (a sign the working set moved) when the page was never
# referenced or not for this many steps.
NOVEL_AFTER = 256
# Prefetch takes pages scoring within this of the best candidate (scores are logits): on
# LoCoMo's dev probes (fixed_20, k = 5) it keeps any/all availability at 98.0/88.7% (98.1/88.7
# with no cut) while fetching 2.70 pages per question instead of 2.99; a cut of 3 gives
# 97.9/88.2 at 2.55, of 2 gives 97.8/87.7 at 2.37.
RELATIVE_CUT = 4.0


class Controller:
    """The scoring network: standardise, two GELU layers plus a linear skip, one score per row."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
        metadata = metadata or {}
        names = tuple(metadata.get("features", ",".join(FEATURES)).split(","))
        if names != FEATURES:
            raise ValueError(f"controller checkpoint was trained on other features: {names}")
        self.t = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        self.threshold = float(metadata.get("prefetch_threshold", "-inf"))
        self.metadata = metadata

    @classmethod
    def load(cls, path: str | Path | None = None) -> Controller:
        """Load a checkpoint (default: the one shipped in paged_context.models); loads of an
        unchanged file are served from memory."""
        path = (Path(path) if path else default_checkpoint()).resolve()
        if not path.exists():
            raise FileNotFoundError(f"no controller checkpoint at {path} (train one with `paged-context train-controller`)")
        return _load(path, path.stat().st_mtime_ns)

    def score(self, x: np.ndarray) -> np.ndarray:
        t = self.t
        z = (x - t["mean"]) / t["std"]
        h = _gelu(z @ t["l1.weight"].T + t["l1.bias"])
        h = _gelu(h @ t["l2.weight"].T + t["l2.bias"])
        return (h @ t["out.weight"].T + t["out.bias"] + z @ t["skip.weight"].T)[:, 0]


    @classmethod
    def read(cls, path: str | Path) -> Controller:
        """Read a checkpoint file, uncached."""
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return cls({k: f.get_tensor(k) for k in f.keys()}, f.metadata())


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> Controller:
    return Controller.read(path)


def _gelu(x: np.ndarray) -> np.ndarray:
    # the tanh form, as the torch twin (nn.GELU(approximate="tanh")) uses; x * x * x, as
    # x**3 goes through pow and took most of the scoring time
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


def default_checkpoint() -> Path:
    return Path(str(resources.files("paged_context.models") / "controller.safetensors"))


_RATE_DECAY = np.array([2 ** (-1 / 16), 2 ** (-1 / 64), 2 ** (-1 / 32)])
# what a reference adds to the rates (novelty_16, novelty_64, miss_32), by (novel, admitted)
_RATE_STEP = {(n, a): np.array([n, n, a]) * (1 - _RATE_DECAY) for n in (False, True) for a in (False, True)}


class History:
    """Reference statistics per key, in arrays so a decision's features are vector ops."""

    def __init__(self, size: int = 64):
        self.slot: dict[Key, int] = {}
        self.last = np.zeros(size)
        self.gap = np.zeros(size)  # between the last two references
        self.novel_at = np.zeros(size)  # global novel count at the last reference
        self.misses_at = np.zeros(size)
        self.novel = 0
        self.misses = 0
        self.admitted = np.zeros(size)
        self.total = np.zeros(size)
        # a run: the references since the page last came back after a long absence (for a
        # block of a shifting working set, its references since the shift)
        self.run_start = np.zeros(size)
        self.run_count = np.zeros(size)
        self.decayed = np.zeros((size, len(HALF_LIVES)))
        self.decayed_at = np.zeros(size)
        self.rates = np.zeros(3)  # novelty_16, novelty_64, miss_32
        self._rate_decay = _RATE_DECAY
        self._half = np.array(HALF_LIVES)
        self.segments = RunLengthPosterior()

    def _slot(self, key: Key) -> int:
        if key not in self.slot:
            if len(self.slot) == len(self.last):
                for name in ("last", "gap", "novel_at", "misses_at", "admitted", "total", "run_start", "run_count", "decayed", "decayed_at"):
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.zeros_like(a)]))
            self.slot[key] = len(self.slot)
        return self.slot[key]

    def decayed_now(self, slots: np.ndarray, step: int) -> np.ndarray:
        return self.decayed[slots] * np.exp2(-(step - self.decayed_at[slots])[:, None] / self._half)

    def reference(self, key: Key, step: int, admitted: bool) -> None:
        known = key in self.slot
        s = self._slot(key)
        before = self.decayed[s] * np.exp2(-(step - self.decayed_at[s]) / self._half)  # decayed_now, for one slot
        novel = bool(admitted and (not known or step - self.last[s] > NOVEL_AFTER))
        self.novel += novel
        self.misses += admitted
        self.rates = self.rates * self._rate_decay + _RATE_STEP[novel, bool(admitted)]
        self.decayed[s] = before + 1
        self.decayed_at[s] = step
        self.gap[s] = step - self.last[s] if known else step + 1
        self.novel_at[s] = self.novel
        self.misses_at[s] = self.misses
        self.last[s] = step
        self.total[s] += 1
        if novel:
            self.run_start[s], self.run_count[s] = step, 0
        self.run_count[s] += 1
        if admitted:
            self.admitted[s] = step
        self.segments.observe(s)


# A simulation runs a conversation at several boundaries and cache sizes, each with a
# fresh policy: the same pages and questions come again, their terms are read once.
@functools.lru_cache(maxsize=4096)
def _page_terms(text: str) -> tuple[str, ...]:
    return tuple(content_terms(text))


@functools.lru_cache(maxsize=4096)
def _request_terms(text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """A request's content terms, and its names and numbers."""
    entities = frozenset(normalize(w) for w in words(text) if w[:1].isupper() or w[:1].isdigit() or w[:1] == "$")
    return tuple(content_terms(text)), entities


class LearnedPolicy(Policy):
    """The controller behind the `Policy` interface; `attach` gives it page texts.

    `shortlist`: the most pages a decision ranks against the request and the most
    candidates prefetch scores (None: all, as in training and the simulators)."""

    name = "learned"
    # what start() sets up and the events change: what a fork copies (page texts, which
    # never change once attached, it shares)
    _STATE = ("capacity", "history", "resident", "gone", "gone_steps", "index", "query", "entities", "last_request", "_fresh_request", "_matches")

    def __init__(self, controller: Controller | None = None, shortlist: int | None = None):
        self.controller = controller or Controller.load()
        self.shortlist = shortlist

    def start(self, capacity, future=None):
        self.capacity = capacity
        self.history = History()
        self.resident: dict[Key, None] = {}
        self.gone: OrderedDict[Key, None] = OrderedDict()  # evicted keys, the most recent last
        self.gone_steps: list[float] = []  # their last references, sorted
        self.pages: dict[Key, Page] = {}
        self.index = BM25()  # the pages' terms, by page
        self.query: list[str] = []
        self.entities: set[str] = set()
        self.last_request: list[Key] = []
        self._fresh_request = False
        self._matches: tuple[int, list[tuple[Key, float]]] | None = None

    def fork(self) -> LearnedPolicy:
        """A copy of the policy's state that can be stepped without touching this one."""
        clone = LearnedPolicy(self.controller, self.shortlist)
        clone.__dict__.update(copy.deepcopy({k: v for k, v in vars(self).items() if k in self._STATE}))
        clone.pages = self.pages
        return clone

    # --- what the simulator or session tells it ------------------------------------------

    def attach(self, pages: Sequence[Page]) -> None:
        """More page texts, read only once a page has been written (admitted the first time)."""
        self.pages.update((p.id, p) for p in pages)

    def on_request(self, text: str) -> None:
        terms, entities = _request_terms(text)
        self.query, self.entities = list(terms), set(entities)
        self._matches = None
        self._fresh_request = True  # the previous request's pages stay "last" until this one uses some

    # --- Policy -----------------------------------------------------------------------------

    def _used_by_request(self, key) -> None:
        if self._fresh_request:
            self.last_request, self._fresh_request = [], False
        self.last_request.append(key)

    def on_hit(self, key, step):
        self.history.reference(key, step, admitted=False)
        if key in self.index.docs:
            self._used_by_request(key)

    def on_admit(self, key, step):
        if key in self.index.docs:
            self._used_by_request(key)
        elif key in self.pages:  # written just now: index it
            self.index.add(key, _page_terms(self.pages[key].text))
        if key in self.gone:
            del self.gone[key]
            del self.gone_steps[bisect.bisect_left(self.gone_steps, self._last(key))]
        self.history.reference(key, step, admitted=True)
        self.resident[key] = None

    def victim(self, incoming, step):
        keys = list(self.resident)
        return keys[int(np.argmin(self.controller.score(self.features(keys, step))))]

    def on_evict(self, key):
        del self.resident[key]
        self.gone[key] = None
        bisect.insort(self.gone_steps, self._last(key))

    def _last(self, key) -> float:
        return self.history.last[self.history.slot[key]]

    def prefetch(self, candidates: Collection[Key], budget: int, step: int, threshold: float | None = None) -> list[Key]:
        """Up to `budget` of the candidates, best first: those scoring above the threshold
        and within RELATIVE_CUT of the best candidate, but for pages the request restates.
        Of more candidates than the shortlist holds, only those on it are scored (`_shortlist`)."""
        if budget <= 0 or not candidates:
            return []
        bounded = self.shortlist is not None and len(candidates) > self.shortlist
        pool = self._shortlist(candidates, self.shortlist) if bounded else list(candidates)
        x = self.features(pool, step)
        if bounded:
            # a page's recency rank among all the candidates, as if all were scored: within
            # the shortlist, half of it recent pages, a recent page ranks far lower than among
            # thousands, and the controller brought back a fifth less evidence
            x[:, _COLUMN["recency_rank"]] = self._recency_ranks(pool, len(candidates))
        return self._best(pool, x, budget, threshold)

    def _best(self, pool: list[Key], x: np.ndarray, budget: int, threshold: float | None) -> list[Key]:
        """prefetch's choice among `pool`, from their features `x`."""
        cut = self.controller.threshold if threshold is None else threshold
        scores = self.controller.score(x)
        order = np.argsort(-scores, kind="stable")[:budget]
        cut = max(cut, scores[order[0]] - RELATIVE_CUT)
        query = set(self.query)
        return [pool[i] for i in order if scores[i] > cut and not restates(query, set(self.index.docs.get(pool[i], ())))]

    def _shortlist(self, candidates: Collection[Key], size: int) -> list[Key]:
        """`size` of the candidates, in page order: the request's best BM25 matches among
        them (up to half), then those evicted most recently. The rest, pages the request
        barely names that have been out of view longer, are what the controller scores
        low (see SHORTLIST), and their number alone would make a decision's cost grow with
        the conversation."""
        matched = [k for k, score in self._best_matches() if score > 0 and k in candidates][: size // 2]
        chosen = dict.fromkeys(matched)
        for key in reversed(self.gone):
            if len(chosen) >= size:
                break
            if key in candidates:
                chosen[key] = None
        return sorted(chosen)

    def _recency_ranks(self, keys: Sequence[Key], among: int) -> np.ndarray:
        """Each evicted key's recency rank among the evicted keys (`among` of them), as
        `features` ranks within its keys: how many were referenced since, scaled to 0-1."""
        later = [len(self.gone_steps) - bisect.bisect_right(self.gone_steps, self._last(k)) for k in keys]
        return np.array(later) / max(among - 1, 1)

    # --- features ---------------------------------------------------------------------------

    def _best_matches(self) -> list[tuple[Key, float]]:
        """The pages best matching the request with their BM25 scores, best first: all of
        them, or the index's shortlist; kept until the request or the pages change."""
        if self._matches is None or self._matches[0] != len(self.index):
            size = self.shortlist // 2 if self.shortlist else len(self.index)  # as many as prefetch takes
            self._matches = (len(self.index), self.index.shortlist(self.query, size) if self.query else [])
        return self._matches[1]

    def features(self, keys: Sequence[Key], step: int) -> np.ndarray:
        """One row of FEATURES per key, relative features taken within `keys`."""
        h = self.history
        slots = np.array([h.slot[k] for k in keys])
        # one row per feature, in float64, cast to float32 once at the end; the log1p
        # features come first in FEATURES and the decayed ones together, so each takes one
        # call (the same values as one call per feature)
        cols = np.zeros((len(FEATURES), len(keys)))
        raw = cols[: len(_LOG1P)]
        np.subtract(step, h.last[slots], out=raw[0])
        recency = raw[0].copy()
        raw[1] = h.gap[slots]
        np.subtract(h.novel, h.novel_at[slots], out=raw[2])
        np.subtract(h.misses, h.misses_at[slots], out=raw[3])
        np.subtract(step, h.admitted[slots], out=raw[4])
        raw[5] = h.total[slots]
        run_count = h.run_count[slots]
        raw[6] = run_count
        np.subtract(step, h.run_start[slots], out=raw[7])
        run_rate = run_count / (raw[7] + 1)
        np.log1p(raw, out=raw)
        cols[_COLUMN["relative_run_rate"]] = run_rate / (run_rate.max() + 1e-9)
        decayed = h.decayed_now(slots, step).T
        np.log1p(decayed, out=cols[_LOG_DECAYED])
        np.divide(decayed, decayed.max(axis=1, keepdims=True) + 1e-9, out=cols[_RELATIVE_DECAYED])
        cols[_COLUMN["recency_rank"]] = np.argsort(np.argsort(recency, kind="stable"), kind="stable") / max(len(keys) - 1, 1)
        next_probability = h.segments.predictive(slots)
        np.log(next_probability, out=cols[_COLUMN["log_next_probability"]])
        cols[_COLUMN["relative_next_probability"]] = next_probability / next_probability.max()
        cols[_COLUMN["log_segment_length"]] = math.log1p(h.segments.expected_run())
        cols[_RATES] = h.rates[:, None]
        cols[_COLUMN["log_capacity"]] = math.log(self.capacity)
        if self.index.docs:
            for name, value in self._text_features(keys).items():
                cols[_COLUMN[name]] = value
        cols[_COLUMN["resident"]] = [k in self.resident for k in keys]
        return cols.T.astype(np.float32, order="C")

    def _text_features(self, keys: Sequence[Key]) -> dict[str, np.ndarray]:
        matches = self._best_matches()
        scores = dict(matches)
        scores.update(self.index.scores(self.query, [k for k in keys if k not in scores]) if self.query else {})
        best = max(scores.values(), default=0.0) or 1.0
        rank = {k: r for r, (k, _) in enumerate(matches)}  # a page off the shortlist ranks last
        n = max(len(self.index), 1)
        last = self.last_request
        return {
            "has_text": np.ones(len(keys)),
            "bm25": np.array([scores.get(k, 0.0) / best for k in keys]),
            "bm25_rank": np.array([rank.get(k, n) / n for k in keys]),
            "entity_overlap": np.log1p([len(self.entities & self.index.docs[k].keys()) if k in self.index.docs else 0 for k in keys]),
            "log_distance_to_last_request": np.log1p([min(abs(k - j) for j in last) if last else 0 for k in keys]),
            "log_tokens": np.log1p([self.pages[k].tokens if k in self.pages else 0 for k in keys]),
        }


class WithPrefetch(Policy):
    """Any eviction policy, with the learned controller watching the same events so it
    can prefetch: evictions stay the policy's own, prefetch is the controller's."""

    def __init__(self, policy: Policy, controller: Controller | None = None, shortlist: int | None = None):
        self.policy, self.scout = policy, LearnedPolicy(controller, shortlist)
        self.name = f"{policy.name}+prefetch"
        self.offline = policy.offline

    def start(self, capacity, future=None):
        self.policy.start(capacity, future)
        self.scout.start(capacity)

    def on_hit(self, key, step):
        self.policy.on_hit(key, step)
        self.scout.on_hit(key, step)

    def on_admit(self, key, step):
        self.policy.on_admit(key, step)
        self.scout.on_admit(key, step)

    def victim(self, incoming, step):
        return self.policy.victim(incoming, step)

    def on_evict(self, key):
        self.policy.on_evict(key)
        self.scout.on_evict(key)

    def attach(self, pages):
        self.policy.attach(pages)
        self.scout.attach(pages)

    def on_request(self, text):
        self.policy.on_request(text)
        self.scout.on_request(text)

    def prefetch(self, candidates, budget, step, threshold=None):
        return self.scout.prefetch(candidates, budget, step, threshold)
