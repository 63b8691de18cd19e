"""The check that a KV restore is exact, shared by the engine tests: the logits after
restoring a prompt's known prefix against those of computing the whole prompt."""


def restore_error(engine, kv, ids: list[int]) -> tuple[int, float]:
    """How many tokens `kv` restored for `ids`, and the largest logit difference from a
    full recompute at the last position."""
    import torch

    cache, reused = kv.cache_for(ids)
    with torch.no_grad():
        restored = engine.model(torch.tensor([ids[reused:]]), past_key_values=cache).logits[0, -1]
        full = engine.model(torch.tensor([ids])).logits[0, -1]
    return reused, (restored - full).abs().max().item()
