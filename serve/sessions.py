"""Which paged session a chat request belongs to, and what is new in it.

A session is named by the `X-Session-Id` header, else the request's `user` field, else a
hash of the conversation's opening messages (so a stateless client that resends the
whole history lands in the same session every time). Clients may send the full history
(OpenAI style) or only the new turns: history the session already holds is recognised
and skipped. Sessions belong to the API key that created them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass

from paged_context.calls import CallSyntax
from paged_context.session import PagedSession, PagingConfig, Request
from paged_context.store import SQLiteStore

SESSION_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
ROLES = ("system", "developer", "user", "assistant", "tool")


class BadRequest(ValueError):
    """The client's mistake: answered with HTTP 400 (or `status`) and this message."""

    status = 400


class TooLarge(BadRequest):
    status = 413


class Forbidden(LookupError):
    """A session that belongs to another API key: answered with HTTP 404 (not 403, so
    session names do not leak)."""


@dataclass(frozen=True)
class Exchange:
    turns: list[tuple[str, str]]  # (role, text) before the question, oldest first
    question: str
    instructions: tuple[str, ...] = ()  # the client's system/developer messages
    calls: tuple[str, ...] = ()  # arguments of recall calls answering the question, to serve first


def text_of(content) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest("only text content parts are supported (type 'text')")
            parts.append(part["text"])
        return "\n".join(parts)
    raise BadRequest("message content must be a string or a list of text parts")


def _only_recall(message: dict) -> bool:
    calls = message.get("tool_calls")
    return (
        message.get("role") == "assistant" and bool(calls) and isinstance(calls, list) and not text_of(message.get("content")).strip()
        and all(isinstance(c, dict) and (c.get("function") or {}).get("name") == "recall" for c in calls)
    )


def _recall_calls(trailing: list[dict]) -> tuple[str, ...]:
    """Recall calls after the question: assistant `tool_calls` naming recall, each
    answered by a tool message (whose content the server replaces with the pages)."""
    calls, answered = {}, set()
    for message in trailing:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            if not _only_recall(message):
                raise BadRequest("after the last user message only recall tool calls (and their tool messages) may come")
            for call in message["tool_calls"]:
                arguments = call["function"].get("arguments", "")
                calls[call.get("id")] = arguments if isinstance(arguments, str) else json.dumps(arguments)
        elif message.get("role") == "tool":
            answered.add(message.get("tool_call_id"))
        else:
            raise BadRequest("the last message must come from the user, or answer a recall call with a tool message")
    if set(calls) != answered:
        raise BadRequest("every recall tool call needs a tool message with its tool_call_id, and only those")
    return tuple(calls.values())


def split_messages(messages: list[dict]) -> Exchange:
    """The conversation turns, the question (the last user message), and any recall
    calls after it. System and developer messages are the client's instructions, not
    turns: they are not paged."""
    if not messages:
        raise BadRequest("messages must not be empty")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.get('role')!r}")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise BadRequest("the last message must come from the user")
    calls = _recall_calls(messages[last_user + 1 :])
    turns, instructions = [], []
    for message in messages[: last_user + 1]:
        text = text_of(message.get("content"))
        if message["role"] in ("system", "developer"):
            instructions.append(text)
            continue
        if message["role"] == "tool" or _only_recall(message):
            continue  # recall mechanics of an earlier request, not conversation
        if message["role"] == "assistant" and message.get("tool_calls"):
            text = (text + "\n" if text else "") + " ".join(
                f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})" for c in message["tool_calls"]
            )
        turns.append((message["role"], text))
    if not turns[-1][1].strip():
        raise BadRequest("the last user message is empty")
    return Exchange(turns[:-1], turns[-1][1], tuple(instructions), calls)


def session_id_for(header: str | None, user: str | None, exchange: Exchange, key: str | None) -> str:
    if header is not None or user:
        name = header if header is not None else user
        if not SESSION_ID.match(name):
            raise BadRequest("a session id is 1-128 characters of letters, digits and . _ : @ -")
        return name
    # a stateless client resends the same opening every time; two conversations that
    # open with the same words share a session, so distinct ones should be named
    first = exchange.turns[0][1] if exchange.turns else exchange.question
    digest = hashlib.sha256(repr((key, exchange.instructions, first)).encode()).hexdigest()[:20]
    return f"auto-{digest}"


def new_turns(session: PagedSession, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The turns of a request the session does not have yet. A full history starts with
    what the session holds; anything else is taken as new turns only."""
    # clients rebuild answers from streamed chunks, so compare without edge whitespace
    held = [(t.role, t.text.strip()) for t in session.turns]
    sent = [(role, text.strip()) for role, text in turns]
    if len(sent) >= len(held) and sent[: len(held)] == held:
        return turns[len(held) :]
    # the client sent its recent turns only: skip the part that overlaps our tail
    for overlap in range(min(len(sent), len(held)), 0, -1):
        if sent[:overlap] == held[-overlap:]:
            return turns[overlap:]
    return turns


class SessionRegistry:
    """Open sessions over one durable store, one lock per session so concurrent requests
    to a session take turns (different sessions run in parallel)."""

    def __init__(self, store: SQLiteStore, config: PagingConfig, count_tokens, complete=None):
        """`complete(prompt, max_tokens)`: the model, for keyword strategies that ask it."""
        self.store, self.config, self.count_tokens, self.complete = store, config, count_tokens, complete
        self.open: dict[str, PagedSession] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.pending: dict[str, Request] = {}  # requests whose recall call went to the client

    def lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())

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
        if pending is not None and exchange.calls and session.turns and session.turns[-1].text == pending.text == exchange.question:
            request = pending  # the question is stored already, and its history
        else:
            for role, text in new_turns(session, exchange.turns):
                session.add_turn(role, text)
            request = session.ask(exchange.question, "\n\n".join(exchange.instructions))
        for arguments in exchange.calls:
            session.recall(request, syntax.wrap(arguments), arguments)
        return request

    def list(self, owner: str | None) -> list[str]:
        return [info.id for info in self.store.sessions(owner)]

    def delete(self, session_id: str, owner: str | None) -> None:
        self.get(session_id, owner, create=False)
        self.open.pop(session_id, None)
        self.pending.pop(session_id, None)
        self.store.delete_session(session_id)
