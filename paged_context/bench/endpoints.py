"""Where `bench locomo` sends its chat requests: any OpenAI-compatible endpoint over
HTTP (a paged-context server adds its paging report and session API), or our paging in
this process (`PagedLLM`, no server)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int  # of the request that produced the answer (its last round)
    cached_tokens: int | None  # of those, served from the prefix cache (None: not reported)
    paging: dict | None  # the server's `paged_context` block; None from a plain endpoint
    seconds: float


class NotPaged(RuntimeError):
    """A paged method was sent to an endpoint that does not page."""


class Endpoint(Protocol):
    model: str

    def chat(self, messages: list[dict], max_tokens: int, session: str | None = None, paging: dict | None = None) -> Answer:
        """Answer `messages` (greedy). Without `session`, a one-off request: a paging
        server gets a session of its own, forgotten afterwards, so no request sees another."""

    def pages(self, session: str) -> dict[int, tuple[int, int]]:
        """A paged session's pages: id -> (first turn, last turn)."""

    def forget(self, session: str) -> None: ...


class HTTPEndpoint:
    def __init__(self, url: str, model: str, api_key: str = "none", timeout: float = 600):
        import httpx
        from openai import OpenAI

        self.url, self.model = url.rstrip("/"), model
        self.client = OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0)
        root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.http = httpx.Client(base_url=root, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)

    def chat(self, messages, max_tokens, session=None, paging=None) -> Answer:
        extra = {"paged_context": {"paging": paging}} if paging is not None else None
        once = session is None
        session = session or f"once-{uuid.uuid4().hex}"
        started = time.perf_counter()
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=0.0, extra_body=extra,
                extra_headers={"X-Session-Id": session},
            )
        finally:
            if once:
                self.forget(session)
        seconds = time.perf_counter() - started
        block = (reply.model_extra or {}).get("paged_context")
        if paging is not None and block is None:
            raise NotPaged(f"{self.url} does not page (no paged_context block in its reply): paged methods need `paged-context serve` or --endpoint inprocess")
        usage = reply.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        cached = getattr(details, "cached_tokens", None) if details else None
        return Answer(reply.choices[0].message.content or "", usage.prompt_tokens if usage else 0, cached, block, seconds)

    def pages(self, session):
        view = self.http.get(f"/paging/sessions/{session}")
        view.raise_for_status()
        return {p["id"]: (p["first_turn"], p["last_turn"]) for p in view.json()["pages"]}

    def forget(self, session):
        self.http.delete(f"/paging/sessions/{session}")  # a plain endpoint has no sessions: nothing to do


class InProcessEndpoint:
    """`PagedLLM` in this process: vLLM or transformers, the server's paging without HTTP.
    Requests run one at a time."""

    def __init__(self, model: str | None = None, engine: str = "vllm", **engine_args):
        from paged_context.serve import PagedLLM

        self.llm = PagedLLM(model, engine=engine, **engine_args)
        self.model = self.llm.model.name

    def chat(self, messages, max_tokens, session=None, paging=None) -> Answer:
        once = session is None
        session = session or f"once-{uuid.uuid4().hex}"
        started = time.perf_counter()
        try:
            reply = self.llm.chat(session, messages, max_tokens=max_tokens, paging=paging)
        finally:
            if once:
                self.forget(session)
        block = {**reply.paging, "rounds": reply.usage["rounds"]}  # as the server's paged_context block has it
        return Answer(reply.text, reply.usage["prompt_tokens"], reply.usage["cached_tokens"], block, time.perf_counter() - started)

    def pages(self, session):
        return {p.id: (p.first_turn, p.last_turn) for p in self.llm.sessions.open[session].pages.values()}

    def forget(self, session):
        self.llm.delete(session)

    def close(self) -> None:
        self.llm.close()
