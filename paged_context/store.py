"""Durable page storage: sessions, turns, pages, bookmarks and reference history.

`PageStore` is the interface; `SQLiteStore` the default backend, `PostgresStore`
(paged_context.postgres_store) the one replicas share; `open_store` picks one from a path
or a postgresql:// URL. A write returns only after it is committed to disk (SQLite: WAL
journal, synchronous=FULL), so a turn whose append returned survives a crash or SIGKILL of
the process right after. Pages are stored as turn ranges, never as copies: the turns are
the single verbatim record.

Each backend has an ordered list of schema migrations; the database records how many it
has had (SQLite: `PRAGMA user_version`; PostgreSQL: a one-row table), and opening a store
applies the rest in one transaction, so a store written by an earlier release opens with
its data intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .bookmarks import Bookmark
from .calls import ToolCall
from .pages import Page, Turn
from .text import TokenCounter, approx_tokens

log = logging.getLogger(__name__)


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


class StoreUnavailable(RuntimeError):
    """The store cannot write now: a read-only database or file system, a full disk, a
    database server out of reach. The write did not happen (its transaction was rolled
    back) and what was written before is intact; the same write succeeds once the store
    can write again. The server answers HTTP 503 with Retry-After."""

    def __init__(self, reason: str):
        super().__init__(f"the page store cannot write: {reason}")
        self.reason = reason


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


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(where: str | Path, count_tokens: TokenCounter = approx_tokens, **options: Any) -> PageStore:
    """A postgresql:// (or postgres://) URL: a `PostgresStore` (`options`: its pool_size);
    anything else: the path of a SQLite file (or ':memory:')."""
    if isinstance(where, str) and where.startswith(POSTGRES_SCHEMES):
        try:
            from .postgres_store import PostgresStore
        except ImportError as e:
            raise ImportError(
                f"a postgresql:// page store needs psycopg and psycopg-pool ({e}): pip install 'paged-context[postgres]'"
            ) from e
        return PostgresStore(where, count_tokens, **options)
    if options:
        raise TypeError(f"a SQLite page store takes no options, got {sorted(options)}")
    return SQLiteStore(where, count_tokens)


Migration = TypeVar("Migration")


def pending_migrations(applied: int, migrations: Sequence[Migration], where: str) -> Sequence[Migration]:
    """The migrations a database that has had the first `applied` still needs."""
    if applied > len(migrations):
        raise StoreError(f"{where} has schema version {applied}, newer than this release's {len(migrations)}: open it with a newer paged-context")
    return migrations[applied:]


def _calls(stored: str) -> tuple[ToolCall, ...]:
    # stores written before whole calls were kept hold their ids only
    return tuple(ToolCall("", "", c) if isinstance(c, str) else ToolCall(**c) for c in json.loads(stored))


class SQLStore(PageStore):
    """Every method over a DB-API connection, in SQL both SQLite and PostgreSQL run (`?`
    placeholders, which a backend may rewrite in `_sql`). A backend gives a committed write
    transaction (`_transaction`), reads (`_read`), the session lock and the schema."""

    _refs_order = "rowid"  # the column that orders a step's references as they were recorded

    count_tokens: TokenCounter

    @abstractmethod
    def _transaction(self, session_id: str | None = None) -> AbstractContextManager[Any]:
        """One write transaction on a connection, committed before the block's caller goes on."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]: ...

    def _sql(self, sql: str) -> str:
        return sql

    def _text(self, text: str) -> Any:
        """A turn's text as the database stores it."""
        return text

    def _untext(self, stored: Any) -> str:
        return stored

    def _execute(self, db, sql: str, params: Sequence = ()):
        return db.execute(self._sql(sql), params)

    def _executemany(self, db, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            db.cursor().executemany(self._sql(sql), rows)

    def _require(self, db, session_id: str) -> None:
        """The session exists; the transaction writes to it, so its version moves on (and,
        on PostgreSQL, the session's row stays locked against other writers until commit)."""
        if self._execute(db, "UPDATE sessions SET version = version + 1 WHERE id = ?", (session_id,)).rowcount == 0:
            raise StoreError(f"no session {session_id!r}")

    def create_session(self, session_id, owner=None, config=None):
        with self._transaction(session_id) as db:
            self._execute(
                db, "INSERT INTO sessions (id, owner, created, config) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (session_id, owner, time.time(), config),
            )

    def session(self, session_id):
        found = self.sessions(session_id=session_id)
        return found[0] if found else None

    def sessions(self, owner=None, session_id=None):
        sql = (
            "SELECT s.id, s.owner, s.created, (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id), s.config FROM sessions s "
            "WHERE (CAST(? AS TEXT) IS NULL OR s.owner = ?) AND (CAST(? AS TEXT) IS NULL OR s.id = ?) ORDER BY s.created, s.id"
        )
        return [SessionInfo(*row) for row in self._read(sql, (owner, owner, session_id, session_id))]

    def delete_session(self, session_id):
        with self._transaction(session_id) as db:
            return self._execute(db, "DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def append_turns(self, session_id, turns):
        with self._transaction(session_id) as db:
            self._require(db, session_id)
            (count,) = self._execute(db, "SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
            for offset, t in enumerate(turns):
                if t.index != count + offset:
                    raise StoreError(f"session {session_id!r}: turn index {t.index} does not continue the {count + offset} stored turns")
            self._executemany(
                db,
                "INSERT INTO turns (session_id, idx, role, text, speaker, session_no, dia_id, tool_calls, tool_call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (session_id, t.index, t.role, self._text(t.text), t.speaker, t.session, t.dia_id, json.dumps([asdict(c) for c in t.tool_calls]), t.tool_call_id)
                    for t in turns
                ],
            )

    def turns(self, session_id, start=0, stop=None):
        rows = self._read(
            "SELECT idx, role, text, speaker, session_no, dia_id, tool_calls, tool_call_id FROM turns "
            "WHERE session_id = ? AND idx >= ? AND (CAST(? AS INTEGER) IS NULL OR idx < ?) ORDER BY idx",
            (session_id, start, stop, stop),
        )
        return [Turn(i, role, self._untext(text), speaker, sess, dia, _calls(calls), call) for i, role, text, speaker, sess, dia, calls, call in rows]

    def save_pages(self, session_id, pages):
        with self._transaction(session_id) as db:
            self._require(db, session_id)
            self._executemany(
                db,
                "INSERT INTO pages (session_id, page_id, first_turn, last_turn, tokens) VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id, page_id) "
                "DO UPDATE SET first_turn = excluded.first_turn, last_turn = excluded.last_turn, tokens = excluded.tokens",
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
        with self._transaction(session_id) as db:
            self._require(db, session_id)
            self._executemany(
                db,
                "INSERT INTO bookmarks (session_id, page_id, keywords, strategy) VALUES (?, ?, ?, ?) ON CONFLICT (session_id, page_id) "
                "DO UPDATE SET keywords = excluded.keywords, strategy = excluded.strategy",
                [(session_id, b.page_id, json.dumps(b.keywords), strategy) for b in bookmarks],
            )

    def bookmarks(self, session_id):
        rows = self._read("SELECT page_id, keywords FROM bookmarks WHERE session_id = ? ORDER BY page_id", (session_id,))
        return [Bookmark(pid, tuple(json.loads(kw))) for pid, kw in rows]

    def record_references(self, session_id, step, page_ids, kind):
        now = time.time()
        with self._transaction(session_id) as db:
            self._require(db, session_id)
            self._executemany(
                db, "INSERT INTO refs (session_id, step, page_id, kind, at) VALUES (?, ?, ?, ?, ?)", [(session_id, step, pid, kind, now) for pid in page_ids]
            )

    def references(self, session_id):
        rows = self._read(f"SELECT step, page_id, kind, at FROM refs WHERE session_id = ? ORDER BY step, {self._refs_order}", (session_id,))
        return [Reference(*row) for row in rows]

    def version(self, session_id):
        row = self._read("SELECT version FROM sessions WHERE id = ?", (session_id,))
        return row[0][0] if row else 0


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _sqlite_tables(db: sqlite3.Connection) -> None:
    """1: the tables as the first release wrote them."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, owner TEXT, created REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS turns (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
        "idx INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, speaker TEXT, session_no INTEGER, dia_id TEXT, "
        "tool_call_ids TEXT NOT NULL, tool_call_id TEXT, PRIMARY KEY (session_id, idx))",
        "CREATE TABLE IF NOT EXISTS pages (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
        "page_id INTEGER NOT NULL, first_turn INTEGER NOT NULL, last_turn INTEGER NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (session_id, page_id))",
        "CREATE TABLE IF NOT EXISTS bookmarks (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
        "page_id INTEGER NOT NULL, keywords TEXT NOT NULL, strategy TEXT NOT NULL, PRIMARY KEY (session_id, page_id))",
        "CREATE TABLE IF NOT EXISTS refs (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
        "step INTEGER NOT NULL, page_id INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS refs_by_session ON refs (session_id, step)",
    ):
        db.execute(statement)


# Stores from before migrations were counted (user_version 0) got the later columns from
# ad-hoc ALTERs at open, so migrations 2 to 4 look before they change a table.


def _sqlite_session_config(db: sqlite3.Connection) -> None:
    """2: a session keeps its own paging options."""
    if "config" not in _columns(db, "sessions"):
        db.execute("ALTER TABLE sessions ADD COLUMN config TEXT")


def _sqlite_whole_tool_calls(db: sqlite3.Connection) -> None:
    """3: turns keep whole tool calls, not only their ids (the JSON of old rows is read as ids)."""
    if "tool_call_ids" in _columns(db, "turns"):
        db.execute("ALTER TABLE turns RENAME COLUMN tool_call_ids TO tool_calls")


def _sqlite_session_version(db: sqlite3.Connection) -> None:
    """4: a session counts its write transactions (replicas sharing a store)."""
    if "version" not in _columns(db, "sessions"):
        db.execute("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")


SQLITE_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _sqlite_tables,
    _sqlite_session_config,
    _sqlite_whole_tool_calls,
    _sqlite_session_version,
)


# SQLite's primary result codes for a store that cannot write now (busy past the busy
# timeout, read-only, I/O error, full, cannot open), each with whether the connection is
# opened again before its next use: read-only media made SQLite open it read-only
SQLITE_FAULTS = {5: False, 8: True, 10: False, 13: False, 14: True}
SQLITE_FAULT_MESSAGES = {"database is locked": False, "readonly": True, "disk i/o error": False, "disk is full": False, "unable to open": True}


def sqlite_fault(e: sqlite3.Error) -> tuple[StoreUnavailable | None, bool]:
    """The StoreUnavailable a SQLite error means (None: another error), and whether the
    connection should be opened again. Python before 3.11 gives no result code: the message."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        reopen = SQLITE_FAULTS.get(code & 0xFF)
    else:
        reopen = next((again for words, again in SQLITE_FAULT_MESSAGES.items() if words in str(e).lower()), None)
    return (None, False) if reopen is None else (StoreUnavailable(str(e)), reopen)


@contextmanager
def _committed(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on `db`, committed (and fsynced) when the block ends, rolled
    back when it raises (or when COMMIT fails: SQLite may have rolled back a full disk's
    transaction itself)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


class SQLiteStore(SQLStore):
    """One SQLite file; safe to share between threads of one process. Its write errors
    that mean it cannot write now (read-only, full, I/O) raise StoreUnavailable; an
    existing file that cannot be opened at start (read-only media) is opened at first use."""

    def __init__(self, path: str | Path, count_tokens: TokenCounter = approx_tokens):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count_tokens = count_tokens
        self._lock = threading.Lock()
        self._memory_locks: dict[str, tuple[threading.Lock, int]] = {}  # session -> its lock, and how many hold or wait for it
        self._memory_locks_guard = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._reopen = False  # open the connection again before its next use
        self._failing = False  # the last use raised StoreUnavailable
        try:
            with self._lock, self._faults():
                self._connection()
        except StoreUnavailable:
            if not self.path.exists():  # nothing to wait for: a path no store can be made at
                raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        (applied,) = db.execute("PRAGMA user_version").fetchone()
        if applied == len(SQLITE_MIGRATIONS):
            return
        with _committed(db):
            (applied,) = db.execute("PRAGMA user_version").fetchone()  # another opener may have migrated meanwhile
            for migration in pending_migrations(applied, SQLITE_MIGRATIONS, str(self.path)):
                migration(db)
            db.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS)}")

    @contextmanager
    def _faults(self, writes: bool = False) -> Iterator[None]:
        """SQLite errors that mean the store cannot write now, as StoreUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as e:
            fault, reopen = sqlite_fault(e)
            if fault is None:
                raise
            self._reopen = self._reopen or (reopen and self._file)
            raise self._outage(fault) from e
        if writes and self._failing:
            log.warning("page store %s writes again", self.path)
            self._failing = False

    def _outage(self, fault: StoreUnavailable) -> StoreUnavailable:
        if not self._failing:  # logged once per outage, not per request
            log.warning("page store %s cannot write (%s); requests get HTTP 503 until it can", self.path, fault.reason)
        self._failing = True
        return fault

    @property
    def _file(self) -> bool:
        return str(self.path) != ":memory:"

    def _connection(self) -> sqlite3.Connection:
        """The connection (under `_lock`), opened again after a fault that asks for it, and
        while the file is read-only (SQLite then opens it read-only, and stays so)."""
        if self._db is None or self._reopen:
            if self._db is not None:  # first: a read-only connection keeps a new one from recovering the WAL
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            self._db = self._connect()
            self._reopen = self._file and not os.access(self.path, os.W_OK)
        return self._db

    @contextmanager
    def _transaction(self, session_id=None) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (and fsynced) before the block's caller goes on."""
        with self._lock, self._faults(writes=True):
            db = self._connection()
            try:
                with _committed(db):
                    yield db
            finally:
                if db.in_transaction:  # not even rolled back: start afresh
                    self._reopen = self._file

    def _read(self, sql, params=()):
        with self._lock, self._faults():
            return self._connection().execute(sql, params).fetchall()

    @contextmanager
    def hold(self, session_id, wait):
        if not self._file:  # one process: a lock of its own, kept while someone holds or waits for it
            with self._memory_locks_guard:
                lock, users = self._memory_locks.get(session_id, (threading.Lock(), 0))
                self._memory_locks[session_id] = (lock, users + 1)
            try:
                if not lock.acquire(timeout=max(wait, 0)):
                    raise SessionBusy(session_id, wait)
                try:
                    yield
                finally:
                    lock.release()
            finally:
                with self._memory_locks_guard:
                    lock, users = self._memory_locks.pop(session_id)
                    if users > 1:
                        self._memory_locks[session_id] = (lock, users - 1)
            return
        # a lock file per session beside the database, for servers sharing the file
        folder = self.path.parent / f"{self.path.name}.locks"
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(folder / hashlib.sha256(session_id.encode()).hexdigest()[:32], os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:  # read-only media, no room for the file
            raise self._outage(StoreUnavailable(f"the session's lock file: {e.strerror}")) from e
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
            if self._db is not None:
                self._db.close()
