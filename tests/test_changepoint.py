import numpy as np
import pytest

from paged_context.changepoint import RunLengthPosterior
from paged_context.policies import count_faults
from paged_context.policy_registry import make_policy
from paged_context.sim import traces as tr


def test_the_posterior_follows_a_shift_of_the_mix():
    post = RunLengthPosterior(horizon=64)
    for i in range(200):
        post.observe(i % 2)  # keys 0 and 1 only
    before = post.predictive(np.array([0, 1]))
    assert before.min() > 0.45 and post.expected_run() > 40
    post.observe(2)
    post.observe(3)  # keys never seen: the slot count grows
    for i in range(12):
        post.observe(2 + i % 2)
    p = post.predictive(np.arange(4))
    assert p[2:].min() > 5 * p[:2].max()  # a dozen references outweigh two hundred before the shift
    assert post.expected_run() < 30
    assert p.sum() == pytest.approx(1.0)  # a distribution over the keys seen so far
    assert len(post.weights) <= 64 and len(post.recent) == len(post.weights) - 1


def test_the_posterior_refuses_a_hazard_outside_0_1():
    with pytest.raises(ValueError, match="hazard"):
        RunLengthPosterior(hazard=0)


def test_changepoint_policy_beats_lru_on_shifting_zipf_traces():
    trace = tr.generate(7, tr.TraceSpec(length=2000))
    assert count_faults(trace, 8, make_policy("changepoint")) < 0.9 * count_faults(trace, 8, make_policy("lru"))


def _naive(post: RunLengthPosterior, slots) -> np.ndarray:
    """predictive() as first written: every key's counts over the whole window, afresh."""
    slots = np.asarray(slots)
    hits = post.recent[None, :] == slots[:, None]
    counts = np.concatenate([np.zeros((len(slots), 1)), np.cumsum(hits, axis=1)], axis=1)
    rates = (counts + post.concentration) / (np.arange(counts.shape[-1]) + post.concentration * max(post.keys, 1))
    return rates @ post.weights


class _Afresh(RunLengthPosterior):
    """The posterior with every count taken afresh from the window: the reference."""

    def _counts(self, slots):
        hits = self.recent[None, :] == np.asarray(slots)[:, None]
        return np.concatenate([np.zeros((len(slots), 1)), np.cumsum(hits, axis=1)], axis=1)


def test_counts_kept_per_key_give_the_same_probabilities_to_the_last_bit():
    rng = np.random.default_rng(0)
    for horizon in (8, 64):
        post, ref = RunLengthPosterior(horizon=horizon), _Afresh(horizon=horizon)
        for step in range(600):
            slot = int(rng.integers(0, 6 if step < 300 else 40))  # a narrow mix, then a wide one
            post.observe(slot)
            ref.observe(slot)
            asked = rng.integers(0, 45, int(rng.integers(1, 12)))  # some never seen
            assert np.array_equal(post.predictive(asked), _naive(ref, asked))
            assert np.array_equal(post.weights, ref.weights) and np.array_equal(post.recent, ref.recent)
        assert len(post._rows) <= 2 * horizon  # slots gone from the window are forgotten


def test_copies_stepping_ahead_leave_the_original_exact():
    """A fork looks ahead on the same references (their states are shared, not recomputed),
    another on different ones; each, and the original after them, matches a posterior that
    saw its references alone."""
    import copy

    rng = np.random.default_rng(1)
    stream = [int(s) for s in rng.integers(0, 12, 400)]
    post = RunLengthPosterior(horizon=32)
    for s in stream[:100]:
        post.observe(s)
    ahead, other = copy.deepcopy(post), copy.deepcopy(post)
    for s in stream[100:160]:
        ahead.observe(s)
    for s in stream[100:110] + [99] + stream[111:160]:  # differs at one reference
        other.observe(s)
    for s in stream[100:400]:
        post.observe(s)
    for fork, seen in ((ahead, stream[:160]), (other, stream[:110] + [99] + stream[111:160]), (post, stream)):
        ref = _Afresh(horizon=32)
        for s in seen:
            ref.observe(s)
        assert np.array_equal(fork.weights, ref.weights) and np.array_equal(fork.recent, ref.recent)
        assert np.array_equal(fork.predictive(np.arange(14)), _naive(ref, np.arange(14)))
