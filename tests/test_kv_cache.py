"""The KV-cache manager on tiny random Llamas: exact restores, the host pool shared by
sessions, splicing."""

import pytest

torch = pytest.importorskip("torch")
from exact_restore import restore_error  # noqa: E402
from tiny_model import build  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from paged_context.patches.hf_engine import HFEngine  # noqa: E402
from paged_context.patches.kv_cache import KVCacheManager, rotate_keys, splice_divergence  # noqa: E402
from paged_context.patches.kv_pool import HostKVPool, HostPool  # noqa: E402
from paged_context.session import PagingConfig  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


def logits_with(model, manager, ids, boundaries=()):
    cache, n = manager.cache_for(ids, boundaries)
    with torch.no_grad():
        out = model(torch.tensor([ids[n:]]), past_key_values=cache).logits[0, -1]
    return out, n, cache


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def prompt(*segments):
    ids, ends = [], []
    for s in segments:
        ids += s
        ends.append(len(ids))
    return ids, ends


def segment(seed, n=20):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 300, (n,), generator=g).tolist()


def test_a_layout_that_returns_is_restored_exactly(model):
    manager = KVCacheManager(model)
    system, p1, p2, p3, q1, q2, q3 = (segment(i) for i in range(7))
    layouts = [prompt(system, p1, p2, p3, q1), prompt(system, p1, p3, q2), prompt(system, p1, p2, p3, q3)]
    reused = []
    for ids, ends in layouts:
        out, n, cache = logits_with(model, manager, ids)
        assert (out - full_logits(model, ids)).abs().max().item() < 1e-4
        manager.remember(ids, cache, ends)
        reused.append(n)
    assert reused[0] == 0
    assert reused[1] == 40  # system + p1 survive the eviction of p2
    assert reused[2] == 80  # back to the first layout: system..p3 come from the pool
    stats = manager.stats()
    assert stats.restored_tokens == 120 and stats.recomputed_tokens == sum(len(i) for i, _ in layouts) - 120


def test_generation_on_a_restored_cache_matches(model):
    manager = KVCacheManager(model)
    ids, ends = prompt(segment(1), segment(2), segment(3))
    cache, _ = manager.cache_for(ids)
    with torch.no_grad():
        model(torch.tensor([ids]), past_key_values=cache)
    manager.remember(ids, cache, ends)
    manager.live = None
    ids2 = ids + segment(4, 5)
    cache, n = manager.cache_for(ids2)
    assert n == len(ids)
    prompt_t = torch.tensor([ids2])
    with torch.no_grad():
        a = model.generate(input_ids=prompt_t, attention_mask=torch.ones_like(prompt_t), past_key_values=cache, max_new_tokens=8, do_sample=False)
        b = model.generate(input_ids=prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=8, do_sample=False)
    assert a.tolist() == b.tolist()


def test_host_limit_evicts_chunks_reuses_the_pool_and_stays_exact(model):
    manager = KVCacheManager(model, host_limit_bytes=30_000)
    slabs = []
    for seed in range(6):
        ids, ends = prompt(segment(100), segment(seed + 200), segment(seed + 300))
        out, n, cache = logits_with(model, manager, ids)
        assert (out - full_logits(model, ids)).abs().max().item() < 1e-4
        manager.remember(ids, cache, ends)
        stats = manager.stats()
        chunks = manager.pool.chunks(manager.owner)
        assert stats.host_bytes == sum(c.nbytes for c in chunks) == stats.pool.held_bytes <= stats.pool.reserved_bytes <= 30_000
        assert stats.device_bytes == sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        assert not stats.pool.pinned
        slabs.append(stats.pool.allocations)
    assert slabs[-1] == slabs[0] == 1  # evicted chunks' ranges were reused, no new host memory
    assert all(c.host.is_contiguous() and c.host.shape[:2] == (3, c.end - c.start) for c in chunks)


def test_rotating_keys_moves_them_to_a_new_position(model):
    ids = segment(7, 6)
    cache_a, cache_b = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.tensor([ids]), past_key_values=cache_a)  # positions 0..5
        model(torch.tensor([ids]), past_key_values=cache_b, position_ids=torch.arange(9, 15)[None])  # positions 9..14
    moved = rotate_keys(model, cache_a.layers[0].keys, 9)  # layer 0 keys depend on the token and position only
    assert (moved - cache_b.layers[0].keys).abs().max().item() < 1e-5


def test_splice_mode_reuses_segments_and_reports_its_drift(model):
    manager = KVCacheManager(model, mode="splice")
    system, page, other, question = segment(1), segment(2), segment(3), segment(4, 6)
    ids, ends = prompt(system, page, question)
    _, _, cache = logits_with(model, manager, ids, ends)
    manager.remember(ids, cache, ends)
    moved, moved_ends = prompt(system, other, page, question)
    _, n, _ = logits_with(model, manager, moved, moved_ends)
    assert n == 20 and manager.stats().spliced_tokens == 0  # `other` is new: nothing after it can be spliced
    manager.remember(moved, logits_with(model, manager, moved, moved_ends)[2], moved_ends)
    again, again_ends = prompt(system, page, other, question)  # both segments known, at new places
    out, n, _ = logits_with(model, manager, again, again_ends)
    assert n > 20 and manager.stats().spliced_tokens > 0
    rows = splice_divergence(model, other, page, system, question, repairs=(0, 8, 20))
    assert [(r["repair_tokens"], r["repaired_tokens"]) for r in rows] == [(0, 0), (8, 8), (20, 20)]
    assert rows[0]["max_logit_diff"] > 0 and rows[0]["kl"] >= 0 and 0 <= rows[0]["greedy_agreement"] <= 1
    assert rows[2]["max_logit_diff"] < 1e-4 and rows[2]["greedy_agreement"] == 1  # the whole page recomputed


def spliced(model, repair_tokens, first, second, question):
    """A splice-mode manager that stored `first` + `second` after one prefix and restores
    them swapped after another; the restore, and the prompt it was for."""
    manager = KVCacheManager(model, mode="splice", repair_tokens=repair_tokens)
    old, new = segment(30), segment(31)
    for ids, ends in (prompt(old, first, second), prompt(new)):
        manager.remember(ids, logits_with(model, manager, ids)[2], ends)
    manager.live = None
    ids, ends = prompt(new, second, first, question)
    return manager, manager.start_restore(ids, ends), ids


def test_repairing_whole_segments_equals_recomputing_them(model):
    first, second, question = segment(32), segment(33), segment(34, 6)
    manager, restore, ids = spliced(model, 20, first, second, question)
    assert (restore.tokens, restore.repaired) == (60, 40)
    with torch.no_grad():
        out = model(torch.tensor([ids[60:]]), past_key_values=restore.cache()).logits[0, -1]
    assert (out - full_logits(model, ids)).abs().max().item() < 1e-4
    stats = manager.stats()
    assert (stats.spliced_tokens, stats.repaired_tokens) == (0, 40)
    assert stats.restored_tokens + stats.recomputed_tokens == 60 + 20 + len(ids)  # the two stored prompts, then the spliced one


def test_a_repair_recomputes_the_first_tokens_and_rotates_the_rest(model):
    first, second, question = segment(32), segment(33), segment(34, 6)
    source = DynamicCache(config=model.config)
    recompute = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.tensor([segment(30) + first + second]), past_key_values=source)
        model(torch.tensor([segment(31) + second]), past_key_values=recompute)
    for repair in (0, 5):
        manager, restore, _ = spliced(model, repair, first, second, question)
        assert (restore.tokens, restore.repaired) == (60, 2 * repair)
        stats = manager.stats()
        assert (stats.spliced_tokens, stats.repaired_tokens) == (40 - 2 * repair, 2 * repair)
        for layer, (k, v) in enumerate(restore.layers):
            old_k, old_v = source.layers[layer].keys, source.layers[layer].values
            # `second`, stored at 40..60, now at 20..40: its first tokens recomputed after `new` alone, as a full recompute has them
            assert torch.allclose(k[..., 20 : 20 + repair, :], recompute.layers[layer].keys[..., 20 : 20 + repair, :], atol=1e-5)
            assert torch.allclose(v[..., 20 : 20 + repair, :], recompute.layers[layer].values[..., 20 : 20 + repair, :], atol=1e-5)
            # the rest is today's splice: the stored KV, keys re-rotated by the move
            assert torch.allclose(k[..., 20 + repair : 40, :], rotate_keys(model, old_k[..., 40 + repair :, :], -20), atol=1e-6)
            assert torch.equal(v[..., 20 + repair : 40, :], old_v[..., 40 + repair :, :])
            assert torch.allclose(k[..., 40 + repair :, :], rotate_keys(model, old_k[..., 20 + repair : 40, :], 20), atol=1e-6)


def test_repair_is_for_splice_mode_only(model):
    with pytest.raises(ValueError, match="splice mode only"):
        KVCacheManager(model, repair_tokens=16)
    with pytest.raises(ValueError, match=">= 0"):
        KVCacheManager(model, mode="splice", repair_tokens=-1)


def test_bench_kv_runs(tmp_path):
    import argparse
    import json

    from paged_context.bench import kv

    parser = argparse.ArgumentParser()
    kv.add_arguments(parser)
    result = kv.main(parser.parse_args(["--shape", "tiny", "--pages", "32", "2048", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)]))
    data = json.loads((tmp_path / "kv.json").read_text())
    assert (tmp_path / "kv.png").stat().st_size > 0
    assert [r["tokens"] for r in data["pages"]] == [32, 2048] == [r["tokens"] for r in result["pages"]]
    assert data["device"] == "cpu" and data["layers"] == 2 and data["kv_bytes_per_token"] == 2 * 2 * 1 * 16 * 4
    for r in data["pages"]:
        assert r["kv_bytes"] == r["tokens"] * data["kv_bytes_per_token"] and r["moved_bytes"] == r["kv_bytes"] + kv.PREFIX * data["kv_bytes_per_token"]
        assert r["restore_ms"] > 0 and r["recompute_ms"] > 0 and r["turn_resident_ms"] > 0 and r["turn_recalled_ms"] > 0
        assert "restore_adds_ms" in r and r["pinned_h2d_gb_s"] is None and r["restore_share_of_pinned"] is None  # CUDA only
    assert data["anchor"]["pinned_h2d_gb_s"] == 55.1
    assert set(data["acceptance"]) == {"recompute / restore >= 10x at 2048", "restore adds < 10 ms to a turn at 2048"}


def test_host_pool_reuses_ranges_within_its_limit():
    pool = HostPool(limit_bytes=4096, pin=False, slab_bytes=4096)
    a, b = pool.alloc(1000), pool.alloc(1000)
    assert (a[1], b[1]) == (0, 1024) and pool.reserved == 4096 and pool.allocations == 1
    assert pool.alloc(3000) is None  # 2048 bytes left: the caller must evict
    pool.release(*a[:2], 1000)
    pool.release(*b[:2], 1000)  # merged with a's range: the slab is whole again
    c = pool.alloc(3000)
    assert c[1] == 0 and c[2].numel() == 3000 and c[2].data_ptr() == a[2].data_ptr() and pool.allocations == 1
    pool.release(*c[:2], 3000)
    big = HostPool(limit_bytes=7000, pin=False, slab_bytes=2048)
    first = big.alloc(100)
    big.release(*first[:2], 100)
    bigger = big.alloc(6000)
    assert bigger[2].numel() == 6000 and big.reserved == 6144 and big.allocations == 2  # the empty small slab made room
    assert bigger[0] == 0 and len(big.slabs) == 1  # in its place


def test_a_restore_started_early_gives_the_same_logits(model):
    manager = KVCacheManager(model)
    ids, ends = prompt(segment(1), segment(2), segment(3))
    _, _, cache = logits_with(model, manager, ids)
    manager.remember(ids, cache, ends)
    manager.live = None
    turn = ids + segment(4, 5)
    restore = manager.start_restore(turn)  # copies start now; the model waits per layer when it gets there
    assert restore.tokens == len(ids) and restore.ready == [None] * 3  # CPU: copies already done
    with torch.no_grad():
        out = model(torch.tensor([turn[restore.tokens :]]), past_key_values=restore.cache()).logits[0, -1]
    assert (out - full_logits(model, turn)).abs().max().item() < 1e-4
    stored = max(manager.pool.chunks(manager.owner), key=lambda c: c.end)
    k, v = stored.layer(1)
    assert torch.equal(k, cache.layers[1].keys[..., 40:60, :]) and torch.equal(v, cache.layers[1].values[..., 40:60, :])


def test_the_budget_is_shared_and_the_least_recently_used_chunk_of_any_session_goes_first(model):
    chunk_bytes = 3 * 20 * 2 * 2 * 16 * 4  # layers, tokens, key and value, KV heads, head dim, float32
    pool = HostKVPool("cpu", limit_bytes=4 * chunk_bytes)  # room for four chunks, for both sessions
    a, b = KVCacheManager(model, pool=pool), KVCacheManager(model, pool=pool)
    turn = segment(9, 5)
    b_ids, b_ends = prompt(segment(10), segment(11), segment(12))
    a_ids, a_ends = prompt(segment(20))
    for manager, ids, ends in [(b, b_ids, b_ends), (a, a_ids, a_ends)]:
        manager.remember(ids, logits_with(model, manager, ids)[2], ends)
        manager.live = None  # restores come from the pool
    assert pool.stats().chunks == 4
    out, n, _ = logits_with(model, b, b_ids + turn)  # b's chunks are used again: a's is now the least recent
    assert n == 60 and (out - full_logits(model, b_ids + turn)).abs().max().item() < 1e-4
    longer, longer_ends = prompt(segment(10), segment(11), segment(12), segment(13))
    b.remember(longer, logits_with(model, b, longer)[2], longer_ends)  # a fifth chunk: one must go
    stats = pool.stats()
    assert (a.stats().chunks, b.stats().chunks, stats.owners) == (0, 4, 1)  # a's, though b's first chunk is older
    assert stats.held_bytes == b.stats().host_bytes <= stats.reserved_bytes <= 4 * chunk_bytes
    out, n, _ = logits_with(model, a, a_ids + turn)
    assert n == 0 and (out - full_logits(model, a_ids + turn)).abs().max().item() < 1e-4  # evicted: recomputed
    b.live = None
    out, n, _ = logits_with(model, b, longer + turn)
    assert n == 80 and (out - full_logits(model, longer + turn)).abs().max().item() < 1e-4


def test_sessions_never_restore_each_others_kv(model):
    pool = HostKVPool("cpu", limit_bytes=None)
    a, b = KVCacheManager(model, pool=pool), KVCacheManager(model, pool=pool)
    ids, ends = prompt(segment(1), segment(2))
    a.remember(ids, logits_with(model, a, ids)[2], ends)
    a.live = None
    assert logits_with(model, b, ids + [5])[1] == 0  # the same tokens, another session: recomputed
    assert logits_with(model, a, ids + [5])[1] == 40


def test_forgetting_100_sessions_gives_their_host_memory_back(tmp_path):
    engine = HFEngine(build(tmp_path / "tiny"), max_new_tokens=2, repetition_penalty=1.0)
    slab = 1 << 14
    engine.kv_pool = HostKVPool(engine.device, 1 << 30, slab_bytes=slab)  # small slabs, so 100 sessions take many
    for i in range(100):
        session = engine.session(f"user-{i}", PagingConfig())
        for turn in range(2):
            engine.reply(session, f"session {i}, turn {turn}: the locker code is {i}{turn}")
    held = engine.kv_pool.stats()
    assert held.owners == 100 and held.chunks >= 100 and held.slabs > 10
    for i in range(100):
        engine.forget(f"user-{i}")
    engine.forget("never-seen")  # nothing to drop
    empty = engine.kv_pool.stats()
    assert engine.caches == {}
    assert (empty.owners, empty.chunks, empty.held_bytes) == (0, 0, 0)
    assert empty.slabs <= 1 and empty.reserved_bytes <= slab  # one spare slab stays warm, the rest went back

    session = engine.session("after", PagingConfig())
    for turn in range(3):
        reply = engine.reply(session, f"turn {turn}: my Lisbon trip budget is {turn}00")
    assert reply.usage["cached_tokens"] > 0 and reply.paging["kv"]["pool"]["owners"] == 1
    kv = engine.caches["after"]
    kv.live = None  # from the pool
    request = session.ask("and the budget?")
    reused, error = restore_error(engine, kv, engine.template.encode(session.render(request, "")))
    assert reused > 0 and error < 1e-4


def test_bench_kv_splice_study_runs_on_a_local_model(tmp_path):
    import argparse

    from paged_context.bench import kv

    parser = argparse.ArgumentParser()
    kv.add_arguments(parser)
    args = ["--model", str(build(tmp_path / "tiny")), "--pages", "32", "--repeats", "1", "--device", "cpu", "--splice-page-tokens", "48"]
    splice = kv.main(parser.parse_args([*args, "--out", str(tmp_path / "out")]))["splice"]
    assert splice["data"] == "synthetic conversations" and splice["page_tokens"] == 48
    assert [r["repair_tokens"] for r in splice["repairs"]] == list(kv.SPLICE_REPAIRS)
    assert all(r["cases"] == kv.SPLICE_CASES for r in splice["repairs"])
    shares = [r["recomputed_share"] for r in splice["repairs"]]
    assert shares[0] == 0 and shares == sorted(shares) and shares[-1] <= 1
    for row in splice["cases"]:
        assert row["repaired_tokens"] == min(row["repair_tokens"], row["segment_tokens"])
        assert 0 <= row["greedy_agreement"] <= 1 and row["kl"] >= -1e-6
        if row["repaired_tokens"] == row["segment_tokens"]:  # the whole page recomputed: a recompute
            assert row["max_logit_diff"] < 1e-4 and row["greedy_agreement"] == 1


def test_the_engine_gives_each_session_its_repair_and_reports_it(tmp_path):
    engine = HFEngine(build(tmp_path / "tiny"), kv_mode="splice", kv_repair_tokens=8, max_new_tokens=2, repetition_penalty=1.0)
    reply = engine.reply(engine.session("s", PagingConfig()), "the locker code is 42")
    assert engine.caches["s"].repair_tokens == 8 and reply.paging["kv"]["repaired_tokens"] == 0  # nothing to splice yet
