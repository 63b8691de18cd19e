"""The transformers engine: a paged session answered by a local model, with recall rounds
and KV restore. Runs on CPU or one GPU; no vLLM."""

from __future__ import annotations

import bisect
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, StoppingCriteriaList

from paged_context.calls import HERMES, PLAIN, CallSyntax
from paged_context.recall import recall_tool
from paged_context.session import Message, PagedSession, PagingConfig, Request
from paged_context.store import PageStore

from .hf_generation import AnswerStream, LogitBias, RecallConstraint, RecallStop
from .kv_cache import KVCacheManager
from .kv_pool import HostKVPool


@dataclass
class Reply:
    text: str
    paging: dict
    usage: dict
    rendered: list[Message] = field(repr=False, default_factory=list)  # the last prompt, for inspection
    call: tuple[str, str] | None = None  # an unserved recall call (call, arguments) for the client


def call_syntax(tokenizer) -> CallSyntax:
    """A template that renders `tools` knows a native tool-call format (Hermes for the
    families that ship one); otherwise the system prompt teaches the plain form."""
    return HERMES if "tools" in (tokenizer.chat_template or "") else PLAIN


def render_chat(tokenizer, syntax: CallSyntax, messages: list[Message], generation_prompt: bool = True) -> str:
    """The prompt text of paged messages, through the model's own chat template."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    tools = [recall_tool()] if syntax is HERMES else None
    return tokenizer.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


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
    ):
        from paged_context.models.default_model import resolve

        self.path = resolve(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.syntax = call_syntax(self.tokenizer)
        self.window = int(getattr(self.model.config, "max_position_embeddings", 8192))
        self.kv_mode = kv_mode
        self.max_new_tokens = max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.max_recall_rounds = max_recall_rounds
        self.kv_pool = HostKVPool(self.device, kv_host_limit_bytes)  # all sessions' snapshots; the least recently used go first
        self.caches: dict[str, KVCacheManager] = {}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def session(self, session_id: str, config: PagingConfig = PagingConfig(), store: PageStore | None = None, **kw) -> PagedSession:
        return PagedSession(session_id, config, store, self.count_tokens, **kw)

    def forget(self, session_id: str) -> None:
        """Drop a session's KV (a deleted session): its live cache and its snapshots."""
        if (kv := self.caches.pop(session_id, None)) is not None:
            kv.close()

    # --- prompt -> tokens -----------------------------------------------------------------

    def _chat(self, messages: list[Message], generation_prompt: bool) -> str:
        return render_chat(self.tokenizer, self.syntax, messages, generation_prompt)

    def encode(self, messages: list[Message]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt, and the token positions where its segments end (where
        the KV cache manager snapshots)."""
        text = self._chat(messages, True)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [a for a, _ in enc["offset_mapping"]]
        boundaries = []
        for i in range(1, len(messages)):
            if messages[i].segment.split(":")[0] == messages[i - 1].segment.split(":")[0] == "turn":
                continue  # consecutive recent turns need no boundary of their own
            prefix = self._chat(messages[:i], False)
            if text.startswith(prefix):
                boundaries.append(bisect.bisect_left(starts, len(prefix)))
        return enc["input_ids"], sorted(set(b for b in boundaries if 0 < b < len(enc["input_ids"])))

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """A plain greedy answer to one user message (no paging): for keyword strategies."""
        ids = self.tokenizer(self._chat([Message("user", prompt, "task")], True), add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = self.model.generate(ids.to(self.device), max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=self.repetition_penalty)
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

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
        expose_recall: bool = False,
    ) -> Reply:
        """Render, generate, serve recall calls (bounded rounds), record the answer.
        `on_text` receives the answer as it is generated; `logit_bias` adds to the logits
        of the given token ids, as in the OpenAI API. With `expose_recall` a recall call
        ends the request unanswered, returned in `Reply.call` for the client to handle."""
        kv = self.caches.setdefault(session.id, KVCacheManager(self.model, self.kv_mode, pool=self.kv_pool))
        limit = max_new_tokens or self.max_new_tokens
        answer, usage = "", {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "rounds": 0, "seconds": 0.0}
        started = time.perf_counter()
        for round_ in range(self.max_recall_rounds + 1):
            plain = lambda m: self.tokenizer(self._chat(m, True), add_special_tokens=False).input_ids  # noqa: E731
            messages, _ = session.render_within(request, self.syntax.instruction(), plain, self.window - limit)
            ids, boundaries = self.encode(messages)  # again, with the offsets the boundaries need
            generated, reused = self._generate(
                kv, ids, boundaries, session, request, limit, on_text, logit_bias, allow_calls=round_ < self.max_recall_rounds
            )
            usage["prompt_tokens"] = len(ids)
            usage["cached_tokens"] += reused
            usage["completion_tokens"] += len(generated)
            usage["rounds"] = round_ + 1
            out = self.tokenizer.decode(generated, skip_special_tokens=True)
            shown, call = session.take_output(request, self.syntax, out, round_ < self.max_recall_rounds, serve=not expose_recall)
            answer += shown
            if call is None or expose_recall:
                break
        answer = answer.strip()
        history_tokens = len(self.encode(session.unpaged())[0])  # what the unpaged prompt would have cost
        if not (expose_recall and call):
            session.finish(request, answer)
        usage["seconds"] = time.perf_counter() - started
        paging = session.report(request, usage["prompt_tokens"], history_tokens)
        paging["kv"] = asdict(kv.stats())
        return Reply(answer, paging, usage, messages, call if expose_recall else None)

    def _generate(self, kv: KVCacheManager, ids, boundaries, session, request: Request, limit: int, on_text, logit_bias, allow_calls: bool):
        cache, reused = kv.cache_for(ids, boundaries)
        prompt = torch.tensor([ids], device=self.device)
        processors = [LogitBias(logit_bias)] if logit_bias else []
        if allow_calls:  # after the bias, so a bias cannot push a call off its grammar
            processors.append(RecallConstraint(self.tokenizer, self.syntax, session.recallable(request), session.config.max_recall_ids, len(ids)))
        stops = [RecallStop(self.tokenizer, self.syntax, len(ids))]
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                past_key_values=cache,
                max_new_tokens=limit,
                do_sample=False,
                repetition_penalty=self.repetition_penalty,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList(stops),
                streamer=AnswerStream(self.tokenizer, self.syntax, on_text) if on_text else None,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        kv.remember(ids, cache, boundaries)
        return out[0, len(ids) :].tolist(), reused
