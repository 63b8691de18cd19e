"""Block-request traces: the Neural Paging paper's synthetic protocol, perturbation, and
the paper's bounds, plus a reader for traces recorded elsewhere.

The generator follows the paper's description: T requests over M blocks; every `phase`
steps a fresh working set of W blocks is drawn uniformly, and requests follow a Zipf law
over the working set's ranks. Perturbation replaces floor(beta*T) distinct positions with
a different block, which is how the paper models a policy's influence on its own trace.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

from ..policies import Policy


@dataclass(frozen=True)
class TraceSpec:
    blocks: int = 64  # M
    working_set: int = 16
    phase: int = 500  # steps between working-set redraws
    length: int = 5000  # T
    zipf: float = 1.2

    def as_dict(self) -> dict:
        return asdict(self)


def generate(seed: int, spec: TraceSpec = TraceSpec()) -> list[int]:
    rng = random.Random(seed)
    weights = [(rank + 1) ** -spec.zipf for rank in range(spec.working_set)]
    trace: list[int] = []
    while len(trace) < spec.length:
        working_set = rng.sample(range(spec.blocks), spec.working_set)
        trace += rng.choices(working_set, weights=weights, k=min(spec.phase, spec.length - len(trace)))
    return trace


def perturb(trace: Sequence[Hashable], beta: float, seed: int, universe: Sequence[Hashable]) -> list[Hashable]:
    """Replace floor(beta*T) uniformly chosen positions with a different block."""
    if len(set(universe)) < 2:
        raise ValueError("perturbation needs at least two distinct blocks")
    rng = random.Random(seed)
    out = list(trace)
    for i in rng.sample(range(len(out)), math.floor(beta * len(out))):
        while (b := universe[rng.randrange(len(universe))]) == out[i]:
            pass
        out[i] = b
    return out


class PhaseOracleLFU(Policy):
    """A reference, not a contender: LFU whose counts restart exactly when the generator
    redraws the working set. It knows what no online policy can (the phase boundaries),
    so it shows roughly how far knowing *when* the working set moves could take one."""

    name = "phase-oracle-lfu"

    def __init__(self, phase: int):
        self.phase = phase

    def start(self, capacity, future=None):
        self.count: dict = {}
        self.last: dict = {}

    def _reference(self, key, step):
        phase, (count, seen) = step // self.phase, self.count.get(key, (0, -1))
        self.count[key] = ((count if seen == phase else 0) + 1, phase)
        self.last[key] = step

    on_hit = _reference

    def on_admit(self, key, step):
        self._reference(key, step)

    def victim(self, incoming, step):
        phase = step // self.phase
        return min(self.last, key=lambda k: (self.count[k][0] if self.count[k][1] == phase else 0, self.last[k]))

    def on_evict(self, key):
        del self.last[key]


def theorem4_bound(competitive: float, opt_faults: float, capacity: int, beta: float, length: int) -> float:
    """Theorem 4: F_A <= c*F_opt + (c+1)(K_b+1)*beta*T for a c-competitive policy A."""
    return competitive * opt_faults + (competitive + 1) * (capacity + 1) * beta * length


def lemma1a_bound(capacity: int, distance: int) -> int:
    """Lemma 1a: traces at Hamming distance d change a policy's faults by at most (K_b+1)d."""
    return (capacity + 1) * distance


def load_trace(path: str | os.PathLike) -> list[Hashable]:
    """One block id per line, or JSONL whose lines are ids or objects with a 'block' (or
    'id', 'page', 'key') field. Blank lines and '#' comments are skipped."""
    trace: list[Hashable] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = line
            if isinstance(value, dict):
                field = next((k for k in ("block", "id", "page", "key") if k in value), None)
                if field is None:
                    raise ValueError(f"{path}:{lineno}: a JSON object needs a 'block' field")
                value = value[field]
            if isinstance(value, (list, dict)) or value is None:
                raise ValueError(f"{path}:{lineno}: a block id must be a number or a string, got {line[:60]!r}")
            trace.append(value)
    if not trace:
        raise ValueError(f"{path}: the trace is empty")
    return trace
