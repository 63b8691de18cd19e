import math

import numpy as np
import pytest

from paged_context.controller import FEATURES, NOVEL_AFTER, Controller, History, LearnedPolicy, default_checkpoint
from paged_context.pages import Turn, segment
from paged_context.policies import ResidentSet, count_faults
from paged_context.policy_registry import make_policy
from paged_context.sim import traces as tr

torch = pytest.importorskip("torch")
from paged_context.models.controller import ControllerNet, save_checkpoint  # noqa: E402


def random_checkpoint(tmp_path, seed=0):
    torch.manual_seed(seed)
    net = ControllerNet(hidden=16)
    net.fit_scaling(torch.randn(200, len(FEATURES)) * 3 + 1)
    with torch.no_grad():  # the output layer and skip start at zero or one-hot: make every path count
        net.out.weight.normal_()
        net.skip.weight.normal_()
    return net, save_checkpoint(net, tmp_path / f"c{seed}.safetensors", {"note": "test"})


def test_numpy_inference_matches_the_torch_network(tmp_path):
    net, path = random_checkpoint(tmp_path)
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES))).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Controller.load(path).score(x), expected, rtol=1e-5, atol=1e-5)
    assert Controller.load(path).metadata["note"] == "test"


def test_a_checkpoint_for_other_features_is_refused(tmp_path):
    _, path = random_checkpoint(tmp_path)
    controller = Controller.read(path)
    with pytest.raises(ValueError, match="other features"):
        Controller(controller.t, {"features": "recency,frequency"})
    with pytest.raises(FileNotFoundError, match="train-controller"):
        Controller.load(tmp_path / "missing.safetensors")


def test_history_tracks_decay_runs_and_novelty():
    h = History(size=2)  # grows as keys arrive
    h.reference("a", 0, admitted=True)
    h.reference("a", 8, admitted=False)
    slot = h.slot["a"]
    decayed = h.decayed_now(np.array([slot]), 16)[0]
    assert decayed[0] == pytest.approx(1 * 2 ** (-2) + 1 * 2 ** (-1))  # half-life 8: refs at 0 and 8, read at 16
    for i, key in enumerate("bcde"):
        h.reference(key, 9 + i, admitted=True)
    assert len(h.slot) == 5 and h.novel == 5  # five keys seen for the first time
    h.reference("a", 9 + NOVEL_AFTER + 100, admitted=True)  # back after a long absence: a new run
    assert h.novel == 6 and h.run_count[slot] == 1 and h.total[slot] == 3


def test_learned_policy_serves_traces_deterministically(tmp_path):
    _, path = random_checkpoint(tmp_path)
    controller = Controller.load(path)
    trace = tr.generate(3, tr.TraceSpec(length=600))
    faults = count_faults(trace, 6, make_policy("learned", controller=controller))
    assert faults == count_faults(trace, 6, make_policy("learned", controller=path))
    assert count_faults(trace, 6, make_policy("belady")) <= faults <= len(trace)


def test_prefetch_respects_budget_threshold_and_candidates(tmp_path):
    _, path = random_checkpoint(tmp_path)
    turns = [Turn(i, "user" if i % 2 == 0 else "assistant", f"talk about Lisbon {i} and cats {i % 3}") for i in range(40)]
    policy = LearnedPolicy(Controller.load(path))
    cache = ResidentSet(3, policy)
    policy.attach(segment(turns, "fixed_4"))
    for page_id in range(1, 11):
        cache.access(page_id)
    policy.on_request("What did we say about Lisbon 7?")
    evicted = [p for p in range(1, 11) if p not in cache]
    picked = policy.prefetch(evicted, 2, cache.step, threshold=-math.inf)
    assert len(picked) == 2 and set(picked) <= set(evicted)
    assert policy.prefetch(evicted, 2, cache.step, threshold=math.inf) == []
    assert policy.prefetch(evicted, 0, cache.step) == []
    x = policy.features(evicted, cache.step)
    assert x.shape == (len(evicted), len(FEATURES)) and np.isfinite(x).all()
    assert (x[:, FEATURES.index("has_text")] == 1).all() and x[:, FEATURES.index("bm25")].max() == pytest.approx(1.0)


def test_the_shipped_checkpoint_is_small_and_beats_lru():
    path = default_checkpoint()
    assert path.exists() and path.stat().st_size < 1_000_000
    controller = Controller.load(path)
    assert "train_report" in controller.metadata
    learned = lru = 0
    for seed in (42, 43, 44):
        trace = tr.generate(seed)
        learned += count_faults(trace, 8, make_policy("learned", controller=controller))
        lru += count_faults(trace, 8, make_policy("lru"))
    assert learned < 0.9 * lru


TOPICS = ["sourdough", "chess", "pottery", "astronomy", "jazz piano", "birdwatching", "gardening", "sailing", "knitting", "rock climbing",
          "origami", "beekeeping", "calligraphy", "fencing", "woodworking", "photography", "salsa", "archery", "kayaking", "bonsai"]


@pytest.mark.parametrize("policy", ["lru", "fifo"])
@pytest.mark.parametrize("high,low", [(2, 1), (6, 4), (12, 8)])
def test_the_shipped_controller_prefetches_a_planted_fact_at_any_cache_size(policy, high, low):
    """The README's scenario without a model: a fact, then small talk until its page is
    evicted (by a classical policy: the learned one tends to keep it), then a question about
    it. Text pages are scored at every cache size, not only the 5 resident pages the probe
    benchmark uses (a retrain once scored every page of a 2-page session below the
    threshold and prefetched nothing)."""
    from paged_context.session import PagedSession, PagingConfig

    session = PagedSession("demo", PagingConfig(boundary="tokens_128", resident_high=high, resident_low=low, policy=policy))

    def turn(text, answer):
        session.finish(session.ask(text), answer)

    turn("Please remember: my locker code at the Riverside gym is 4417.", "Got it, your locker code at the Riverside gym is 4417.")
    for topic in TOPICS[: 3 * high + 2]:
        turn(f"Tell me three things a beginner should know about {topic}, in detail.",
             " ".join(f"First, {topic} needs patience and practice; second, good tools matter; third, learn from others who enjoy {topic}." for _ in range(4)))
    fact = next(p for p, page in session.pages.items() if "4417" in page.text)
    assert fact in session.evicted()
    request = session.ask("What is my locker code at the Riverside gym?")
    assert fact in request.prefetched


def test_a_session_controller_scores_a_shortlist_and_still_finds_the_fact(monkeypatch):
    """Past SHORTLIST evicted pages, the session's controller scores that many candidates
    (the question's best matches and the pages evicted last), not all of them, each
    ranked by recency among all of them; the page with the fact, the question's best
    match, is among them."""
    from paged_context.controller import SHORTLIST
    from paged_context.session import PagedSession, PagingConfig

    session = PagedSession("demo", PagingConfig(boundary="fixed_2", match_budget=0))
    session.finish(session.ask("Please remember: my locker code at the Riverside gym is 4417."), "Noted: locker 4417 at Riverside.")
    for i in range(SHORTLIST + 8):
        session.finish(session.ask(f"Let's talk about {TOPICS[i % len(TOPICS)]} again, part {i}."), f"Part {i} sounds fun.")
    fact = next(p for p, page in session.pages.items() if "4417" in page.text)
    evicted = session.evicted()
    assert fact in evicted and len(evicted) > SHORTLIST
    policy, scored = session.policy, []
    monkeypatch.setattr(policy, "features", lambda keys, step, features=policy.features: scored.append((list(keys), features(keys, step))) or scored[-1][1])
    request = session.ask("What is my locker code at the Riverside gym?")
    pool, x = scored[-1]
    assert fact in request.prefetched and len(pool) == SHORTLIST and fact in pool and pool == sorted(pool)
    assert set(list(policy.gone)[-SHORTLIST // 2 :]) <= set(pool)
    everyone = list(session.evicted())
    rank = dict(zip(everyone, policy.features(everyone, session.resident.step)[:, FEATURES.index("recency_rank")]))
    assert x[:, FEATURES.index("recency_rank")] == pytest.approx([rank[k] for k in pool])


def _features_one_by_one(policy: LearnedPolicy, keys, step) -> np.ndarray:
    """LearnedPolicy.features as first written: each feature on its own, then into its column."""
    h = policy.history
    slots = np.array([h.slot[k] for k in keys])
    recency = step - h.last[slots]
    decayed = h.decayed_now(slots, step)
    cols = {
        "log_recency": np.log1p(recency),
        "log_previous_gap": np.log1p(h.gap[slots]),
        "log_novel_since": np.log1p(h.novel - h.novel_at[slots]),
        "log_misses_since": np.log1p(h.misses - h.misses_at[slots]),
        "log_age": np.log1p(step - h.admitted[slots]),
        "log_references": np.log1p(h.total[slots]),
        "log_run_references": np.log1p(h.run_count[slots]),
        "log_run_age": np.log1p(step - h.run_start[slots]),
        "recency_rank": np.argsort(np.argsort(recency, kind="stable"), kind="stable") / max(len(keys) - 1, 1),
        "novelty_rate_16": h.rates[0],
        "novelty_rate_64": h.rates[1],
        "miss_rate_32": h.rates[2],
        "log_capacity": math.log(policy.capacity),
        "resident": np.array([k in policy.resident for k in keys]),
    }
    next_probability = h.segments.predictive(slots)
    cols["log_next_probability"] = np.log(next_probability)
    cols["relative_next_probability"] = next_probability / next_probability.max()
    cols["log_segment_length"] = math.log1p(h.segments.expected_run())
    run_rate = h.run_count[slots] / (step - h.run_start[slots] + 1)
    cols["relative_run_rate"] = run_rate / (run_rate.max() + 1e-9)
    peak = decayed.max(axis=0) + 1e-9
    for j, half_life in enumerate((8, 32, 128, 512)):
        cols[f"log_decayed_{half_life}"] = np.log1p(decayed[:, j])
        cols[f"relative_decayed_{half_life}"] = decayed[:, j] / peak[j]
    if policy.index.docs:
        cols.update(policy._text_features(keys))
    x = np.zeros((len(keys), len(FEATURES)), dtype=np.float32)
    for name, value in cols.items():
        x[:, FEATURES.index(name)] = value
    return x


def test_features_computed_together_equal_each_feature_computed_alone():
    """features() fills rows of several features per call; every value must be the one its
    definition gives alone, to the bit (retraining reproduces the shipped weights on that)."""
    from paged_context.sim import synthetic
    from paged_context.sim.probes import simulate

    checked = []

    class Checked(LearnedPolicy):
        def features(self, keys, step):
            x = super().features(keys, step)
            assert x.dtype == np.float32 and x.flags.c_contiguous
            assert np.array_equal(x, _features_one_by_one(self, keys, step))
            checked.append(bool(self.index.docs))
            return x

    cache = ResidentSet(6, Checked(Controller.load()))
    for key in tr.generate(3)[:1500]:
        cache.access(key)
    simulate(synthetic.generate_many(1, 10_000)[0], "topic_shift", Checked(Controller.load()), 3, prefetch="learned")
    assert checked.count(False) > 100 and checked.count(True) > 50  # traces, and pages with text
