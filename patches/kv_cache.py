"""KV-cache manager for the transformers engine: restore instead of recompute.

A paged prompt changes in the middle when pages are evicted or recalled, and returns to
layouts it has had before. The manager snapshots the KV of a prompt at its segment
boundaries (page ends, the end of the recent turns) into a host pool, chunk by chunk as
vLLM's prefix cache does with blocks: the chunk for tokens [a, b) is keyed by a hash of
all tokens before b, so it is only ever reused after exactly the same tokens, and a
prefix is restored by following its chain of chunks. That is *exact*: the logits after a
restore equal those of a full recompute.

`splice` mode (opt-in, approximate) also reuses a segment's KV at a new position after a
different prefix, re-rotating its keys with RoPE (InfLLM/ArkVale-style). Its values, and
the keys' content, still carry the old context, so it is not equal to a recompute:
`splice_divergence` measures by how much.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, tokens, dim]


@dataclass
class KVStats:
    device_bytes: int = 0  # the live cache
    host_bytes: int = 0  # the snapshot pool
    chunks: int = 0
    restores: int = 0
    restored_tokens: int = 0  # served from the pool or the live cache
    recomputed_tokens: int = 0  # left for the model to compute
    spliced_tokens: int = 0  # reused at a new position (splice mode only)


@dataclass
class _Chunk:
    key: bytes  # identifies every token before `end`
    start: int
    end: int
    parent: bytes | None  # key of the prefix before `start`
    layers: Layers  # on the host

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


def prefix_keys(ids: Sequence[int], positions: Sequence[int]) -> dict[int, bytes]:
    """A key per position p identifying ids[:p] (SHA-1 of the token ids)."""
    raw = array("q", ids).tobytes()
    return {p: hashlib.sha1(raw[: 8 * p]).digest() for p in positions}


def _layers(cache: DynamicCache) -> Layers:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _nbytes(layers: Layers) -> int:
    return sum(k.nbytes + v.nbytes for k, v in layers)


class KVCacheManager:
    def __init__(self, model, mode: str = "exact", host_limit_bytes: int | None = None):
        if mode not in ("exact", "splice"):
            raise ValueError(f"mode must be 'exact' or 'splice', got {mode!r}")
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"KV restore needs full-attention layers only, this model has {sorted(layer_types)}")
        self.model, self.mode, self.host_limit = model, mode, host_limit_bytes
        self.device = next(model.parameters()).device
        self.pin = self.device.type == "cuda"  # pinned host memory makes host-to-device copies fast
        self.pool: OrderedDict[bytes, _Chunk] = OrderedDict()  # LRU order
        self.segments: dict[bytes, _Chunk] = {}  # splice mode: chunks by their own tokens
        self.boundaries: set[int] = set()  # every boundary position ever stored
        self.live: tuple[list[int], DynamicCache] | None = None
        self._stats = KVStats()

    # --- restore --------------------------------------------------------------------------

    def cache_for(self, ids: Sequence[int], boundaries: Sequence[int] = ()) -> tuple[DynamicCache, int]:
        """A cache holding the KV of the longest known prefix of `ids` (at least the last
        token is left to compute), and that prefix's length. `boundaries` (segment ends of
        `ids`) let splice mode reuse segments after the exact prefix."""
        ids = list(ids)
        limit = len(ids) - 1
        live = self._live_prefix(ids, limit)
        restored, layers = self._pool_prefix(ids, limit)
        if live[0] >= restored:
            restored, layers = live
        if self.mode == "splice":
            layers, spliced = self._splice(ids, layers, restored, sorted(b for b in boundaries if restored < b <= limit))
            self._stats.spliced_tokens += spliced - restored
            restored = spliced
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k.to(self.device, non_blocking=True), v.to(self.device, non_blocking=True), i)
        self._stats.restores += restored > 0
        self._stats.restored_tokens += restored
        self._stats.recomputed_tokens += len(ids) - restored
        return cache, restored

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

    def _pool_prefix(self, ids: list[int], limit: int) -> tuple[int, Layers]:
        keys = prefix_keys(ids, [b for b in self.boundaries if b <= limit])
        for end in sorted(keys, reverse=True):
            chain = self._chain(keys[end])
            if chain:
                for chunk in chain:
                    self.pool.move_to_end(chunk.key)
                return end, self._concat(chain)
        return 0, []

    def _chain(self, key: bytes) -> list[_Chunk]:
        """The chunks from position 0 to the one keyed `key`, or [] if a link is missing."""
        chain = []
        while key is not None:
            chunk = self.pool.get(key)
            if chunk is None:
                return []
            chain.append(chunk)
            key = chunk.parent
        return chain[::-1]

    def _concat(self, chain: list[_Chunk]) -> Layers:
        return [
            (torch.cat([c.layers[i][0] for c in chain], -2), torch.cat([c.layers[i][1] for c in chain], -2))
            for i in range(len(chain[0].layers))
        ]

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
            if key in self.pool:
                self.pool.move_to_end(key)
            else:
                host = [self._to_host(k[..., start:end, :], v[..., start:end, :]) for k, v in layers]
                chunk = _Chunk(key, start, end, keys[start] if start else None, host)
                self.pool[key] = chunk
                self._stats.host_bytes += chunk.nbytes
                if self.mode == "splice":
                    self.segments.setdefault(prefix_keys(ids[start:end], [end - start])[end - start], chunk)
            self.boundaries.add(end)
            start = end
        self.live = (ids, cache)
        self._stats.device_bytes = _nbytes(layers)
        self._evict()

    def _to_host(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = k.detach().to("cpu", copy=True), v.detach().to("cpu", copy=True)
        return (k.pin_memory(), v.pin_memory()) if self.pin else (k, v)

    def _evict(self) -> None:
        """Drop least recently used chunks beyond the host limit (a restore then stops at
        the first missing link and the rest is recomputed: slower, never wrong)."""
        while self.host_limit is not None and self._stats.host_bytes > self.host_limit and self.pool:
            _, chunk = self.pool.popitem(last=False)
            self._stats.host_bytes -= chunk.nbytes
            self.segments = {k: c for k, c in self.segments.items() if c is not chunk}

    def stats(self) -> KVStats:
        self._stats.chunks = len(self.pool)
        return KVStats(**self._stats.__dict__)

    # --- splice (approximate) -------------------------------------------------------------

    def _splice(self, ids: list[int], layers: Layers, at: int, ends: list[int]) -> tuple[Layers, int]:
        """Extend an exact prefix with stored segments found at other positions."""
        pieces = [layers] if at else []
        for end in ends:
            key = prefix_keys(ids[at:end], [end - at])[end - at]
            chunk = self.segments.get(key)
            if chunk is None:
                break
            pieces.append([(rotate_keys(self.model, k, at - chunk.start), v) for k, v in chunk.layers])
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
