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
