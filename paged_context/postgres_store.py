"""`PostgresStore`: the page store on PostgreSQL, for replicas that share one store.

Same semantics as `SQLiteStore` (every method is `SQLStore`'s): a write returns after
PostgreSQL committed it (with the server's fsync and synchronous_commit on, durably),
`append_turns` is all or none and its indices must continue the session's, every write
transaction that takes a session moves its version on, deleting a session deletes what
hangs off it. Connections come from a `psycopg_pool.ConnectionPool`.

`hold` is a session-level advisory lock on a connection kept from the pool for the block:
if the holder's process dies, its connection drops and PostgreSQL lets the lock go. Writes
and reads that the holding thread makes inside the block use that same connection, so
holders never wait on the pool for their own work; the pool must still have room for a
connection per session held at once, plus those the other requests use (`pool_size`;
the server's `--db-pool-size`).

Advisory lock keys are database-wide: give paged-context a database of its own (or, with
`?options=-csearch_path%3D...`, a schema of its own, and no other user of the same keys).
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .store import SessionBusy, SQLStore, StoreUnavailable, pending_migrations
from .text import TokenCounter, approx_tokens

DEFAULT_POOL_SIZE = 16
# A request waiting for a pooled connection looks this often whether PostgreSQL is out of
# reach (the pool failed to connect while it waited): then it fails at once, a 503 in
# about this long instead of after the pool's whole timeout, which is for a busy pool
OUTAGE_CHECK_SECONDS = 1.0

# The ordered schema migrations; the database records how many it has had in
# paged_context_schema. Append, never edit one that a release shipped.
MIGRATIONS: tuple[str, ...] = (
    # 1: the tables as SQLiteStore has them after its 4th migration. A turn's text is bytes
    # (UTF-8): PostgreSQL's text cannot hold NUL, which a tool's output may contain.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, owner TEXT, created DOUBLE PRECISION NOT NULL, config TEXT, version BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX sessions_by_owner ON sessions (owner);
    CREATE TABLE turns (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, role TEXT NOT NULL, text BYTEA NOT NULL, speaker TEXT,
        session_no INTEGER, dia_id TEXT, tool_calls TEXT NOT NULL, tool_call_id TEXT,
        PRIMARY KEY (session_id, idx));
    CREATE TABLE pages (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        page_id INTEGER NOT NULL, first_turn INTEGER NOT NULL, last_turn INTEGER NOT NULL,
        tokens INTEGER NOT NULL, PRIMARY KEY (session_id, page_id));
    CREATE TABLE bookmarks (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        page_id INTEGER NOT NULL, keywords TEXT NOT NULL, strategy TEXT NOT NULL,
        PRIMARY KEY (session_id, page_id));
    CREATE TABLE refs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        step INTEGER NOT NULL, page_id INTEGER NOT NULL, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
    CREATE INDEX refs_by_session ON refs (session_id, step, id);
    """,
)


def lock_key(kind: str, name: str) -> int:
    """A 64-bit advisory lock key (signed, as PostgreSQL's bigint) for `name` of `kind`."""
    return int.from_bytes(hashlib.sha256(f"paged-context {kind}\0{name}".encode()).digest()[:8], "big", signed=True)


MIGRATION_LOCK = lock_key("schema", "migrate")


def migrate(conn: psycopg.Connection, where: str = "the database") -> int:
    """Apply the migrations the database has not had, in one transaction, under an advisory
    lock so that replicas starting together migrate one after another; the version now."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS paged_context_schema "
            "(only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), version INTEGER NOT NULL)"
        )
        row = conn.execute("SELECT version FROM paged_context_schema").fetchone()
        applied = row[0] if row else 0
        pending = pending_migrations(applied, MIGRATIONS, where)
        for migration in pending:
            conn.execute(migration)
        if pending:
            conn.execute(
                "INSERT INTO paged_context_schema (version) VALUES (%s) ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
                (len(MIGRATIONS),),
            )
    return len(MIGRATIONS)


class PostgresStore(SQLStore):
    """A PostgreSQL database (a libpq URL); safe to share between threads."""

    _refs_order = "id"

    def __init__(self, url: str, count_tokens: TokenCounter = approx_tokens, pool_size: int = DEFAULT_POOL_SIZE, timeout: float = 30.0):
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.url = url
        self.count_tokens = count_tokens
        where = _redacted(url)
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout))) as conn:  # fails at once when unreachable
            migrate(conn, where)
        # check: a pooled connection the server ended while it sat idle (a restart, a
        # failover, an idle timeout) is replaced before it is lent, not failed on a request.
        # reconnect_timeout=0: a connection that cannot be made is not retried in the
        # background, whose backoff doubles up to minutes; the next request that needs one
        # connects at once, so the first one after the database is back succeeds.
        self._connect_failed = -float("inf")  # when the pool last failed to make a connection (monotonic)
        self._pool = ConnectionPool(
            url, kwargs={"autocommit": True}, min_size=min(2, pool_size), max_size=pool_size, timeout=timeout,
            name=f"paged-context {where}", open=True, check=ConnectionPool.check_connection, reconnect_timeout=0,
            reconnect_failed=lambda pool: setattr(self, "_connect_failed", time.monotonic()),
        )
        self._held = threading.local()  # per thread: session id -> the connection holding its lock

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection (as `ConnectionPool.connection` lends it), waited for up to
        the pool's timeout while the pool is busy, but given up on once the pool failed
        to connect while this request waited (`OUTAGE_CHECK_SECONDS`): a failure before
        it (a server briefly at max_connections) does not shorten the wait."""
        started = time.monotonic()
        deadline = started + self._pool.timeout
        while True:
            try:
                conn = self._pool.getconn(timeout=max(min(OUTAGE_CHECK_SECONDS, deadline - time.monotonic()), 0.001))
                break
            except PoolTimeout:
                if self._connect_failed >= started or time.monotonic() >= deadline:
                    raise
        try:
            with conn:  # a pooled connection is not closed on exit
                yield conn
        finally:
            self._pool.putconn(conn)

    def _held_by_this_thread(self) -> dict[str, psycopg.Connection]:
        if not hasattr(self._held, "connections"):
            self._held.connections = {}
        return self._held.connections

    def _sql(self, sql):
        return sql.replace("?", "%s")

    def _text(self, text):
        return text.encode("utf-8")

    def _untext(self, stored):
        return bytes(stored).decode("utf-8")

    @contextmanager
    def _transaction(self, session_id=None) -> Iterator[psycopg.Connection]:
        held = self._held_by_this_thread().get(session_id)
        if held is not None:  # this thread holds the session: write on the lock's connection
            with _faults(), held.transaction():
                yield held
            return
        with _faults(), self._connection() as conn, conn.transaction():
            yield conn

    def _read(self, sql, params=()):
        held = next(iter(self._held_by_this_thread().values()), None)
        if held is not None:  # a request reads on the connection holding its session, so it needs one, not two
            with _faults():
                return held.execute(self._sql(sql), params).fetchall()
        with _faults(), self._connection() as conn:
            return conn.execute(self._sql(sql), params).fetchall()

    @contextmanager
    def hold(self, session_id, wait):
        key = lock_key("session", session_id)
        with _faults(), self._connection() as conn:
            deadline = time.monotonic() + wait
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                if time.monotonic() >= deadline:
                    raise SessionBusy(session_id, wait)
                time.sleep(0.01)
            held = self._held_by_this_thread()
            held[session_id] = conn
            try:
                yield
            finally:
                del held[session_id]
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    conn.close()  # the lock goes with the connection; the pool drops it

    def close(self):
        self._pool.close()


@contextmanager
def _faults() -> Iterator[None]:
    """psycopg's errors for a database that cannot write now (out of reach, a full disk,
    a read-only server, no pooled connection in time), as StoreUnavailable."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as e:
        raise StoreUnavailable((str(e).strip().splitlines() or [type(e).__name__])[0]) from e


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL store"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if k in ("host", "port", "dbname", "user")}) or url
