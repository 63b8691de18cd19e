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
import re
from dataclasses import dataclass

from paged_context.session import PagedSession, PagingConfig
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


def split_messages(messages: list[dict]) -> Exchange:
    """The conversation turns and the question (the last message, from the user).
    System and developer messages are the client's instructions, not turns: they are
    not paged."""
    if not messages:
        raise BadRequest("messages must not be empty")
    turns, instructions = [], []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        text = text_of(message.get("content"))
        if role in ("system", "developer"):
            instructions.append(text)
            continue
        if role == "assistant" and message.get("tool_calls"):
            text = (text + "\n" if text else "") + " ".join(
                f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})" for c in message["tool_calls"]
            )
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise BadRequest("the last message must come from the user")
    if not turns[-1][1].strip():
        raise BadRequest("the last user message is empty")
    return Exchange(turns[:-1], turns[-1][1], tuple(instructions))


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
    held = [(t.role, t.text) for t in session.turns]
    if len(turns) >= len(held) and turns[: len(held)] == held:
        return turns[len(held) :]
    # the client sent its recent turns only: skip the part that overlaps our tail
    for overlap in range(min(len(turns), len(held)), 0, -1):
        if turns[:overlap] == held[-overlap:]:
            return turns[overlap:]
    return turns


class SessionRegistry:
    """Open sessions over one durable store, one lock per session so concurrent requests
    to a session take turns (different sessions run in parallel)."""

    def __init__(self, store: SQLiteStore, config: PagingConfig, count_tokens):
        self.store, self.config, self.count_tokens = store, config, count_tokens
        self.open: dict[str, PagedSession] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())

    def get(self, session_id: str, owner: str | None, create: bool = True) -> PagedSession:
        info = self.store.session(session_id)
        if info is not None and info.owner != owner:
            raise Forbidden(session_id)
        if info is None and not create:
            raise Forbidden(session_id)
        if session_id not in self.open:
            self.open[session_id] = PagedSession(session_id, self.config, self.store, self.count_tokens, owner=owner)
        return self.open[session_id]

    def list(self, owner: str | None) -> list[str]:
        return [info.id for info in self.store.sessions(owner)]

    def delete(self, session_id: str, owner: str | None) -> None:
        self.get(session_id, owner, create=False)
        self.open.pop(session_id, None)
        self.store.delete_session(session_id)
