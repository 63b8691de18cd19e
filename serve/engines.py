"""The two engines behind the server, one interface: answer a paged request, recall
rounds included, optionally passing the visible answer text to `on_text` as it grows.

`VLLMEngine` drives vLLM's `AsyncLLM`: every round's prompt is rendered by the session
(deterministic, so vLLM's prefix cache finds the unchanged start), recall arguments are
constrained by our logits processor through `SamplingParams.extra_args`, and a round
stops at the canonical end of a call. `HFEngineAdapter` runs the transformers engine in
a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from paged_context.calls import visible_end
from paged_context.patches.hf_engine import Reply, call_syntax, render_chat
from paged_context.session import Message, PagedSession, Request

from .sessions import BadRequest


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    repetition_penalty: float = 1.1  # small models loop under greedy decoding without it
    expose_recall: bool = False  # return recall calls to the client instead of serving them


class VLLMEngine:
    def __init__(self, client: Callable[[], object], tokenizer, window: int, max_recall_rounds: int = 2):
        """`client` returns vLLM's engine client (AsyncLLM) when called."""
        self.client, self.tokenizer, self.window = client, tokenizer, window
        self.syntax = call_syntax(tokenizer)
        self.max_recall_rounds = max_recall_rounds

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, messages) -> list[int]:
        return self.tokenizer(render_chat(self.tokenizer, self.syntax, messages), add_special_tokens=False).input_ids

    async def complete(self, prompt: str, max_tokens: int) -> str:
        """A plain greedy answer to one user message (no paging): for keyword strategies."""
        from vllm import SamplingParams

        ids = self.encode([Message("user", prompt, "task")])
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.1)
        text = ""
        async for out in self.client().generate({"prompt_token_ids": ids}, params, request_id=f"paged-task-{uuid.uuid4().hex}"):
            text = out.outputs[0].text
        return text

    async def answer(self, session: PagedSession, request: Request, sampling: Sampling, on_text: Callable[[str], None] | None = None) -> Reply:
        from vllm import SamplingParams

        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "rounds": 0, "seconds": 0.0}
        started, answer, messages = time.perf_counter(), "", []
        for round_ in range(self.max_recall_rounds + 1):
            may_call = round_ < self.max_recall_rounds and bool(session.recallable(request))
            try:
                messages, ids = session.render_within(request, self.syntax.instruction(), self.encode, self.window - sampling.max_tokens)
            except ValueError as error:
                raise BadRequest(str(error)) from error
            extra = None
            if may_call:
                extra = {
                    "paged_recall_syntax": self.syntax.name,
                    "paged_recall_allowed": session.recallable(request),
                    "paged_recall_max_ids": session.config.max_recall_ids,
                }
            params = SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                logit_bias=sampling.logit_bias,
                repetition_penalty=sampling.repetition_penalty,
                # a constrained call always ends with the canonical tail; on the last round
                # a call is not served, so generation stops where one would begin
                stop=[self.syntax.tail] if may_call else [self.syntax.marker],
                include_stop_str_in_output=may_call,
                extra_args=extra,
            )
            text, sent, cached, generated = "", 0, 0, 0
            # salted per API key: sessions of one tenant share cached prefixes (the same
            # document, the same system prompt), and no timing side channel crosses tenants
            prompt = {"prompt_token_ids": ids, "cache_salt": hashlib.sha256(repr(session.owner).encode()).hexdigest()[:16]}
            async for out in self.client().generate(prompt, params, request_id=f"paged-{uuid.uuid4().hex}"):
                text, cached = out.outputs[0].text, out.num_cached_tokens or 0
                generated = len(out.outputs[0].token_ids)
                if on_text is not None:
                    end = visible_end(text, [self.syntax])
                    if end > sent:
                        on_text(text[sent:end])
                        sent = end
            usage["prompt_tokens"] = len(ids)
            usage["cached_tokens"] += cached
            usage["completion_tokens"] += generated
            usage["rounds"] = round_ + 1
            shown, call = session.take_output(request, self.syntax, text, may_call, serve=not sampling.expose_recall)
            if on_text is not None and len(shown) > sent:
                on_text(shown[sent:])
            answer += shown
            if call is None or sampling.expose_recall:
                break
        answer = answer.strip()
        history_tokens = len(self.encode(session.unpaged()))
        exposed = call if sampling.expose_recall else None
        if exposed is None:
            session.finish(request, answer)  # stored before the client hears the answer
        usage["seconds"] = time.perf_counter() - started
        return Reply(answer, session.report(request, usage["prompt_tokens"], history_tokens), usage, messages, exposed)


class LoopBridge:
    """The engine's async `complete` for synchronous callers in worker threads: keyword
    strategies that ask the model run while a request is planned, off the event loop
    that serves the model."""

    def __init__(self, engine):
        self.engine, self.loop = engine, None

    def bind(self) -> None:
        """Run completions on the event loop running now."""
        self.loop = asyncio.get_running_loop()

    def __call__(self, prompt: str, max_tokens: int) -> str:
        return asyncio.run_coroutine_threadsafe(self.engine.complete(prompt, max_tokens), self.loop).result()


class HFEngineAdapter:
    """The transformers engine behind the same interface; generation runs in a thread so
    the server keeps serving other requests."""

    def __init__(self, engine):
        self.engine = engine
        self.window = engine.window
        self.syntax = engine.syntax
        self.tokenizer = engine.tokenizer
        self.lock = asyncio.Lock()  # one model, one generation at a time

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    async def complete(self, prompt: str, max_tokens: int) -> str:
        async with self.lock:
            return await asyncio.to_thread(self.engine.complete, prompt, max_tokens)

    async def answer(self, session: PagedSession, request: Request, sampling: Sampling, on_text: Callable[[str], None] | None = None) -> Reply:
        loop = asyncio.get_running_loop()
        relay = None if on_text is None else (lambda text: loop.call_soon_threadsafe(on_text, text))
        async with self.lock:
            try:
                return await asyncio.to_thread(
                    self.engine.answer, session, request, relay, sampling.max_tokens, sampling.logit_bias, sampling.expose_recall
                )
            except ValueError as error:  # the prompt does not fit the window
                raise BadRequest(str(error)) from error
