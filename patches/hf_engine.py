"""The transformers engine: runs the rounds of `paged_context.answering` on a local model,
restoring each prompt's known prefix from the KV cache manager. CPU or one GPU; no vLLM.
Paging itself (what to render, which calls to serve) is the answering loop's."""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from paged_context.answering import Answering, Generated, Reply, Round, Sampling, TextStream
from paged_context.messages import Tools
from paged_context.session import Message, PagedSession, PagingConfig, Request
from paged_context.store import PageStore
from paged_context.templates import ChatTemplate

from .hf_generation import AnswerStream, LogitBias, RecallConstraint, schema_constraint
from .kv_cache import KVCacheManager
from .kv_pool import HostKVPool

# As vLLM (its _SAMPLING_EPS): a temperature under this decodes greedily. Dividing the
# logits by 1e-165 makes them infinite, and sampling from that raised a server error.
GREEDY_BELOW = 1e-5


class HFEngine:
    def __init__(
        self,
        model: str | Path | None = None,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        kv_mode: str = "exact",
        max_new_tokens: int = 256,
        repetition_penalty: float = 1.1,
        max_recall_rounds: int = 2,
        kv_host_limit_bytes: int | None = 1 << 30,
        kv_repair_tokens: int = 0,
        kv_live_sessions: int = 8,
    ):
        """`max_new_tokens`, `repetition_penalty`: the sampling defaults of `reply`.
        `kv_mode` and `kv_repair_tokens` are each session's `KVCacheManager` mode and
        `repair_tokens`. `kv_host_limit_bytes`: the host pool of KV snapshots, one budget
        for every session. `kv_live_sessions`: the sessions whose last prompt's whole KV
        stays on the device (the rest restore from their snapshots and recompute the tail)."""
        if kv_live_sessions < 1:
            raise ValueError(f"kv_live_sessions must be at least 1, got {kv_live_sessions}")
        from paged_context.models.default_model import resolve

        self.path = resolve(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.template = ChatTemplate(self.tokenizer)
        self.syntax = self.template.syntax
        self.window = int(getattr(self.model.config, "max_position_embeddings", 8192))
        self.kv_mode, self.kv_repair_tokens = kv_mode, kv_repair_tokens
        self.sampling = Sampling(max_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
        self.max_recall_rounds = max_recall_rounds
        self.kv_pool = HostKVPool(self.device, kv_host_limit_bytes)  # all sessions' snapshots; the least recently used go first
        self.caches: dict[str, KVCacheManager] = {}
        self.kv_live_sessions = kv_live_sessions
        self.live: OrderedDict[str, KVCacheManager] = OrderedDict()  # sessions with a live cache, least recently used first

    def count_tokens(self, text: str) -> int:
        return self.template.count_tokens(text)

    def session(self, session_id: str, config: PagingConfig = PagingConfig(), store: PageStore | None = None, **kw) -> PagedSession:
        return PagedSession(session_id, config, store, self.count_tokens, **kw)

    def forget(self, session_id: str) -> None:
        """Drop a session's KV (a deleted session, or one that left memory): its live cache and its snapshots."""
        self.live.pop(session_id, None)
        if (kv := self.caches.pop(session_id, None)) is not None:
            kv.close()

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """A plain greedy answer to one user message (no paging): for keyword strategies."""
        ids = self.template.encode([Message("user", prompt, "task")])
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids], device=self.device), max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=self.sampling.repetition_penalty
            )
        return self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    # --- one request ------------------------------------------------------------------

    def reply(self, session: PagedSession, text: str, **options) -> Reply:
        """Answer `text` in `session` (see `answer` for the options)."""
        return self.answer(session, session.ask(text), **options)

    def answer(
        self,
        session: PagedSession,
        request: Request,
        on_text: Callable[[str], None] | None = None,
        max_new_tokens: int | None = None,
        logit_bias: dict[int, float] | None = None,
        sampling: Sampling | None = None,
        tools: Tools = Tools(),
        expose_recall: bool = False,
    ) -> Reply:
        """Answer a planned request: render, generate, serve recall calls (bounded rounds),
        record the answer. `on_text` receives the answer as it is generated (never a
        call); `max_new_tokens` and `logit_bias` (token id -> amount added to its logit,
        as in the OpenAI API) override the engine's sampling defaults, `sampling` replaces
        them. With `expose_recall` a recall call ends the request unanswered, returned in
        `Reply.tool_calls` for the client to handle."""
        sampling = sampling or Sampling(
            max_new_tokens or self.sampling.max_tokens, logit_bias=logit_bias, repetition_penalty=self.sampling.repetition_penalty
        )
        answering = Answering(session, request, self.template, self.window, sampling, tools, self.max_recall_rounds, expose_recall)
        stream = TextStream(on_text)
        while (round_ := answering.next_round()) is not None:
            generated = self.generate(round_, session, lambda text: stream.update(round_, text))
            stream.flush(answering.take(generated))
        reply = answering.reply()
        reply.paging["kv"] = asdict(self.caches[session.id].stats())
        return reply

    def generate(self, round_: Round, session: PagedSession, on_text: Callable[[str], None] | None = None) -> Generated:
        """Run one round: restore the prompt's known prefix, generate under the round's
        sampling, constraints and stop strings, and snapshot the KV for the next one.
        `on_text` receives the text generated so far as it grows."""
        kv = self.caches.get(session.id)
        if kv is None:
            kv = self.caches[session.id] = KVCacheManager(self.model, self.kv_mode, pool=self.kv_pool, repair_tokens=self.kv_repair_tokens)
        ids, sampling = round_.prompt, round_.sampling
        boundaries = self.boundaries(round_, ids)
        restore = kv.start_restore(ids, boundaries)
        cache, reused = restore.cache(), restore.tokens - restore.repaired  # repaired tokens were computed, not cached
        processors = [LogitBias(sampling.logit_bias)] if sampling.logit_bias else []
        if round_.recall is not None:  # after the bias, so a bias cannot push a call off its grammar
            processors.append(RecallConstraint(self.tokenizer, self.syntax, round_.recall.allowed, round_.recall.max_ids, len(ids), round_.recall.shared))
        if round_.schema is not None and (constraint := schema_constraint(self.tokenizer, self.model.config.vocab_size, round_.schema)):
            processors.append(constraint)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        sample = sampling.temperature >= GREEDY_BELOW
        prompt = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                past_key_values=cache,
                max_new_tokens=sampling.max_tokens,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=0 if sample else None,  # as in vLLM and the OpenAI API: no top-k cut unless asked
                repetition_penalty=sampling.repetition_penalty,
                logits_processor=LogitsProcessorList(processors),
                stop_strings=list(round_.stop) or None,
                tokenizer=self.tokenizer,
                streamer=AnswerStream(self.tokenizer, on_text) if on_text else None,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        kv.remember(ids, cache, boundaries)
        self.live[session.id] = kv
        self.live.move_to_end(session.id)
        while len(self.live) > self.kv_live_sessions:  # device memory stays bounded however many sessions are open
            self.live.popitem(last=False)[1].drop_live()
        generated = out[0, len(ids) :].tolist()
        truncated = len(generated) >= sampling.max_tokens and generated[-1] != self.tokenizer.eos_token_id
        return Generated(self.tokenizer.decode(generated, skip_special_tokens=True), len(generated), reused, truncated)

    def boundaries(self, round_: Round, ids: list[int]) -> list[int]:
        """The token positions where the prompt's segments end: where the KV cache manager
        snapshots, so a later prompt that shares the segments up to there restores them."""
        messages, tools = round_.messages, round_.tools
        text = self.template.text(messages, tools)
        starts = [a for a, _ in self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        found = []
        for i in range(1, len(messages)):
            if messages[i].segment.split(":")[0] == messages[i - 1].segment.split(":")[0] == "turn":
                continue  # consecutive recent turns need no boundary of their own
            prefix = self.template.text(messages[:i], tools, generation_prompt=False)
            if text.startswith(prefix):
                found.append(bisect.bisect_left(starts, len(prefix)))
        return sorted(set(b for b in found if 0 < b < len(ids)))


class AsyncHFEngine:
    """The transformers engine for an event loop (the server, `PagedLLM`): each round runs
    in a worker thread, one at a time, so the loop keeps serving other requests."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.template, self.window = engine.template, engine.window
        self.lock = asyncio.Lock()  # one model, one generation at a time
        self.forgetting: set[asyncio.Task] = set()  # deleted sessions waiting for the running round

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def forget(self, session_id: str) -> None:
        """Drop a deleted session's KV, at once when no round is running, else right after
        it (the KV pool is the worker thread's while a round runs). On the loop's thread."""
        if not self.lock.locked():
            self.engine.forget(session_id)
            return
        task = asyncio.get_running_loop().create_task(self._forget(session_id))
        self.forgetting.add(task)
        task.add_done_callback(self.forgetting.discard)

    async def _forget(self, session_id: str) -> None:
        async with self.lock:
            self.engine.forget(session_id)

    async def complete(self, prompt: str, max_tokens: int) -> str:
        async with self.lock:
            return await asyncio.to_thread(self.engine.complete, prompt, max_tokens)

    async def generate(self, round_: Round, session: PagedSession, on_text: Callable[[str], None] | None = None) -> Generated:
        loop = asyncio.get_running_loop()
        relay = None if on_text is None else functools.partial(loop.call_soon_threadsafe, on_text)
        async with self.lock:  # relayed text is queued on the loop before the round's result
            return await asyncio.to_thread(self.engine.generate, round_, session, relay)
