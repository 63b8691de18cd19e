import functools
import subprocess
import sys
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paged_context.policies import ARC, POLICIES, Belady, ResidentSet, count_faults, next_uses
from paged_context.policy_registry import NAMES, make_policy

traces = st.lists(st.integers(0, 7), min_size=1, max_size=120)


def reference_lru(trace, k):
    cache, faults = OrderedDict(), 0
    for x in trace:
        if x in cache:
            cache.move_to_end(x)
            continue
        faults += 1
        if len(cache) >= k:
            cache.popitem(last=False)
        cache[x] = None
    return faults


def reference_fifo(trace, k):
    cache, faults = [], 0
    for x in trace:
        if x not in cache:
            faults += 1
            if len(cache) >= k:
                cache.pop(0)
            cache.append(x)
    return faults


def reference_lfu(trace, k):
    counts, admitted, cache, faults = {}, {}, set(), 0
    for t, x in enumerate(trace):
        counts[x] = counts.get(x, 0) + 1
        if x in cache:
            continue
        faults += 1
        if len(cache) >= k:
            victim = min(cache, key=lambda y: (counts[y], admitted[y]))
            cache.remove(victim)
        cache.add(x)
        admitted[x] = t
    return faults


def optimal_faults(trace, k):
    """Exhaustive search over every eviction choice: the true optimum."""

    @functools.lru_cache(maxsize=None)
    def best(i, cache):
        if i == len(trace):
            return 0
        x = trace[i]
        if x in cache:
            return best(i + 1, cache)
        if len(cache) < k:
            return 1 + best(i + 1, cache | {x})
        return 1 + min(best(i + 1, (cache - {y}) | {x}) for y in cache)

    return best(0, frozenset())


@settings(max_examples=200, deadline=None)
@given(traces, st.integers(1, 6))
def test_classical_policies_match_reference_implementations(trace, k):
    assert count_faults(trace, k, make_policy("lru")) == reference_lru(trace, k)
    assert count_faults(trace, k, make_policy("fifo")) == reference_fifo(trace, k)
    assert count_faults(trace, k, make_policy("lfu")) == reference_lfu(trace, k)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=12), st.integers(1, 3))
def test_belady_is_optimal(trace, k):
    assert count_faults(trace, k, Belady()) == optimal_faults(tuple(trace), k)


@settings(max_examples=150, deadline=None)
@given(traces, st.integers(1, 6))
def test_no_policy_beats_belady(trace, k):
    opt = count_faults(trace, k, Belady())
    distinct = len(set(trace))
    for name in POLICIES:
        faults = count_faults(trace, k, make_policy(name, seed=3))
        assert opt <= faults <= len(trace)
        assert faults >= distinct  # cold misses are faults too


@settings(max_examples=200, deadline=None)
@given(traces, st.integers(1, 6))
def test_arc_keeps_its_invariants(trace, k):
    arc = ARC()
    cache = ResidentSet(k, arc)
    for x in trace:
        cache.access(x)
        assert set(arc.t1) | set(arc.t2) == cache.keys
        assert not set(arc.t1) & set(arc.t2)
        assert not (set(arc.b1) | set(arc.b2)) & cache.keys
        assert len(arc.t1) + len(arc.b1) <= k
        assert len(arc.t1) + len(arc.t2) + len(arc.b1) + len(arc.b2) <= 2 * k
        assert 0 <= arc.p <= k


def test_arc_resists_a_scan_that_flushes_lru():
    hot = [0, 1] * 20
    scan = list(range(10, 40))
    trace = hot + scan + hot
    assert count_faults(trace, 4, make_policy("arc")) < count_faults(trace, 4, make_policy("lru"))


def test_random_is_reproducible_per_seed():
    trace = [i % 9 for i in range(0, 400, 7)]
    assert count_faults(trace, 3, make_policy("random", 5)) == count_faults(trace, 3, make_policy("random", 5))
    assert len({count_faults(trace, 3, make_policy("random", s)) for s in range(8)}) > 1


def test_resident_set_reports_hits_and_evictions():
    cache = ResidentSet(2, make_policy("lru"))
    assert cache.access("a") is None and cache.access("b") is None
    assert cache.access("a") is True
    assert cache.access("c") == "b"
    assert "a" in cache and "c" in cache and len(cache) == 2


def test_misuse_is_a_clear_error():
    with pytest.raises(ValueError, match="capacity"):
        ResidentSet(0, make_policy("lru"))
    with pytest.raises(ValueError, match="offline"):
        ResidentSet(2, Belady())
    cache = ResidentSet(2, Belady(), future=["a", "b"])
    with pytest.raises(ValueError, match="future"):
        cache.access("b")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("clock")


def test_next_uses():
    assert next_uses(["a", "b", "a", "c", "b"]) == [2, 4, float("inf"), float("inf"), float("inf")]


def test_every_policy_is_made_by_name_in_a_fresh_interpreter():
    # nothing imported before may be what fills the registry
    code = "from paged_context.policy_registry import NAMES, make_policy; print(*(make_policy(n).name for n in NAMES))"
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert made == list(NAMES) == [*POLICIES, "learned"]
