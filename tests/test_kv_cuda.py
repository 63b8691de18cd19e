"""The KV-cache manager on CUDA: bf16 exact restores, the pinned pool, side-stream copies.
Skipped without a GPU (CI); run them where one is lent."""

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from paged_context.patches.kv_cache import KVCacheManager  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    with torch.device("cuda"):
        return LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()


def ids_of(seed, n):
    return torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def forward(model, ids, cache=None):
    with torch.no_grad():
        return model(torch.tensor([ids], device="cuda"), past_key_values=cache).logits[0, -1].float()


def remembered(model, ids, ends, **kw):
    manager = KVCacheManager(model, **kw)
    cache = DynamicCache(config=model.config)
    forward(model, ids, cache)
    manager.remember(ids, cache, ends)
    manager.live = None  # later restores come from the host pool
    return manager, cache


def test_bf16_restore_matches_a_full_recompute(model):
    ids = ids_of(0, 600)
    manager, _ = remembered(model, ids, [64, 576, 600])
    turn = ids + ids_of(1, 40)
    cache, n = manager.cache_for(turn)
    assert n == 600
    restored, full = forward(model, turn[n:], cache), forward(model, turn)
    torch.testing.assert_close(restored, full, atol=3e-2, rtol=2e-2)  # bf16: a few units in the last place
    assert restored.argmax() == full.argmax()


def test_the_host_pool_is_pinned_and_reused(model):
    manager, _ = remembered(model, ids_of(2, 300), [100, 300], host_limit_bytes=1 << 20)
    assert manager.stats().pool.pinned and all(c.host.is_pinned() for c in manager.pool.chunks(manager.owner))
    for seed in range(3, 8):
        ids = ids_of(seed, 300)
        cache = DynamicCache(config=model.config)
        forward(model, ids, cache)
        manager.remember(ids, cache, [100, 300])
    stats = manager.stats()
    assert stats.pool.allocations == 1 and stats.host_bytes <= stats.pool.reserved_bytes <= 1 << 20


def test_restore_runs_on_the_side_stream_and_lands_exactly(model):
    ids = ids_of(9, 2048)
    manager, cache = remembered(model, ids, [64, 2048])
    manager.synchronize()
    compute = torch.cuda.current_stream()
    restore = manager.start_restore(ids + [5])
    assert manager.copies.stream != compute and len(restore.ready) == model.config.num_hidden_layers
    assert all(isinstance(e, torch.cuda.Event) for e in restore.ready)
    restore.wait()
    for (k, v), layer in zip(restore.layers, cache.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)  # bit-exact copies


def test_a_started_restore_overlaps_the_turn_and_stays_exact(model):
    ids = ids_of(10, 1024)
    manager, _ = remembered(model, ids, [64, 1024])
    turn = ids + ids_of(11, 32)
    restore = manager.start_restore(turn)  # no host wait: the model waits per layer on the events
    restored = forward(model, turn[restore.tokens :], restore.cache())
    torch.testing.assert_close(restored, forward(model, turn), atol=3e-2, rtol=2e-2)
