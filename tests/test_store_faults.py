"""A store that cannot write (read-only, full) raises StoreUnavailable, keeps every
committed turn, and writes again once it can; the session registry keeps memory bounded
and drops what a failed request may have half written. No model, no server."""

import asyncio
import sqlite3

import pytest

from paged_context.pages import Turn
from paged_context.session import PagingConfig
from paged_context.store import SQLiteStore, StoreUnavailable, sqlite_fault
from serve.sessions import SessionRegistry


def turn(i: int) -> Turn:
    return Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i} " + "words " * 200)


def test_a_read_only_connection_gives_store_unavailable_and_the_next_write_reopens(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        store.create_session("s")
        store.append_turns("s", [turn(0), turn(1)])
        store._db.execute("PRAGMA query_only = 1")  # as a database opened read-only
        with pytest.raises(StoreUnavailable, match="the page store cannot write: attempt to write a readonly database"):
            store.append_turns("s", [turn(2)])
        assert [t.index for t in store.turns("s")] == [0, 1]  # reads go on
        store.append_turns("s", [turn(2)])  # opened again: writable
        assert [t.index for t in store.turns("s")] == [0, 1, 2]


def test_a_full_database_gives_store_unavailable_rolls_back_and_writes_again_when_there_is_room(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        store.create_session("s")
        store.append_turns("s", [turn(0)])
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # as a full disk: SQLITE_FULL
        for attempt in range(3):  # every attempt fails cleanly: no transaction is left open
            with pytest.raises(StoreUnavailable, match="database or disk is full"):
                store.append_turns("s", [turn(i) for i in range(1, 21)])
            assert not store._db.in_transaction
        assert [t.index for t in store.turns("s")] == [0] and store.version("s") == 1  # nothing of the failed writes landed
        store._db.execute("PRAGMA max_page_count = 1000000")
        store.append_turns("s", [turn(1), turn(2)])
        assert [t.index for t in store.turns("s")] == [0, 1, 2]
    with sqlite3.connect(tmp_path / "pages.db") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_which_sqlite_errors_are_faults():
    assert sqlite_fault(sqlite3.OperationalError("no such table: x")) == (None, False)
    fault, reopen = sqlite_fault(sqlite3.OperationalError("database or disk is full"))
    assert str(fault) == "the page store cannot write: database or disk is full" and not reopen
    assert sqlite_fault(sqlite3.OperationalError("attempt to write a readonly database"))[1]


def test_an_existing_store_that_cannot_open_yet_opens_at_first_use(tmp_path, monkeypatch):
    db = tmp_path / "pages.db"
    with SQLiteStore(db) as store:
        store.create_session("s")
    failing = sqlite3.OperationalError("unable to open database file")
    real = SQLiteStore._connect
    monkeypatch.setattr(SQLiteStore, "_connect", lambda self: (_ for _ in ()).throw(failing))
    store = SQLiteStore(db)  # read-only media: starts anyway
    with pytest.raises(StoreUnavailable, match="unable to open"):
        store.sessions()
    monkeypatch.setattr(SQLiteStore, "_connect", real)
    assert [s.id for s in store.sessions()] == ["s"]
    store.close()
    with pytest.raises(StoreUnavailable):  # no file at all: a bad path fails at once
        monkeypatch.setattr(SQLiteStore, "_connect", lambda self: (_ for _ in ()).throw(failing))
        SQLiteStore(tmp_path / "nothing.db")


@pytest.fixture
def store(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        yield store


def registry(store, **limits) -> tuple[SessionRegistry, list[str]]:
    """A registry over `store`, and the sessions whose engine state it has dropped."""
    forgotten = []
    return SessionRegistry(store, PagingConfig(), lambda text: len(text.split()), forget=forgotten.append, **limits), forgotten


async def say(sessions: SessionRegistry, session_id: str, text: str) -> None:
    async with sessions.writing(session_id, None) as held:
        await held.run(lambda: held.session.add_turn("user", text))


def test_sessions_leave_memory_least_recently_used_first_and_reopen_from_the_store(store):
    sessions, forgotten = registry(store, max_open=2)

    async def run():
        for name in "abc":
            await say(sessions, name, f"hello from {name}")
        assert forgotten == ["a"] and set(sessions.open) == {"b", "c"} and set(sessions.locks) == {"b", "c"}
        await say(sessions, "b", "b again")  # b is the most recently used now
        await say(sessions, "a", "a again")  # reopened from the store; c leaves
        assert forgotten == ["a", "c"] and set(sessions.open) == {"a", "b"}
        assert [t.text for t in sessions.open["a"].turns] == ["hello from a", "a again"]

    asyncio.run(run())
    assert sessions.evicted == 2


def test_a_session_in_use_never_leaves_memory(store):
    sessions, forgotten = registry(store, max_open=1, idle_seconds=0)

    async def run():
        async with sessions.writing("busy", None) as held:
            await held.run(lambda: held.session.add_turn("user", "working"))
            waiting = asyncio.create_task(say(sessions, "busy", "queued"))  # waits for the lock: in use too
            await asyncio.sleep(0)
            for name in ("x", "y"):
                await say(sessions, name, "hi")
            assert "busy" in sessions.open and "busy" in sessions.locks and "busy" not in forgotten
        await waiting
        assert [t.text for t in sessions.open["busy"].turns] == ["working", "queued"]
        assert "busy" in sessions.sweep() and not sessions.open  # idle now (idle_seconds=0)

    asyncio.run(run())


def test_idle_sessions_leave_memory_on_the_next_request(store):
    sessions, forgotten = registry(store, idle_seconds=600)

    async def run():
        for name in "ab":
            await say(sessions, name, "hi")
        assert sessions.sweep() == []
        assert sessions.sweep(now=sessions.used["b"] + 601) == ["a", "b"]
        assert not sessions.open and not sessions.used and forgotten == ["a", "b"]

    asyncio.run(run())


def test_a_request_failing_on_the_store_leaves_no_half_written_session(store):
    sessions, _ = registry(store)

    async def run():
        await say(sessions, "s", "kept")
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreUnavailable):
            await say(sessions, "s", "lost " * 2000)
        assert "s" not in sessions.open  # what it held may differ from the store
        store._db.execute("PRAGMA max_page_count = 1000000")
        await say(sessions, "s", "after")
        assert [t.text for t in sessions.open["s"].turns] == ["kept", "after"]

    asyncio.run(run())
