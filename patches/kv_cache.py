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
`splice_divergence` measures by how much. `repair_tokens` recomputes the first tokens of
each spliced segment in the new context instead (EPIC/LegoLink's recipe, which is enough
for chunks computed in isolation, whose first tokens turn into attention sinks).
Exact stays the default: on the default model no repair of 16 to 256 tokens (half a
page) brought the spliced answers back to a recompute's (`bench kv --default-model`, README).
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
    spliced_tokens: int = 0  # reused at a new position (splice mode only; counted in restored_tokens)
    repaired_tokens: int = 0  # of spliced segments, recomputed in the new context instead (counted in recomputed_tokens)
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
    tokens, and per layer the event after which its copy has landed (None: already there).
    `repaired` of those tokens were computed by the restore itself (splice repair), not reused."""

    tokens: int
    layers: Layers
    ready: list = field(default_factory=list)
    config: object = None
    repaired: int = 0

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
    session of an engine; without one, a private pool of `host_limit_bytes`). In splice
    mode, `repair_tokens` of each spliced segment are recomputed rather than reused."""

    def __init__(
        self, model, mode: str = "exact", host_limit_bytes: int | None = None, pool: HostKVPool | None = None, repair_tokens: int = 0
    ):
        if mode not in ("exact", "splice"):
            raise ValueError(f"mode must be 'exact' or 'splice', got {mode!r}")
        if repair_tokens < 0 or (repair_tokens and mode != "splice"):
            raise ValueError(f"repair_tokens must be >= 0, and is for splice mode only; got {repair_tokens} in {mode} mode")
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"KV restore needs full-attention layers only, this model has {sorted(layer_types)}")
        self.model, self.mode, self.repair_tokens = model, mode, repair_tokens
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
        repaired = 0
        if self.mode == "splice":
            self.copies.synchronize()  # splicing reads host buffers the side stream may still be writing
            layers, spliced, repaired = self._splice(ids, layers, restored, sorted(b for b in boundaries if restored < b <= limit))
            ready = []  # the splice waited for the copies
            self._stats.spliced_tokens += spliced - restored - repaired
            self._stats.repaired_tokens += repaired
            restored = spliced
        reused = restored - repaired
        self._stats.restores += reused > 0
        self._stats.restored_tokens += reused
        self._stats.recomputed_tokens += len(ids) - reused
        return Restore(restored, layers, ready, self.model.config, repaired)

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

    def drop_live(self) -> None:
        """Free the live cache; the snapshots in the pool stay, and restore what they hold."""
        self.live = None
        self._stats.device_bytes = 0

    def close(self) -> None:
        """Drop the live cache and free this session's chunks in the pool."""
        self.drop_live()
        self.boundaries.clear()
        self.pool.release(self.owner)

    # --- splice (approximate) -------------------------------------------------------------

    @torch.no_grad()
    def _splice(self, ids: list[int], layers: Layers, at: int, ends: list[int]) -> tuple[Layers, int, int]:
        """Extend an exact prefix of `at` tokens with stored segments found at other
        positions, up to the first end none is found for. The first `repair_tokens` of
        each segment are computed by the model after what precedes them here; the rest is
        the stored KV, keys re-rotated. Returns the layers, where they end, and how many
        tokens were repaired."""
        found = []
        for end in ends:
            chunk = self.pool.segment(self.owner, prefix_keys(ids[at:end], [end - at])[end - at])
            if chunk is None:
                break
            found.append((at, chunk))
            at = end
        if not found:
            return layers, at, 0
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        repaired = 0
        for start, chunk in found:
            n = min(self.repair_tokens, chunk.end - chunk.start)
            if n:  # appends the n tokens' new KV to the cache
                positions = torch.arange(start, start + n, device=self.device)[None]
                self.model(torch.tensor([ids[start : start + n]], device=self.device), past_key_values=cache, position_ids=positions, logits_to_keep=1)
            for i in range(len(chunk.host)):
                k, v = chunk.layer(i)
                cache.update(rotate_keys(self.model, k[..., n:, :].to(self.device), start - chunk.start), v[..., n:, :].to(self.device), i)
            repaired += n
        return _layers(cache), at, repaired


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
def splice_divergence(
    model, before: Sequence[int], segment: Sequence[int], context: Sequence[int], after: Sequence[int], repairs: Sequence[int] = (0,), steps: int = 16
) -> list[dict]:
    """How far splicing is from recomputing, through a splice-mode manager: the segment's
    KV is stored after `before`, then restored after `context` instead, with each of
    `repairs` as the manager's `repair_tokens`; `after` follows. Per repair: the max
    absolute logit difference and KL(recompute || splice) at the next token, and the
    share of `steps` greedy tokens on which both agree."""
    device = next(model.parameters()).device
    tensor = lambda ids: torch.tensor([list(ids)], device=device)  # noqa: E731
    stored, full, offset = [*before, *segment], [*context, *segment, *after], len(context) + len(segment)
    sources = []
    for ids, ends in ((stored, [len(before), len(stored)]), (list(context), [len(context)])):
        cache = DynamicCache(config=model.config)
        model(tensor(ids), past_key_values=cache)
        sources.append((ids, cache, ends))
    exact = DynamicCache(config=model.config)
    recompute = model(tensor(full), past_key_values=exact).logits[0, -1]
    reference = _greedy(model, exact, recompute, steps)
    p = torch.log_softmax(recompute, -1)
    rows = []
    for repair in repairs:
        manager = KVCacheManager(model, "splice", repair_tokens=repair)
        for ids, cache, ends in sources:
            manager.remember(ids, cache, ends)
        manager.live = None  # the context from the pool, the segment spliced after it
        restore = manager.start_restore(full, [len(context), offset])
        if restore.tokens != offset:
            raise RuntimeError(f"the segment was not spliced: restored {restore.tokens} tokens of {offset}")
        spliced = restore.cache()
        splice = model(tensor(after), past_key_values=spliced).logits[0, -1]
        q = torch.log_softmax(splice, -1)
        greedy = _greedy(model, spliced, splice, steps)
        rows.append({
            "repair_tokens": repair,
            "repaired_tokens": restore.repaired,
            "max_logit_diff": (recompute - splice).abs().max().item(),
            "kl": torch.sum(p.exp() * (p - q)).item(),
            "greedy_agreement": sum(a == b for a, b in zip(reference, greedy)) / steps,
        })
    return rows


def _greedy(model, cache: DynamicCache, logits: torch.Tensor, steps: int) -> list[int]:
    """`steps` greedy tokens from `logits` on, the cache extended as they are fed back."""
    tokens = [logits.argmax().item()]
    while len(tokens) < steps:
        tokens.append(model(torch.tensor([[tokens[-1]]], device=logits.device), past_key_values=cache).logits[0, -1].argmax().item())
    return tokens
