"""Eviction policies behind one interface, and the resident set that uses them.

Bookkeeping and policy are separate (as in vLLM's block pool vs. its cache manager):
`ResidentSet` owns which keys are resident and the capacity; a `Policy` only hears what
happens (hits, admissions, evictions) and names a victim when room is needed. Keys are
any hashables: block ids in the trace simulator, page ids in a session.

Every access gets a step number, counted by the resident set. Offline policies (Belady)
are told the whole future access sequence up front and read it by step.

The learned policy is in `controller`; `policy_registry` makes any policy by name.
"""

from __future__ import annotations

import heapq
import itertools
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import ClassVar, Hashable, Iterable, Sequence

import numpy as np

from .changepoint import RunLengthPosterior

Key = Hashable
NEVER = float("inf")


class Policy(ABC):
    name: ClassVar[str]
    offline: ClassVar[bool] = False

    def start(self, capacity: int, future: Sequence[Key] | None = None) -> None:
        """Forget everything; `future` is the full access sequence (offline policies only)."""

    @abstractmethod
    def on_hit(self, key: Key, step: int) -> None: ...

    @abstractmethod
    def on_admit(self, key: Key, step: int) -> None:
        """`key` was missing and is now resident."""

    @abstractmethod
    def victim(self, incoming: Key, step: int) -> Key:
        """The resident key to evict so that `incoming` fits."""

    @abstractmethod
    def on_evict(self, key: Key) -> None: ...

    # Conversation-aware policies also read what the keys are and what is being asked;
    # the classical ones ignore both.
    def attach(self, pages: Sequence) -> None:
        """More pages behind the keys, those written since the last call (a policy may read
        a page once it has been written)."""

    def on_request(self, text: str) -> None:
        """A new request (question, user turn) arrived."""


class ResidentSet:
    """Which keys are resident, at most `capacity` of them."""

    def __init__(self, capacity: int, policy: Policy, future: Sequence[Key] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if policy.offline and future is None:
            raise ValueError(f"{policy.name} is an offline policy: it needs the future access sequence")
        self.capacity = capacity
        self.policy = policy
        self.keys: set[Key] = set()
        self.step = 0
        policy.start(capacity, future)

    def __contains__(self, key: Key) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def access(self, key: Key) -> Key | None | bool:
        """Reference `key`, admitting it if missing. Returns True on a hit, else the evicted
        key (None when there was free room)."""
        step, self.step = self.step, self.step + 1
        if key in self.keys:
            self.policy.on_hit(key, step)
            return True
        evicted = None
        if len(self.keys) >= self.capacity:
            evicted = self.policy.victim(key, step)
            if evicted not in self.keys:
                raise RuntimeError(f"{self.policy.name} chose {evicted!r}, which is not resident")
            self.keys.remove(evicted)
            self.policy.on_evict(evicted)
        self.keys.add(key)
        self.policy.on_admit(key, step)
        return evicted

    def shrink(self, size: int) -> list[Key]:
        """Evict, in the policy's order, until at most `size` keys remain (a compaction)."""
        evicted = []
        while len(self.keys) > size:
            victim = self.policy.victim(None, self.step)
            self.keys.remove(victim)
            self.policy.on_evict(victim)
            evicted.append(victim)
        return evicted


def count_faults(trace: Iterable[Key], capacity: int, policy: Policy) -> int:
    """Misses (cold ones included) when `policy` serves `trace` with `capacity` slots."""
    trace = list(trace)
    cache = ResidentSet(capacity, policy, trace if policy.offline else None)
    return sum(cache.access(k) is not True for k in trace)


# --- classical online policies ---------------------------------------------------------


class FIFO(Policy):
    name = "fifo"

    def start(self, capacity, future=None):
        self.order: OrderedDict[Key, None] = OrderedDict()

    def on_hit(self, key, step):
        pass

    def on_admit(self, key, step):
        self.order[key] = None

    def victim(self, incoming, step):
        return next(iter(self.order))

    def on_evict(self, key):
        del self.order[key]


class LRU(FIFO):
    name = "lru"

    def on_hit(self, key, step):
        self.order.move_to_end(key)


class LFU(Policy):
    """Fewest references so far (counts survive eviction: a block's history is not
    forgotten because it left the cache), ties broken by age, oldest out first."""

    name = "lfu"

    def start(self, capacity, future=None):
        self.count: dict[Key, int] = {}
        self.admitted: dict[Key, int] = {}

    def on_hit(self, key, step):
        self.count[key] += 1

    def on_admit(self, key, step):
        self.count[key] = self.count.get(key, 0) + 1
        self.admitted[key] = step

    def victim(self, incoming, step):
        return min(self.admitted, key=lambda k: (self.count[k], self.admitted[k]))

    def on_evict(self, key):
        del self.admitted[key]


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def start(self, capacity, future=None):
        self.rng = random.Random(self.seed)
        self.keys: list[Key] = []

    def on_hit(self, key, step):
        pass

    def on_admit(self, key, step):
        self.keys.append(key)

    def victim(self, incoming, step):
        return self.keys[self.rng.randrange(len(self.keys))]

    def on_evict(self, key):
        self.keys.remove(key)


class ARC(Policy):
    """Adaptive Replacement Cache (Megiddo & Modha, FAST 2003): balances recency (T1)
    against frequency (T2), steering the split `p` by hits in the ghost lists B1/B2 of
    recently evicted keys."""

    name = "arc"

    def start(self, capacity, future=None):
        self.c = capacity
        self.p = 0.0
        self.t1: OrderedDict[Key, None] = OrderedDict()
        self.t2: OrderedDict[Key, None] = OrderedDict()
        self.b1: OrderedDict[Key, None] = OrderedDict()
        self.b2: OrderedDict[Key, None] = OrderedDict()

    def on_hit(self, key, step):
        (self.t1 if key in self.t1 else self.t2).pop(key)
        self.t2[key] = None

    def victim(self, incoming, step):
        self.ghost_victim = True  # read by on_evict, which follows every victim()
        if incoming in self.b1:
            self.p = min(self.c, self.p + max(len(self.b2) / len(self.b1), 1))
        elif incoming in self.b2:
            self.p = max(0.0, self.p - max(len(self.b1) / len(self.b2), 1))
        elif len(self.t1) + len(self.b1) >= self.c:
            if self.b1:
                self.b1.popitem(last=False)
            else:  # T1 alone fills the cache: its LRU leaves without a ghost
                self.ghost_victim = False
                return next(iter(self.t1))
        elif len(self.t1) + len(self.t2) + len(self.b1) + len(self.b2) >= 2 * self.c and self.b2:
            self.b2.popitem(last=False)
        from_t1 = self.t1 and (len(self.t1) > self.p or (incoming in self.b2 and len(self.t1) == self.p))
        return next(iter(self.t1 if from_t1 else self.t2))

    def on_evict(self, key):
        in_t1 = key in self.t1
        (self.t1 if in_t1 else self.t2).pop(key)
        if self.ghost_victim:
            (self.b1 if in_t1 else self.b2)[key] = None

    def on_admit(self, key, step):
        if key in self.b1 or key in self.b2:
            (self.b1 if key in self.b1 else self.b2).pop(key)
            self.t2[key] = None
        else:
            self.t1[key] = None


# --- a model-based online policy ---------------------------------------------------------


class ChangePointA0(Policy):
    """Evict the resident key least likely to be referenced next (the A0 rule, optimal
    online when references are independent draws from a fixed mix), with the likelihoods
    from a change-point posterior so the mix may move. The learned controller's strongest
    feature, as a policy of its own; ties go to the least recently used."""

    name = "changepoint"

    def start(self, capacity, future=None):
        self.posterior = RunLengthPosterior()
        self.slot: dict[Key, int] = {}
        self.last: dict[Key, int] = {}

    def on_hit(self, key, step):
        self.posterior.observe(self.slot.setdefault(key, len(self.slot)))
        self.last[key] = step

    on_admit = on_hit

    def victim(self, incoming, step):
        keys = list(self.last)
        p = self.posterior.predictive(np.array([self.slot[k] for k in keys]))
        return keys[min(range(len(keys)), key=lambda i: (p[i], self.last[keys[i]]))]

    def on_evict(self, key):
        del self.last[key]


# --- the offline optimum ---------------------------------------------------------------


def next_uses(trace: Sequence[Key]) -> list[float]:
    """For each step, the step at which the same key is next accessed (inf if never)."""
    out: list[float] = [NEVER] * len(trace)
    last: dict[Key, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        out[i] = last.get(trace[i], NEVER)
        last[trace[i]] = i
    return out


class Belady(Policy):
    """Evict the key whose next access is farthest away (optimal for a known trace).
    O(T log T): next uses are precomputed, a lazy max-heap finds the victim."""

    name = "belady"
    offline = True

    def start(self, capacity, future=None):
        self.future = list(future or ())
        self.next_use = next_uses(self.future)
        self.due: dict[Key, float] = {}
        self.heap: list[tuple[float, int, Key]] = []
        self.tie = itertools.count()

    def _schedule(self, key, step):
        if self.future[step] != key:
            raise ValueError(f"step {step}: accessed {key!r} but the future said {self.future[step]!r}")
        self.due[key] = self.next_use[step]
        heapq.heappush(self.heap, (-self.due[key], next(self.tie), key))

    on_hit = on_admit = _schedule

    def victim(self, incoming, step):
        while True:
            neg_due, _, key = self.heap[0]
            if self.due.get(key) == -neg_due:
                return key
            heapq.heappop(self.heap)

    def on_evict(self, key):
        del self.due[key]


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (FIFO, LRU, LFU, RandomPolicy, ARC, ChangePointA0, Belady)}
CLASSICAL_ONLINE = ("fifo", "lru", "lfu", "random", "arc")
