"""`PagedLLM`: paged conversations in-process, for batch jobs without a server.

    from paged_context.serve import PagedLLM

    llm = PagedLLM()                      # vLLM with the default model; engine="hf" for transformers
    reply = llm.chat("s1", [{"role": "user", "content": "My locker code is 4417."}])
    print(reply.text, reply.paging["resident"])

`chat` takes OpenAI-style messages (the whole history or only new turns, as the server
does) and tools, and returns the answer (and the calls to the client's tools) with the
same paging report as the server's `paged_context` block. With vLLM, the engine runs on an event loop in a background
thread; scripts must start under `if __name__ == "__main__":` (vLLM spawns workers).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from paged_context.answering import Answering, Reply, Sampling, drive
from paged_context.messages import parse_tools, split_messages
from paged_context.session import PagingConfig

# vLLM's own defaults reserve 92% of host memory on its CPU build and fail to start when
# anything else holds memory; these suit a small machine, and every one can be overridden.
VLLM_DEFAULTS = dict(enforce_eager=True, block_size=32, gpu_memory_utilization=0.3, kv_cache_memory_bytes=1 << 30)


class PagedLLM:
    def __init__(
        self,
        model: str | Path | None = None,
        engine: str = "vllm",
        db: str | Path | None = None,
        config: PagingConfig = PagingConfig(),
        max_recall_rounds: int = 2,
        **engine_args,
    ):
        """`model`: a local Hugging Face model directory (default: the embedded model).
        `db`: a SQLite file for durable sessions (default: in memory only).
        `engine_args`: passed to vLLM's `AsyncEngineArgs` or to `HFEngine`."""
        from paged_context.models.default_model import resolve
        from paged_context.store import SQLiteStore

        from .sessions import SessionRegistry

        if engine not in ("vllm", "hf"):
            raise ValueError(f"engine must be 'vllm' or 'hf', got {engine!r}")
        self.model = resolve(model)
        # one event loop in a background thread runs every answer, so the engine's async
        # state (vLLM's client, the transformers engine's lock) always lives in one loop
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="paged-llm-loop", daemon=True).start()
        if engine == "hf":
            from paged_context.patches.hf_engine import AsyncHFEngine, HFEngine

            self.engine = AsyncHFEngine(HFEngine(self.model, **engine_args))
        else:
            self.engine = self._start_vllm(engine_args)
        self.max_recall_rounds = max_recall_rounds
        store = SQLiteStore(db if db is not None else ":memory:", self.engine.count_tokens)
        complete = lambda prompt, max_tokens: self._run(self.engine.complete(prompt, max_tokens))  # noqa: E731
        self.sessions = SessionRegistry(store, config, self.engine.count_tokens, complete, self.engine.forget)

    def _start_vllm(self, engine_args: dict):
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from paged_context.patches.vllm_engine import VLLMEngine

        from .main import client_tool_parser

        processors = [*engine_args.pop("logits_processors", []), "paged_context.patches.vllm_logits:RecallLogitsProcessor"]
        args = AsyncEngineArgs(model=str(self.model), logits_processors=processors, **{**VLLM_DEFAULTS, **engine_args})
        client = self._run(self._make_client(AsyncLLM, args))
        tokenizer = AutoTokenizer.from_pretrained(self.model)
        return VLLMEngine(lambda: client, tokenizer, client.model_config.max_model_len, client_tool_parser("auto", tokenizer))

    @staticmethod
    async def _make_client(cls, args):
        return cls.from_engine_args(args)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def chat(
        self, session_id: str, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
        seed: int | None = None, paging: dict | None = None, tools: list[dict] | None = None, tool_choice=None,
    ) -> Reply:
        """Answer the conversation `messages` (ending with a user message or tool results)
        in session `session_id`; returns a `Reply` (`text`, `tool_calls`, `paging`,
        `usage`). `paging`: options for a new session, as the server's
        `paged_context.paging`; `tools`, `tool_choice`: as in the OpenAI API. Raises
        ValueError (`BadRequest`) for malformed messages."""
        exchange = split_messages(messages)
        offered = parse_tools({"tools": tools, "tool_choice": tool_choice})
        session = self.sessions.get(session_id, None, options=paging)
        request = self.sessions.request_for(session, exchange, self.engine.template.syntax)
        sampling = Sampling(max_tokens, temperature, top_p, seed)
        answering = Answering(session, request, self.engine.template, self.engine.window, sampling, offered, self.max_recall_rounds)
        return self._run(drive(self.engine, answering))

    def delete(self, session_id: str) -> None:
        """Delete a session: its stored turns and the engine's state for it."""
        self._run(self._delete(session_id))

    async def _delete(self, session_id: str) -> None:
        self.sessions.delete(session_id, None)  # on the loop, where the engine's state lives

    def close(self) -> None:
        if self._loop is None:
            return
        if hasattr(self.engine, "client"):
            self._loop.call_soon_threadsafe(self.engine.client().shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None
        self.sessions.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
