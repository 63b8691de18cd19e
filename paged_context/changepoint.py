"""How likely each key is to be the next reference, when the mix of references shifts.

Bayesian online change-point detection (Adams & MacKay, 2007) over a categorical stream:
the references form segments, each drawn from its own distribution over keys with a
symmetric Dirichlet prior, and a new segment starts at any step with a fixed hazard. The
posterior over the current segment's length ("run length") weights the per-segment
frequency estimates, so the estimate forgets a working set soon after it moves, and only
then. Under a stationary mix, evicting the key least likely to come next is the optimal
online policy (the A0 policy of the independent reference model); this gives the
controller that likelihood when the mix is not stationary.

Run lengths beyond `horizon` are folded into the longest one kept, which bounds the work
per reference to O(horizon) and per scored key to O(horizon).

The counts behind a key's estimates (its references among the newest r, for every r) are
kept per key from its last reference, and shifted by the references since, instead of
being counted again over the whole window at every step: the same integers, so the same
probabilities to the last bit, for a fraction of the time (the Page Controller computes
them at every reference and for every candidate of every decision).
"""

from __future__ import annotations

import copy

import numpy as np

_TIMELINE = 256  # references a posterior and its copies keep states for, behind the latest (look-aheads run tens)


class RunLengthPosterior:
    """Next-reference probabilities for integer keys (slots), from the references so far.
    Slots are numbered 0, 1, 2, ... in order of first reference: the highest one seen gives
    the number of distinct keys, the Dirichlet's support."""

    def __init__(self, hazard: float = 1 / 256, concentration: float = 0.1, horizon: int = 1024):
        if not 0 < hazard < 1:
            raise ValueError(f"hazard must lie in (0, 1), got {hazard}")
        self.hazard, self.concentration, self.horizon = hazard, concentration, horizon
        self.weights = np.ones(1)  # weights[r]: P(the current segment holds the last r references)
        self.recent = np.zeros(0, dtype=np.int64)  # the last len(weights) - 1 references, newest first
        self.keys = 0  # distinct keys seen
        self.seen = 0  # references so far
        # per slot referenced in the window: (self.seen after its last reference, its counts
        # among the newest r references then, r = 0..len(recent) then)
        self._rows: dict[int, tuple[int, np.ndarray]] = {}
        self._denominator: tuple[tuple[int, int], np.ndarray] = ((0, 0), np.zeros(0))
        # shared by a posterior and its copies, once it has any: the state each reference led
        # to (by self.seen after it), so copies that see the same references (a look-ahead,
        # then the real run) compute each state once
        self._timeline: dict[int, tuple] | None = None

    def __deepcopy__(self, memo) -> RunLengthPosterior:
        # the arrays are replaced at every reference, never written to: copies share them
        if self._timeline is None:
            self._timeline = {}
        clone = copy.copy(self)
        clone._rows = dict(self._rows)
        memo[id(self)] = clone
        return clone

    def _counts(self, slots: np.ndarray) -> np.ndarray:
        """counts[i, r]: references to slots[i] among the newest r, as float."""
        n = len(self.recent) + 1
        counts = np.zeros((len(slots), n))
        for i, slot in enumerate(slots.tolist()):
            last = self._rows.get(slot)
            if last is not None:
                # the references since its last one were to other slots: its counts then,
                # shifted by their number
                lag = self.seen - last[0]
                if lag < n:
                    counts[i, lag:] = last[1][: n - lag]
        return counts

    def _rates(self, counts: np.ndarray) -> np.ndarray:
        a = self.concentration
        support = max(self.keys, 1)
        n = counts.shape[-1]
        if self._denominator[0] != (n, support):
            self._denominator = ((n, support), np.arange(n) + a * support)
        return (counts + a) / self._denominator[1]

    def predictive(self, slots: np.ndarray) -> np.ndarray:
        """P(next reference is slots[i]) for each i."""
        return self._rates(self._counts(np.asarray(slots))) @ self.weights

    def observe(self, slot: int) -> None:
        state = self._timeline.get(self.seen + 1) if self._timeline is not None else None
        if state is not None and state[0] is self.weights and state[1] == slot:
            # a copy already went from this very state through the same reference
            self.weights, self.recent, self.keys, row = state[2:]
        else:
            before = self.weights
            self.keys = max(self.keys, slot + 1)
            counts = self._counts(np.array([slot]))
            joint = self.weights * self._rates(counts)[0]
            weights = np.concatenate([[self.hazard * joint.sum()], (1 - self.hazard) * joint])
            if len(weights) > self.horizon:
                weights[self.horizon - 1] += weights[self.horizon :].sum()
                weights = weights[: self.horizon]
            self.weights = weights / weights.sum()
            self.recent = np.concatenate([[slot], self.recent])[: len(self.weights) - 1]
            # this slot's counts after the reference: this one, then its counts before it
            row = np.empty(len(self.weights), dtype=np.int32)
            row[0] = 0
            np.add(counts[0, : len(row) - 1], 1, out=row[1:], casting="unsafe")
            if self._timeline is not None:
                self._timeline[self.seen + 1] = (before, slot, self.weights, self.recent, self.keys, row)
                self._timeline.pop(self.seen + 1 - _TIMELINE, None)
        self.seen += 1
        self._rows[slot] = (self.seen, row)
        if self.seen % self.horizon == 0:  # forget the slots no longer in the window
            self._rows = {s: last for s, last in self._rows.items() if self.seen - last[0] < len(self.weights)}

    def expected_run(self) -> float:
        return float(np.arange(len(self.weights)) @ self.weights)
