"""Which paged session a chat request belongs to, and what is new in it.

A session is named by the `X-Session-Id` header, else the request's `user` field, else a
hash of the conversation's opening message (so a stateless client that resends the
whole history lands in the same session every time). Clients may send the full history
(OpenAI style) or only the new turns: history the session already holds is recognised
and skipped. Sessions belong to the API key that created them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Sequence, TypeVar

from paged_context.calls import CallSyntax
from paged_context.messages import BadRequest, ChatTurn, Exchange
from paged_context.pages import Turn
from paged_context.session import PagedSession, PagingConfig, Request
from paged_context.store import PageStore, SessionBusy

log = logging.getLogger(__name__)
T = TypeVar("T")

SESSION_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


class TooLarge(BadRequest):
    status = 413


class Forbidden(LookupError):
    """A session that belongs to another API key: answered with HTTP 404 (not 403, so
    session names do not leak)."""


def session_id_for(header: str | None, user: str | None, exchange: Exchange, key: str | None) -> str:
    if header is not None or user:
        name = header if header is not None else user
        if not SESSION_ID.fullmatch(name):
            raise BadRequest("a session id is 1-128 characters of letters, digits and . _ : @ -")
        return name
    # a stateless client resends the same opening every time; two conversations that
    # open with the same words share a session, so distinct ones should be named
    digest = hashlib.sha256(repr((key, exchange.instructions, exchange.turns[0].text)).encode()).hexdigest()[:20]
    return f"auto-{digest}"


def _said(turn: Turn | ChatTurn) -> tuple:
    """What identifies a turn when a client sends history again. Clients rebuild answers
    from streamed chunks, so edge whitespace does not count."""
    return turn.role, turn.text.strip(), tuple((c.id, c.name, c.arguments.strip()) for c in turn.tool_calls), turn.tool_call_id


def answered(session: PagedSession, exchange: Exchange) -> Turn | None:
    """The stored answer to a request that resends the history up to the question that
    answer answers (a client that never heard it: its replica died after storing it, or
    the connection broke), else None. Such a request is answered with what is stored, so
    a retry stores nothing twice. A client sending new turns only cannot be told from one
    repeating itself, so only a whole resent history counts."""
    kept = session.turns
    if exchange.recall_calls or len(kept) < 2 or kept[-1].role != "assistant" or len(exchange.turns) != len(kept) - 1:
        return None
    return kept[-1] if all(_said(a) == _said(b) for a, b in zip(exchange.turns, kept)) else None


def new_turns(session: PagedSession, turns: Sequence[ChatTurn]) -> list[ChatTurn]:
    """The turns of a request the session does not have yet. A full history starts with
    what the session holds; anything else is taken as new turns only."""
    held = [_said(t) for t in session.turns]
    sent = [_said(t) for t in turns]
    if len(sent) >= len(held) and sent[: len(held)] == held:
        return list(turns[len(held) :])
    # the client sent its recent turns only: skip the part that overlaps our tail
    for overlap in range(min(len(sent), len(held)), 0, -1):
        if sent[:overlap] == held[-overlap:]:
            return list(turns[overlap:])
    return list(turns)


class SessionRegistry:
    """Open sessions over one durable store, one lock per session so concurrent requests
    to a session take turns (different sessions run in parallel). Replicas sharing the
    store take turns too: a request that may change a session runs in `writing`.

    Memory stays bounded: a session idle for `idle_seconds`, or the least recently used
    beyond `max_open`, leaves memory (its PagedSession, lock, pending request, version,
    and the engine's state for it), unless a request holds or waits for it. Nothing is
    lost: the next request reopens it from the store."""

    def __init__(
        self, store: PageStore, config: PagingConfig, count_tokens, complete=None, forget: Callable[[str], None] | None = None, wait: float = 5.0,
        idle_seconds: float | None = None, max_open: int | None = None,
    ):
        """`complete(prompt, max_tokens)`: the model, for keyword strategies that ask it.
        `forget(session_id)`: the engine drops a session's state (its KV cache), on the
        event loop. `wait`: how long a request waits for a session another replica is
        answering. `idle_seconds`, `max_open`: when sessions leave memory (None: never)."""
        if max_open is not None and max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.store, self.config, self.count_tokens, self.complete, self.forget = store, config, count_tokens, complete, forget
        self.wait, self.idle_seconds, self.max_open = wait, idle_seconds, max_open
        self.open: dict[str, PagedSession] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.pending: dict[str, Request] = {}  # requests whose recall call went to the client
        self.versions: dict[str, int] = {}  # each open session's store version after this replica's last write
        self.used: OrderedDict[str, float] = OrderedDict()  # sessions with state here, least recently used first: when
        self.users: dict[str, int] = {}  # requests holding or waiting for each session
        self.active: dict[str, Held] = {}  # the sessions a request of this replica holds now, and its hold
        self.evicted = 0  # sessions that left memory so far
        self._sweeper: asyncio.Task | None = None  # `sweep_idle`'s timer

    def lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())

    def sweep(self, now: float | None = None) -> list[str]:
        """Evict the sessions idle past `idle_seconds` and the least recently used beyond
        `max_open`, but none a request holds or waits for. Walks the LRU order from its
        old end and stops at the first session to keep: O(evicted + in use)."""
        now = time.monotonic() if now is None else now
        excess = len(self.used) - self.max_open if self.max_open is not None else 0
        idle_since = now - self.idle_seconds if self.idle_seconds is not None else -float("inf")
        leaving = []
        for session_id, last in self.used.items():
            if excess <= 0 and last >= idle_since:
                break
            if session_id not in self.users:
                leaving.append(session_id)
                excess -= 1
        for session_id in leaving:
            self.evict(session_id)
        return leaving

    def sweep_idle(self) -> asyncio.Task | None:
        """Sweep on a timer too, on the running event loop (a quarter of `idle_seconds`
        apart, a minute at most): a server no request reaches lets its idle sessions go.
        None without `idle_seconds`."""
        if self.idle_seconds is None:
            return None

        async def sweeping() -> None:
            while True:
                await asyncio.sleep(min(max(self.idle_seconds / 4, 0.1), 60.0))
                try:
                    self.sweep()
                except Exception:  # an engine that fails to forget one session must not stop the sweeping
                    log.exception("sweeping idle sessions failed")

        self._sweeper = asyncio.get_running_loop().create_task(sweeping())  # kept: the loop holds tasks weakly
        return self._sweeper

    def evict(self, session_id: str) -> None:
        """Drop what this server holds for a session no request is using (on the event
        loop); the store keeps it all."""
        self.used.pop(session_id, None)
        self.open.pop(session_id, None)
        self.locks.pop(session_id, None)
        self.pending.pop(session_id, None)
        self.versions.pop(session_id, None)
        self.evicted += 1
        if self.forget is not None:
            self.forget(session_id)

    def _use(self, session_id: str, delta: int) -> None:
        """A request starts (1) or ends (-1) using a session: it becomes the most recently used."""
        users = self.users.get(session_id, 0) + delta
        if users:
            self.users[session_id] = users
        else:
            self.users.pop(session_id, None)
        self.used[session_id] = time.monotonic()
        self.used.move_to_end(session_id)

    @contextlib.asynccontextmanager
    async def writing(self, session_id: str, owner: str | None, create: bool = True, options: dict | None = None) -> AsyncIterator[Held]:
        """The session (as `get` gives it) held for a request that may change it: this
        replica's requests take turns (the asyncio lock), and so do the replicas sharing
        the store (its hold, within `wait` seconds, else SessionBusy). A session another
        replica wrote since this one's last write is read again from the store. The hold
        and every store call of the request run in the request's own worker thread
        (`Held.run`), off the event loop: a store whose hold is a connection writes on it."""
        self._use(session_id, 1)
        self.sweep()
        try:
            async with self.lock(session_id):
                held = Held(self, session_id)
                try:
                    held.session = await asyncio.shield(held.run(held.take, owner, create, options))
                    self.active[session_id] = held
                    yield held
                except Exception as e:
                    if not isinstance(e, (BadRequest, Forbidden, SessionBusy)):
                        self.open.pop(session_id, None)  # maybe half written (a store fault): read it again next time
                        self.pending.pop(session_id, None)
                    raise
                finally:
                    if self.active.get(session_id) is held:
                        del self.active[session_id]
                    # after whatever the request still runs in its thread, even when cancelled
                    await asyncio.shield(held.run(held.give_back))
                    held.thread.shutdown(wait=False)
        finally:
            self._use(session_id, -1)

    async def read(self, session_id: str, owner: str | None, look: Callable[[PagedSession], T]) -> T:
        """`look(session)` for a request that only reads an existing session, without
        waiting for the answer a request of this replica is giving in it: it runs in that
        request's thread, where the request makes every change to the session, so it sees
        the session between two of its steps. A session no request here holds is taken as
        `writing` takes it."""
        held = self.active.get(session_id)
        if held is None:
            async with self.writing(session_id, owner, create=False) as held:
                return await held.run(look, held.session)

        def looking() -> T:
            if held.session.owner != owner:
                raise Forbidden(session_id)
            return look(held.session)

        return await held.run(looking)

    def get(self, session_id: str, owner: str | None, create: bool = True, options: dict | None = None) -> PagedSession:
        """The session, opened or created. `options`: paging options for a new session
        (overrides of the server's); a session keeps those it was created with, so other
        options for an existing one are an error."""
        try:
            config = self.config.with_options(options) if options is not None else None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        info = self.store.session(session_id)
        if info is not None and info.owner != owner:
            raise Forbidden(session_id)
        if info is None and not create:
            raise Forbidden(session_id)
        if session_id not in self.open:
            self.open[session_id] = PagedSession(session_id, config or self.config, self.store, self.count_tokens, owner=owner, complete=self.complete)
        session = self.open[session_id]
        if config is not None and config != session.config:
            raise BadRequest(f"session {session_id!r} was created with other paging options ({session.config.to_json()}); use a new session for new options")
        return session

    def request_for(self, session: PagedSession, exchange: Exchange, syntax: CallSyntax) -> Request:
        """Store what is new in `exchange` and return the request to answer: the one left
        pending when its recall call went to the client, or a new one. Recall calls the
        client sent back are served here (the server has the pages; the client's tool
        message content is not used)."""
        pending = self.pending.pop(session.id, None)
        new = new_turns(session, exchange.turns)
        if pending is not None and exchange.recall_calls and not new:
            request = pending  # the question is stored already, and its history
        else:
            session.add_turns([(t.role, t.text, {"tool_calls": t.tool_calls, "tool_call_id": t.tool_call_id}) for t in new])
            request = session.plan("\n\n".join(exchange.instructions))
        for arguments in exchange.recall_calls:
            session.recall(request, syntax.wrap(arguments), arguments)
        return request

    def list(self, owner: str | None) -> list[str]:
        return [info.id for info in self.store.sessions(owner)]

    def drop(self, session_id: str, owner: str | None) -> None:
        """Delete the session from the store (the engine's state stays: `delete`)."""
        self.get(session_id, owner, create=False)
        self.open.pop(session_id, None)
        self.pending.pop(session_id, None)
        self.store.delete_session(session_id)

    def delete(self, session_id: str, owner: str | None) -> None:
        """Delete the session and the engine's state for it (on the engine's event loop)."""
        self.drop(session_id, owner)
        if self.forget is not None:
            self.forget(session_id)


class Held:
    """A session held for one request (`SessionRegistry.writing`), and the worker thread
    that runs the request's store calls, one after another."""

    def __init__(self, registry: SessionRegistry, session_id: str):
        self.registry, self.id = registry, session_id
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="session")
        self.hold = registry.store.hold(session_id, registry.wait)
        self.entered = False
        self.session: PagedSession | None = None

    def run(self, fn: Callable, *args) -> asyncio.Future:
        """`fn(*args)` in the request's thread."""
        return asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def take(self, owner: str | None, create: bool, options: dict | None) -> PagedSession:
        self.hold.__enter__()
        self.entered = True
        registry, session_id = self.registry, self.id
        if session_id in registry.open and registry.store.version(session_id) != registry.versions.get(session_id):
            # another replica wrote to the session: what this one holds is stale
            del registry.open[session_id]
            registry.pending.pop(session_id, None)
        return registry.get(session_id, owner, create, options)

    def give_back(self) -> None:
        if not self.entered:
            return
        registry = self.registry
        try:
            if self.id in registry.open:  # remembered: a write by another replica shows as a new version
                registry.versions[self.id] = registry.store.version(self.id)
            else:
                registry.versions.pop(self.id, None)
        finally:
            self.entered = False
            self.hold.__exit__(None, None, None)


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
