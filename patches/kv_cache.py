"""KV-cache manager for the transformers engine: restore instead of recompute.

A paged prompt changes in the middle when pages are evicted or recalled, and returns to
layouts it has had before. A session's manager snapshots the KV of a prompt at its
segment boundaries (page ends, the end of the recent turns) into the engine's host pool
(`kv_pool.py`), chunk by chunk, each keyed by a hash of all tokens before its end, and
restores a prefix by following its chain of chunks. That is *exact*: the logits after a
restore equal those of a full recompute.

On CUDA each chunk is one contiguous buffer of pinned memory laid out layer-major, so
that a layer of a chunk moves in a single copy; the copies run on the pool's side stream,
and a restore is a handle (`Restore`) whose layers the compute stream waits for one by
one, only when the model reaches them: a recalled page streams in while the new turn's
first layers already compute. On CPU the same code runs with plain memory and
synchronous copies.

`splice` mode (opt-in, approximate) also reuses a segment's KV at a new position after a
different prefix, re-rotating its keys with RoPE (InfLLM/ArkVale-style). Its values, and
the keys' content, still carry the old context, so it is not equal to a recompute:
`splice_divergence` measures by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .kv_pool import Chunk, HostKVPool, PoolStats, prefix_keys

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, tokens, dim]


@dataclass
class KVStats:
    device_bytes: int = 0  # the live cache
    host_bytes: int = 0  # held by this session's chunks in the pool
    chunks: int = 0  # this session's
    restores: int = 0
    restored_tokens: int = 0  # served from the pool or the live cache
    recomputed_tokens: int = 0  # left for the model to compute
    spliced_tokens: int = 0  # reused at a new position (splice mode only)
    pool: PoolStats = field(default_factory=PoolStats)  # every session's chunks and the host memory under them


class _RestoredLayer(DynamicLayer):
    """A cache layer holding restored KV whose copy may still be in flight: the compute
    stream waits for it when the model first uses the layer, not before."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, ready: torch.cuda.Event | None):
        super().__init__()
        self.keys, self.values, self.ready = keys, values, ready
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)
            self.ready = None
        return super().update(key_states, value_states, *args, **kwargs)


@dataclass
class Restore:
    """A restore started by `KVCacheManager.start_restore`: the KV of the first `tokens`
    tokens, and per layer the event after which its copy has landed (None: already there)."""

    tokens: int
    layers: Layers
    ready: list = field(default_factory=list)
    config: object = None

    def cache(self) -> DynamicCache:
        """A cache for the model; each layer waits for its copy when the model reaches it."""
        cache = DynamicCache(config=self.config)
        for i, (k, v) in enumerate(self.layers):
            cache.layers[i] = _RestoredLayer(k, v, self.ready[i] if self.ready else None)
        return cache

    def wait(self) -> None:
        """Block the host until every copy has landed (benchmarks; tests)."""
        for event in self.ready:
            if event is not None:
                event.synchronize()


def _layers(cache: DynamicCache) -> Layers:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _nbytes(layers: Layers) -> int:
    return sum(k.nbytes + v.nbytes for k, v in layers)


def _token_major(k: torch.Tensor) -> torch.Tensor:
    """[batch, heads, tokens, dim] -> [tokens, batch, heads, dim] (a view)."""
    return k.permute(2, 0, 1, 3)


class KVCacheManager:
    """One session's KV: its live cache, and its snapshots in `pool` (shared by every
    session of an engine; without one, a private pool of `host_limit_bytes`)."""

    def __init__(self, model, mode: str = "exact", host_limit_bytes: int | None = None, pool: HostKVPool | None = None):
        if mode not in ("exact", "splice"):
            raise ValueError(f"mode must be 'exact' or 'splice', got {mode!r}")
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"KV restore needs full-attention layers only, this model has {sorted(layer_types)}")
        self.model, self.mode = model, mode
        self.device = next(model.parameters()).device
        if pool is not None and host_limit_bytes is not None:
            raise ValueError("host_limit_bytes sizes a private pool: a shared pool has its own limit")
        self.pool = pool if pool is not None else HostKVPool(self.device, host_limit_bytes)
        if self.pool.device.type != self.device.type:
            raise ValueError(f"the pool is for {self.pool.device.type}, the model is on {self.device.type}")
        self.owner = self.pool.new_owner()
        self.copies = self.pool.copies  # the pool's: its ranges are reused safely only if every copy runs there
        self.boundaries: set[int] = set()  # every boundary position ever stored
        self.live: tuple[list[int], DynamicCache] | None = None
        self._stats = KVStats()

    # --- restore --------------------------------------------------------------------------

    def cache_for(self, ids: Sequence[int], boundaries: Sequence[int] = ()) -> tuple[DynamicCache, int]:
        """A cache holding the KV of the longest known prefix of `ids` (at least the last
        token is left to compute), and that prefix's length. `boundaries` (segment ends of
        `ids`) let splice mode reuse segments after the exact prefix."""
        restore = self.start_restore(ids, boundaries)
        return restore.cache(), restore.tokens

    def start_restore(self, ids: Sequence[int], boundaries: Sequence[int] = ()) -> Restore:
        """Start bringing the longest known prefix of `ids` to the device and return at
        once: the copies run on the side stream while the caller goes on (tokenizing,
        queueing the new tokens' prefill), and `Restore.cache()` hands them to the model."""
        ids = list(ids)
        limit = len(ids) - 1
        live = self._live_prefix(ids, limit)
        chain = self._pool_prefix(ids, limit)
        restored = chain[-1].end if chain else 0
        if live[0] >= restored:
            restored, layers, ready = live[0], live[1], []
        else:
            layers, ready = self._copy_in(chain)
        if self.mode == "splice":
            self.copies.synchronize()  # splicing reads host buffers the side stream may still be writing
            layers, spliced = self._splice(ids, layers, restored, sorted(b for b in boundaries if restored < b <= limit))
            ready = []  # the splice waited for the copies
            self._stats.spliced_tokens += spliced - restored
            restored = spliced
        self._stats.restores += restored > 0
        self._stats.restored_tokens += restored
        self._stats.recomputed_tokens += len(ids) - restored
        return Restore(restored, layers, ready, self.model.config)

    def _live_prefix(self, ids: list[int], limit: int) -> tuple[int, Layers]:
        if self.live is None:
            return 0, []
        live_ids, cache = self.live
        n = 0
        for a, b in zip(live_ids, ids[:limit]):
            if a != b:
                break
            n += 1
        return n, [(k[..., :n, :], v[..., :n, :]) for k, v in _layers(cache)] if n else []

    def _pool_prefix(self, ids: list[int], limit: int) -> list[Chunk]:
        keys = prefix_keys(ids, [b for b in self.boundaries if b <= limit])
        for end in sorted(keys, reverse=True):
            chain = self.pool.chain(self.owner, keys[end])
            if chain:
                self.pool.touch(chain)
                return chain
        return []

    def _copy_in(self, chain: list[Chunk]) -> tuple[Layers, list]:
        """Queue the copy of a chain of chunks into one device buffer: one copy per chunk
        per layer, each layer followed by an event, so layer 0 can be used while the
        others are still in flight. Returns per-layer views and events."""
        if not chain:
            return [], []
        first = chain[0].host
        n_layers, tokens = first.shape[0], chain[-1].end
        with self.copies.active():
            buffer = torch.empty((n_layers, tokens, *first.shape[2:]), dtype=first.dtype, device=self.device)
            ready = []
            for i in range(n_layers):
                for chunk in chain:
                    buffer[i, chunk.start : chunk.end].copy_(chunk.host[i], non_blocking=True)
                ready.append(self.copies.mark())
        self.copies.to_compute(buffer)
        kv = buffer.permute(0, 2, 3, 4, 1, 5)  # [layers, 2, batch, heads, tokens, dim]
        return [(kv[i, 0], kv[i, 1]) for i in range(n_layers)], ready

    # --- snapshot -------------------------------------------------------------------------

    def remember(self, ids: Sequence[int], cache: DynamicCache, boundaries: Sequence[int]) -> None:
        """Snapshot the KV of `ids` (held in `cache`, possibly followed by generated
        tokens) at the given boundaries, and keep `cache` as the live cache."""
        ids = list(ids)
        ends = sorted({b for b in boundaries if 0 < b <= len(ids)})
        keys = prefix_keys(ids, [0, *ends])
        layers = _layers(cache)
        start = 0
        for end in ends:
            key = keys[end]
            if (held := self.pool.get(self.owner, key)) is not None:
                self.pool.touch([held])
            else:
                segment = prefix_keys(ids[start:end], [end - start])[end - start] if self.mode == "splice" else None
                self._store(key, start, end, keys[start] if start else None, segment, layers)
            self.boundaries.add(end)
            start = end
        self.live = (ids, cache)
        self._stats.device_bytes = _nbytes(layers)

    def _store(self, key: bytes, start: int, end: int, parent: bytes | None, segment: bytes | None, layers: Layers) -> None:
        """Copy tokens [start, end) of every layer into one pool range: gathered on the
        device into the chunk's layout, then one device-to-host copy on the side stream."""
        k0 = layers[0][0]
        shape = (len(layers), end - start, 2, k0.shape[0], k0.shape[1], k0.shape[3])
        chunk = self.pool.store(self.owner, key, start, end, parent, segment, shape, k0.dtype)
        if chunk is None:
            return  # larger than the whole pool: left to recompute
        host = chunk.host
        on_cpu = k0.device.type == "cpu"
        staging = host if on_cpu else torch.empty(shape, dtype=k0.dtype, device=k0.device)
        for i, (k, v) in enumerate(layers):
            torch.stack((_token_major(k[..., start:end, :]), _token_major(v[..., start:end, :])), 1, out=staging[i])
        if not on_cpu:
            self.copies.after_compute()
            with self.copies.active():
                host.copy_(staging, non_blocking=True)
            self.copies.to_copies(staging)

    def synchronize(self) -> None:
        """Wait for every queued copy (before reading the pool from the host)."""
        self.copies.synchronize()

    def stats(self) -> KVStats:
        chunks = self.pool.chunks(self.owner)
        return replace(self._stats, host_bytes=sum(c.nbytes for c in chunks), chunks=len(chunks), pool=self.pool.stats())

    def close(self) -> None:
        """Drop the live cache and free this session's chunks in the pool."""
        self.live = None
        self.boundaries.clear()
        self._stats.device_bytes = 0
        self.pool.release(self.owner)

    # --- splice (approximate) -------------------------------------------------------------

    def _splice(self, ids: list[int], layers: Layers, at: int, ends: list[int]) -> tuple[Layers, int]:
        """Extend an exact prefix with stored segments found at other positions."""
        pieces = [layers] if at else []
        for end in ends:
            key = prefix_keys(ids[at:end], [end - at])[end - at]
            chunk = self.pool.segment(self.owner, key)
            if chunk is None:
                break
            moved = [chunk.layer(i) for i in range(len(chunk.host))]
            pieces.append([(rotate_keys(self.model, k.to(self.device), at - chunk.start), v.to(self.device)) for k, v in moved])
            at = end
        if not pieces:
            return [], 0
        return [(torch.cat([p[i][0] for p in pieces], -2), torch.cat([p[i][1] for p in pieces], -2)) for i in range(len(pieces[0]))], at


def rotate_keys(model, keys: torch.Tensor, delta: int) -> torch.Tensor:
    """Move post-RoPE keys by `delta` positions: RoPE rotations compose, so rotating by
    delta turns a key rotated for position p into one for p + delta."""
    if delta == 0:
        return keys
    rope = model.model.rotary_emb
    position = torch.tensor([[delta]], device=keys.device)
    cos, sin = rope(keys.to(torch.float32), position)  # [1, 1, head_dim]
    cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat([-keys[..., half:], keys[..., :half]], -1)
    return keys * cos + rotated_half * sin


@torch.no_grad()
def splice_divergence(model, before: Sequence[int], segment: Sequence[int], context: Sequence[int], after: Sequence[int], steps: int = 16) -> dict:
    """How far splicing is from recomputing. The segment's KV is computed after `before`,
    then reused (re-rotated) after `context` instead; `after` follows. Returns the max
    absolute logit difference and KL(recompute || splice) at the next token, and the share
    of `steps` greedy tokens on which both agree."""
    device = next(model.parameters()).device
    source = DynamicCache(config=model.config)
    model(torch.tensor([list(before) + list(segment)], device=device), past_key_values=source)
    seg = [(k[..., len(before) :, :], v[..., len(before) :, :]) for k, v in _layers(source)]
    spliced = DynamicCache(config=model.config)
    model(torch.tensor([list(context)], device=device), past_key_values=spliced)
    for i, (k, v) in enumerate(seg):
        spliced.update(rotate_keys(model, k, len(context) - len(before)), v, i)
    full_ids = list(context) + list(segment) + list(after)
    recompute = model(torch.tensor([full_ids], device=device)).logits[0, -1]
    offset = len(context) + len(segment)
    splice = model(
        torch.tensor([list(after)], device=device), past_key_values=spliced,
        position_ids=torch.arange(offset, offset + len(after), device=device)[None],
    ).logits[0, -1]
    p, q = torch.log_softmax(recompute, -1), torch.log_softmax(splice, -1)
    agree = _greedy_agreement(model, full_ids, spliced, recompute, splice, offset + len(after), steps)
    return {
        "max_logit_diff": (recompute - splice).abs().max().item(),
        "kl": torch.sum(p.exp() * (p - q)).item(),
        "greedy_agreement": agree,
    }


def _greedy_agreement(model, ids, spliced: DynamicCache, recompute, splice, position: int, steps: int) -> float:
    device = recompute.device
    exact = DynamicCache(config=model.config)
    model(torch.tensor([ids], device=device), past_key_values=exact)
    a, b, same = recompute.argmax().item(), splice.argmax().item(), 0
    for i in range(steps):
        same += a == b
        a = model(torch.tensor([[a]], device=device), past_key_values=exact).logits[0, -1].argmax().item()
        b = model(torch.tensor([[b]], device=device), past_key_values=spliced, position_ids=torch.tensor([[position + i]], device=device)).logits[0, -1].argmax().item()
    return same / steps
