"""Host memory for KV snapshots: one pool of chunks for every session of an engine.

The KV-cache manager (`kv_cache.py`) snapshots a prompt's KV chunk by chunk, as vLLM's
prefix cache does with blocks: the chunk for tokens [a, b) is keyed by a hash of all
tokens before b (`prefix_keys`), so it is only ever reused after exactly the same
tokens, and a prefix is restored by following its chain of chunks. This module holds the
chunks and the memory under them, apart from the transformers side, as vLLM's
`block_pool.py` is apart from its `kv_cache_manager.py`.

One pool (`HostKVPool`) serves every session under one byte budget and one LRU order: an
idle session's old snapshots make room for a busy session's, and a closed session gives
its memory back. Chunks are stored under an owner (a session) and found only by that
owner: no KV is shared across sessions, so restore timing tells one tenant nothing about
another's prompts.

Restoring should cost what moving the bytes costs (ANCHORS.md section 5: pinned copies
run at ~55 GB/s on an H100, pageable ones ~8x slower). So on CUDA the host memory is
pinned, allocated in a few slabs and reused (`HostPool`), and every copy into or out of
it runs on the pool's one side stream (`CopyStream`), in order: that is what makes
reusing a range safe while copies are still in flight. Torch only; no transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch


class HostPool:
    """Host memory for KV snapshots: a few large slabs, allocated up to a byte limit and
    carved into ranges (first fit, neighbours merged on release). Pinning memory is slow
    and pinned memory is what makes host-to-device copies fast, so it is pinned once and
    reused rather than allocated per snapshot."""

    ALIGN = 512  # range offsets: any dtype can view them, and DMA likes aligned starts

    def __init__(self, limit_bytes: int | None, pin: bool, slab_bytes: int):
        self.limit, self.pin, self.slab_bytes = limit_bytes, pin, slab_bytes
        self.slabs: list[torch.Tensor | None] = []  # uint8; None once given back, until a new slab takes the place
        self.free: list[list[tuple[int, int]]] = []  # per slab: (offset, size), sorted by offset
        self.reserved = 0
        self.allocations = 0

    def alloc(self, nbytes: int) -> tuple[int, int, torch.Tensor] | None:
        """A (slab, offset, uint8 view) range of `nbytes`, or None when the limit leaves no
        room (the caller evicts a chunk and asks again)."""
        size = -(-nbytes // self.ALIGN) * self.ALIGN
        slot = self._fit(size, nbytes)
        if slot is None:
            if not self._grow(size):
                self.release_empty_slabs()  # a range larger than any slab: make room for a slab of its size
                if not self._grow(size):
                    return None
            slot = self._fit(size, nbytes)
        return slot

    def _fit(self, size: int, nbytes: int) -> tuple[int, int, torch.Tensor] | None:
        for s, ranges in enumerate(self.free):
            for i, (offset, free) in enumerate(ranges):
                if free >= size:
                    ranges[i : i + 1] = [(offset + size, free - size)] if free > size else []
                    return s, offset, self.slabs[s][offset : offset + nbytes]
        return None

    def release(self, slab: int, offset: int, nbytes: int) -> None:
        size = -(-nbytes // self.ALIGN) * self.ALIGN
        ranges = self.free[slab]
        ranges.append((offset, size))
        ranges.sort()
        merged = [ranges[0]]
        for start, length in ranges[1:]:
            if merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self.free[slab] = merged

    def _grow(self, size: int) -> bool:
        room = float("inf") if self.limit is None else self.limit - self.reserved
        if room < size:
            return False
        slab_size = int(max(size, min(self.slab_bytes, room)))
        slab = torch.empty(slab_size, dtype=torch.uint8, pin_memory=self.pin)
        s = next((s for s, held in enumerate(self.slabs) if held is None), len(self.slabs))
        if s == len(self.slabs):
            self.slabs.append(None)
            self.free.append([])
        self.slabs[s], self.free[s] = slab, [(0, slab_size)]
        self.reserved += slab_size
        self.allocations += 1
        return True

    def release_empty_slabs(self, keep: int = 0) -> None:
        """Give back the slabs no range is carved from, but `keep` of them: pinning is slow,
        so a spare one stays warm for the next session."""
        for s, slab in enumerate(self.slabs):
            if slab is not None and self.free[s] == [(0, slab.numel())]:
                if keep:
                    keep -= 1
                    continue
                self.reserved -= slab.numel()
                self.slabs[s], self.free[s] = None, []


class CopyStream:
    """Where host<->device copies run: a side CUDA stream, so they overlap the model's
    compute, ordered with it by events. On CPU there is nothing to overlap with: copies
    run inline and every method is a no-op."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def active(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def after_compute(self) -> None:
        """Make later copies wait for the compute queued so far (the KV they read)."""
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))

    def mark(self) -> torch.cuda.Event | None:
        """An event after the copies queued so far."""
        return self.stream.record_event() if self.stream is not None else None

    def to_compute(self, tensor: torch.Tensor) -> None:
        """`tensor` was allocated on the side stream and is read by the compute stream:
        keep the allocator from reusing its memory before that reading is done."""
        if self.stream is not None:
            tensor.record_stream(torch.cuda.current_stream(self.stream.device))

    def to_copies(self, tensor: torch.Tensor) -> None:
        """The same for a compute-stream tensor read by the side stream."""
        if self.stream is not None:
            tensor.record_stream(self.stream)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()


@dataclass
class Chunk:
    owner: int  # the session that stored it, the only one that finds it
    key: bytes  # identifies every token before `end`
    start: int
    end: int
    parent: bytes | None  # key of the prefix before `start`
    segment: bytes | None  # splice mode: identifies its own tokens, so it can be found after another prefix
    host: torch.Tensor  # [layers, tokens, 2 (key, value), batch, heads, dim], one contiguous range of the pool
    slot: tuple[int, int]  # (slab, offset) in the pool

    @property
    def nbytes(self) -> int:
        return self.host.nbytes

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values as [batch, heads, tokens, dim] views."""
        kv = self.host[i].permute(1, 2, 3, 0, 4)  # [2, batch, heads, tokens, dim]
        return kv[0], kv[1]


def prefix_keys(ids: Sequence[int], positions: Sequence[int]) -> dict[int, bytes]:
    """A key per position p identifying ids[:p] (SHA-1 of the token ids)."""
    raw = array("q", ids).tobytes()
    return {p: hashlib.sha1(raw[: 8 * p]).digest() for p in positions}


@dataclass
class PoolStats:
    held_bytes: int = 0  # by chunks, every session's
    reserved_bytes: int = 0  # host memory set aside (pinned on CUDA), used or free
    limit_bytes: int | None = None  # the budget for all sessions together
    slabs: int = 0  # host allocations held now
    allocations: int = 0  # host allocations made so far: flat once the pool is warm, as ranges are reused
    pinned: bool = False
    chunks: int = 0
    owners: int = 0  # sessions holding chunks


@dataclass
class _Owned:
    """One owner's chunks: by prefix key, and in splice mode by their own tokens."""

    chunks: dict[bytes, Chunk] = field(default_factory=dict)
    segments: dict[bytes, Chunk] = field(default_factory=dict)


class HostKVPool:
    """The chunks of every session on one device, in one host memory budget: when it is
    reached, the least recently used chunk of any session goes first."""

    def __init__(self, device: torch.device | str, limit_bytes: int | None, slab_bytes: int = 256 << 20):
        self.device = torch.device(device)
        self.host = HostPool(limit_bytes, pin=self.device.type == "cuda", slab_bytes=slab_bytes)
        self.copies = CopyStream(self.device)
        self.lru: OrderedDict[tuple[int, bytes], Chunk] = OrderedDict()  # (owner, key), least recently used first
        self.owned: dict[int, _Owned] = {}  # only owners that hold chunks
        self._owner_ids = itertools.count()

    def new_owner(self) -> int:
        """An id to store chunks under: only the same id finds them."""
        return next(self._owner_ids)

    def get(self, owner: int, key: bytes) -> Chunk | None:
        owned = self.owned.get(owner)
        return owned.chunks.get(key) if owned else None

    def chain(self, owner: int, key: bytes) -> list[Chunk]:
        """The chunks from position 0 to the one keyed `key`, or [] if a link is missing."""
        chain = []
        while key is not None:
            chunk = self.get(owner, key)
            if chunk is None:
                return []
            chain.append(chunk)
            key = chunk.parent
        return chain[::-1]

    def segment(self, owner: int, key: bytes) -> Chunk | None:
        """The first chunk stored whose own tokens `key` identifies (splice mode)."""
        owned = self.owned.get(owner)
        return owned.segments.get(key) if owned else None

    def chunks(self, owner: int) -> list[Chunk]:
        owned = self.owned.get(owner)
        return list(owned.chunks.values()) if owned else []

    def touch(self, chunks: Iterable[Chunk]) -> None:
        """Mark chunks as just used: they are evicted last."""
        for chunk in chunks:
            self.lru.move_to_end((chunk.owner, chunk.key))

    def store(
        self, owner: int, key: bytes, start: int, end: int, parent: bytes | None, segment: bytes | None,
        shape: tuple[int, ...], dtype: torch.dtype,
    ) -> Chunk | None:
        """A new chunk with an empty host tensor of `shape` for the caller to fill, or None
        if it is larger than the whole pool. Least recently used chunks of any owner are
        evicted until it fits (a restore then stops at the first missing link and the rest
        is recomputed: slower, never wrong). Reusing an evicted range is safe while copies
        are in flight: every copy that reads or writes the pool runs on `copies`, in order."""
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        while (slot := self.host.alloc(nbytes)) is None and self.lru:
            self._drop(self.lru.popitem(last=False)[1])
        if slot is None:
            return None
        chunk = Chunk(owner, key, start, end, parent, segment, slot[2].view(dtype).view(shape), slot[:2])
        owned = self.owned.setdefault(owner, _Owned())
        owned.chunks[key] = self.lru[owner, key] = chunk
        if segment is not None:
            owned.segments.setdefault(segment, chunk)
        return chunk

    def _drop(self, chunk: Chunk) -> None:
        """Unregister a chunk already taken out of the LRU order, and free its range."""
        owned = self.owned[chunk.owner]
        del owned.chunks[chunk.key]
        if owned.segments.get(chunk.segment) is chunk:
            del owned.segments[chunk.segment]
        if not owned.chunks:
            del self.owned[chunk.owner]
        self.host.release(*chunk.slot, chunk.nbytes)

    def release(self, owner: int) -> None:
        """Free every chunk of `owner` (a closed session) and give back the host memory
        left empty, but one spare slab."""
        for chunk in self.chunks(owner):
            self._drop(self.lru.pop((owner, chunk.key)))
        self.host.release_empty_slabs(keep=1)

    def stats(self) -> PoolStats:
        return PoolStats(
            held_bytes=sum(c.nbytes for c in self.lru.values()),
            reserved_bytes=self.host.reserved,
            limit_bytes=self.host.limit,
            slabs=sum(slab is not None for slab in self.host.slabs),
            allocations=self.host.allocations,
            pinned=self.host.pin,
            chunks=len(self.lru),
            owners=len(self.owned),
        )
