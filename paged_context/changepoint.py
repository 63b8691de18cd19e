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
"""

from __future__ import annotations

import numpy as np


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

    def _counts(self, slots: np.ndarray) -> np.ndarray:
        """counts[i, r]: references to slots[i] among the newest r."""
        hits = self.recent[None, :] == slots[:, None]
        return np.concatenate([np.zeros((len(slots), 1)), np.cumsum(hits, axis=1)], axis=1)

    def _rates(self, counts: np.ndarray) -> np.ndarray:
        a = self.concentration
        support = max(self.keys, 1)
        return (counts + a) / (np.arange(counts.shape[-1]) + a * support)

    def predictive(self, slots: np.ndarray) -> np.ndarray:
        """P(next reference is slots[i]) for each i."""
        return self._rates(self._counts(np.asarray(slots))) @ self.weights

    def observe(self, slot: int) -> None:
        self.keys = max(self.keys, slot + 1)
        joint = self.weights * self._rates(self._counts(np.array([slot])))[0]
        weights = np.concatenate([[self.hazard * joint.sum()], (1 - self.hazard) * joint])
        if len(weights) > self.horizon:
            weights[self.horizon - 1] += weights[self.horizon :].sum()
            weights = weights[: self.horizon]
        self.weights = weights / weights.sum()
        self.recent = np.concatenate([[slot], self.recent])[: len(self.weights) - 1]

    def expected_run(self) -> float:
        return float(np.arange(len(self.weights)) @ self.weights)
