"""Durable page storage: sessions, turns, pages, bookmarks and reference history.

`PageStore` is the interface; `SQLiteStore` the default backend. A write returns only
after SQLite has committed it to disk (WAL journal, synchronous=FULL), so a turn whose
append returned survives a crash or SIGKILL of the process right after. Pages are stored
as turn ranges, never as copies: the turns are the single verbatim record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
import fcntl
import hashlib
import os
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .bookmarks import Bookmark
from .calls import ToolCall
from .pages import Page, Turn
from .text import TokenCounter, approx_tokens


@dataclass(frozen=True)
class SessionInfo:
    id: str
    owner: str | None
    created: float
    turns: int
    config: str | None = None  # the session's paging options (JSON), fixed when it was created


@dataclass(frozen=True)
class Reference:
    """A page was needed at `step`: by a probe/request ('request'), a recall, a prefetch."""

    step: int
    page_id: int
    kind: str
    at: float


class StoreError(ValueError):
    pass


class SessionBusy(RuntimeError):
    """Another writer (a replica, or a request of this one) holds the session."""

    def __init__(self, session_id: str, waited: float):
        super().__init__(f"session {session_id!r} is being answered elsewhere; still busy after {waited:g} s")
        self.session_id, self.waited = session_id, waited


class PageStore(ABC):
    @abstractmethod
    def create_session(self, session_id: str, owner: str | None = None, config: str | None = None) -> None:
        """Create the session if it does not exist (an existing one keeps its owner and config)."""

    @abstractmethod
    def session(self, session_id: str) -> SessionInfo | None: ...

    @abstractmethod
    def sessions(self, owner: str | None = None) -> list[SessionInfo]: ...

    @abstractmethod
    def delete_session(self, session_id: str) -> bool: ...

    @abstractmethod
    def append_turns(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Durably append turns; their indices must continue the session's, all or none land."""

    @abstractmethod
    def turns(self, session_id: str, start: int = 0, stop: int | None = None) -> list[Turn]: ...

    @abstractmethod
    def save_pages(self, session_id: str, pages: Sequence[Page]) -> None:
        """Record page boundaries (replacing pages with the same ids)."""

    @abstractmethod
    def pages(self, session_id: str) -> list[Page]: ...

    @abstractmethod
    def save_bookmarks(self, session_id: str, bookmarks: Sequence[Bookmark], strategy: str) -> None: ...

    @abstractmethod
    def bookmarks(self, session_id: str) -> list[Bookmark]: ...

    @abstractmethod
    def record_references(self, session_id: str, step: int, page_ids: Iterable[int], kind: str) -> None: ...

    @abstractmethod
    def references(self, session_id: str) -> list[Reference]: ...

    @abstractmethod
    def version(self, session_id: str) -> int:
        """How many write transactions changed the session (0 when it has none or does
        not exist): a server that sees another number than after its own last write
        knows another replica wrote, and reads the session again."""

    @abstractmethod
    def hold(self, session_id: str, wait: float) -> AbstractContextManager[None]:
        """The session's one-writer lock, across threads, processes and replicas, held
        for the block; SessionBusy when it is not free within `wait` seconds."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, owner TEXT, created REAL NOT NULL, config TEXT, version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, speaker TEXT,
    session_no INTEGER, dia_id TEXT, tool_calls TEXT NOT NULL, tool_call_id TEXT,
    PRIMARY KEY (session_id, idx));
CREATE TABLE IF NOT EXISTS pages (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    page_id INTEGER NOT NULL, first_turn INTEGER NOT NULL, last_turn INTEGER NOT NULL,
    tokens INTEGER NOT NULL, PRIMARY KEY (session_id, page_id));
CREATE TABLE IF NOT EXISTS bookmarks (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    page_id INTEGER NOT NULL, keywords TEXT NOT NULL, strategy TEXT NOT NULL,
    PRIMARY KEY (session_id, page_id));
CREATE TABLE IF NOT EXISTS refs (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    step INTEGER NOT NULL, page_id INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS refs_by_session ON refs (session_id, step);
"""


def _calls(stored: str) -> tuple[ToolCall, ...]:
    # stores written before whole calls were kept hold their ids only
    return tuple(ToolCall("", "", c) if isinstance(c, str) else ToolCall(**c) for c in json.loads(stored))


class SQLiteStore(PageStore):
    """One SQLite file; safe to share between threads of one process."""

    def __init__(self, path: str | Path, count_tokens: TokenCounter = approx_tokens):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count_tokens = count_tokens
        self._lock = threading.Lock()
        self._memory_locks: dict[str, threading.Lock] = {}
        self._memory_locks_guard = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
            if "config" not in columns:  # a store written before sessions had their own options
                self._db.execute("ALTER TABLE sessions ADD COLUMN config TEXT")
            if "version" not in columns:  # a store written before replicas shared one
                self._db.execute("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(turns)")}
            if "tool_call_ids" in columns:  # a store written before turns kept whole calls (ids only)
                self._db.execute("ALTER TABLE turns RENAME COLUMN tool_call_ids TO tool_calls")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (and fsynced) before the block's caller goes on."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _require(db: sqlite3.Connection, session_id: str) -> None:
        """The session exists; the transaction writes to it, so its version moves on."""
        if db.execute("UPDATE sessions SET version = version + 1 WHERE id = ?", (session_id,)).rowcount == 0:
            raise StoreError(f"no session {session_id!r}")

    def create_session(self, session_id, owner=None, config=None):
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO sessions (id, owner, created, config) VALUES (?, ?, ?, ?)", (session_id, owner, time.time(), config)
            )

    def session(self, session_id):
        found = self.sessions(session_id=session_id)
        return found[0] if found else None

    def sessions(self, owner=None, session_id=None):
        sql = (
            "SELECT s.id, s.owner, s.created, (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id), s.config "
            "FROM sessions s WHERE (? IS NULL OR s.owner = ?) AND (? IS NULL OR s.id = ?) ORDER BY s.created, s.id"
        )
        return [SessionInfo(*row) for row in self._read(sql, (owner, owner, session_id, session_id))]

    def delete_session(self, session_id):
        with self._transaction() as db:
            return db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def append_turns(self, session_id, turns):
        with self._transaction() as db:
            self._require(db, session_id)
            (count,) = db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
            for offset, t in enumerate(turns):
                if t.index != count + offset:
                    raise StoreError(f"session {session_id!r}: turn index {t.index} does not continue the {count + offset} stored turns")
            db.executemany(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(session_id, t.index, t.role, t.text, t.speaker, t.session, t.dia_id, json.dumps([asdict(c) for c in t.tool_calls]), t.tool_call_id) for t in turns],
            )

    def turns(self, session_id, start=0, stop=None):
        rows = self._read(
            "SELECT idx, role, text, speaker, session_no, dia_id, tool_calls, tool_call_id FROM turns "
            "WHERE session_id = ? AND idx >= ? AND (? IS NULL OR idx < ?) ORDER BY idx",
            (session_id, start, stop, stop),
        )
        return [Turn(i, role, text, speaker, sess, dia, _calls(calls), call) for i, role, text, speaker, sess, dia, calls, call in rows]

    def save_pages(self, session_id, pages):
        with self._transaction() as db:
            self._require(db, session_id)
            db.executemany(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?)",
                [(session_id, p.id, p.first_turn, p.last_turn, p.tokens) for p in pages],
            )

    def pages(self, session_id):
        bounds = self._read("SELECT page_id, first_turn, last_turn, tokens FROM pages WHERE session_id = ? ORDER BY page_id", (session_id,))
        if not bounds:
            return []
        turns = self.turns(session_id, bounds[0][1], max(b[2] for b in bounds) + 1)
        first = turns[0].index
        return [Page(pid, tuple(turns[a - first : b - first + 1]), tokens) for pid, a, b, tokens in bounds]

    def save_bookmarks(self, session_id, bookmarks, strategy):
        with self._transaction() as db:
            self._require(db, session_id)
            db.executemany(
                "INSERT OR REPLACE INTO bookmarks VALUES (?, ?, ?, ?)",
                [(session_id, b.page_id, json.dumps(b.keywords), strategy) for b in bookmarks],
            )

    def bookmarks(self, session_id):
        rows = self._read("SELECT page_id, keywords FROM bookmarks WHERE session_id = ? ORDER BY page_id", (session_id,))
        return [Bookmark(pid, tuple(json.loads(kw))) for pid, kw in rows]

    def record_references(self, session_id, step, page_ids, kind):
        now = time.time()
        with self._transaction() as db:
            self._require(db, session_id)
            db.executemany("INSERT INTO refs VALUES (?, ?, ?, ?, ?)", [(session_id, step, pid, kind, now) for pid in page_ids])

    def references(self, session_id):
        rows = self._read("SELECT step, page_id, kind, at FROM refs WHERE session_id = ? ORDER BY step, rowid", (session_id,))
        return [Reference(*row) for row in rows]

    def version(self, session_id):
        row = self._read("SELECT version FROM sessions WHERE id = ?", (session_id,))
        return row[0][0] if row else 0

    @contextmanager
    def hold(self, session_id, wait):
        if str(self.path) == ":memory:":  # one process: a lock of its own
            with self._memory_locks_guard:
                lock = self._memory_locks.setdefault(session_id, threading.Lock())
            if not lock.acquire(timeout=max(wait, 0)):
                raise SessionBusy(session_id, wait)
            try:
                yield
            finally:
                lock.release()
            return
        # a lock file per session beside the database, for servers sharing the file
        folder = self.path.parent / f"{self.path.name}.locks"
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / hashlib.sha256(session_id.encode()).hexdigest()[:32], os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SessionBusy(session_id, wait) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def close(self):
        with self._lock:
            self._db.close()
