import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from paged_context.calls import ToolCall
from paged_context.pages import Turn
from paged_context.store import SQLITE_MIGRATIONS, SessionBusy, SQLiteStore, StoreError, open_store


WRITER = textwrap.dedent(
    """
    import sys
    from paged_context.pages import Turn
    from paged_context.store import SQLiteStore
    store = SQLiteStore(sys.argv[1])
    store.create_session("s")
    batch = int(sys.argv[2])
    i = 0
    while True:
        store.append_turns("s", [Turn(j, "user", "x" * 300 + str(j)) for j in range(i, i + batch)])
        i += batch
        print(i, flush=True)  # acknowledged: every turn below i is committed
    """
)


@pytest.mark.parametrize("batch", [1, 25])
def test_sigkill_mid_write_loses_no_committed_turn(tmp_path, batch):
    db = tmp_path / "pages.db"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(batch)], stdout=subprocess.PIPE, text=True)
    acked = 0
    for line in child.stdout:
        acked = int(line)
        if acked >= 200:
            break
    os.kill(child.pid, signal.SIGKILL)  # most likely inside a write: the loop never rests
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SQLiteStore(db) as store:
        stored = store.turns("s")
    assert len(stored) >= acked
    assert len(stored) % batch == 0  # a batch lands whole or not at all
    assert [t.index for t in stored] == list(range(len(stored)))
    assert all(t.text == "x" * 300 + str(t.index) for t in stored)


# The schemas that releases before counted migrations wrote, oldest first: the first
# release's; sessions with their own options; turns with whole tool calls (today's
# release); sessions with a version. Each opens, user_version 0, with its data intact.
SESSIONS = "CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT, created REAL NOT NULL{});"
TURNS = (
    "CREATE TABLE turns (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, idx INTEGER NOT NULL, role TEXT NOT NULL, "
    "text TEXT NOT NULL, speaker TEXT, session_no INTEGER, dia_id TEXT, {} TEXT NOT NULL, tool_call_id TEXT, PRIMARY KEY (session_id, idx));"
)
REST = """
CREATE TABLE pages (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, page_id INTEGER NOT NULL, first_turn INTEGER NOT NULL,
    last_turn INTEGER NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (session_id, page_id));
CREATE TABLE bookmarks (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, page_id INTEGER NOT NULL, keywords TEXT NOT NULL,
    strategy TEXT NOT NULL, PRIMARY KEY (session_id, page_id));
CREATE TABLE refs (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, step INTEGER NOT NULL, page_id INTEGER NOT NULL,
    kind TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX refs_by_session ON refs (session_id, step);
INSERT INTO pages VALUES ('s', 0, 0, 2, 9);
INSERT INTO bookmarks VALUES ('s', 0, '["weather"]', 'distinctive');
INSERT INTO refs VALUES ('s', 3, 0, 'recall', 1.5);
"""
OLD_SCHEMAS = {
    "first release": (SESSIONS.format(""), TURNS.format("tool_call_ids"), "INSERT INTO sessions VALUES ('s', 'key', 0);", '["c1"]'),
    "session options": (SESSIONS.format(", config TEXT"), TURNS.format("tool_call_ids"), "INSERT INTO sessions VALUES ('s', 'key', 0, '{}');", '["c1"]'),
    "whole tool calls": (
        SESSIONS.format(", config TEXT"), TURNS.format("tool_calls"), "INSERT INTO sessions VALUES ('s', 'key', 0, '{}');",
        '[{"name": "get_weather", "arguments": "{}", "id": "c1"}]',
    ),
    "session versions": (
        SESSIONS.format(", config TEXT, version INTEGER NOT NULL DEFAULT 0"), TURNS.format("tool_calls"),
        "INSERT INTO sessions VALUES ('s', 'key', 0, '{}', 7);", '[{"name": "get_weather", "arguments": "{}", "id": "c1"}]',
    ),
}


@pytest.mark.parametrize("release", OLD_SCHEMAS)
def test_a_store_from_an_earlier_release_opens_with_its_data(tmp_path, release):
    sessions, turns_table, session_row, calls = OLD_SCHEMAS[release]
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.executescript(
            sessions + turns_table + session_row + REST
            + f"""INSERT INTO turns VALUES ('s', 0, 'user', 'weather?', 'Ann', 1, 'D1:1', '[]', NULL);
            INSERT INTO turns VALUES ('s', 1, 'assistant', '', NULL, NULL, NULL, '{calls}', NULL);
            INSERT INTO turns VALUES ('s', 2, 'tool', 'sunny', NULL, NULL, NULL, '[]', 'c1');"""
        )
    with SQLiteStore(db) as store:
        before = store.turns("s")
        assert [t.text for t in before] == ["weather?", "", "sunny"] and (before[0].speaker, before[0].session, before[0].dia_id) == ("Ann", 1, "D1:1")
        assert before[1].tool_call_ids == ("c1",) and before[2].tool_call_id == "c1"
        assert [p.id for p in store.pages("s")] == [0] and store.bookmarks("s")[0].keywords == ("weather",)
        assert [(r.step, r.page_id) for r in store.references("s")] == [(3, 0)] and store.session("s").owner == "key"
        version = store.version("s")
        call = ToolCall("get_weather", '{"city": "Lisbon"}', "c2")
        store.append_turns("s", [Turn(3, "assistant", "", tool_calls=(call,))])
        assert store.turns("s")[3].tool_calls == (call,) and store.version("s") == version + 1
        store.create_session("new", config='{"policy": "lru"}')
        assert store.session("new").config == '{"policy": "lru"}'
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SQLiteStore(db) as store:  # opening again changes nothing
        assert len(store.turns("s")) == 4


def test_a_new_store_has_every_migration_and_a_newer_one_is_refused(tmp_path):
    with SQLiteStore(tmp_path / "pages.db"):
        pass
    with sqlite3.connect(tmp_path / "pages.db") as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)
        raw.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this release"):
        SQLiteStore(tmp_path / "pages.db")


def test_a_memory_store_holds_sessions_within_the_process():
    with SQLiteStore(":memory:") as store:
        with store.hold("s", wait=1):
            with pytest.raises(SessionBusy, match="busy after 0.05 s"):
                with store.hold("s", wait=0.05):
                    pass
            with pytest.raises(SessionBusy):  # a waiter giving up leaves the holder's lock in place
                with store.hold("s", wait=0):
                    pass
            with store.hold("t", wait=0):
                pass
        with store.hold("s", wait=0):
            pass
        assert store._memory_locks == {}  # a lock per session ever held would grow without end


def test_open_store_takes_a_path_or_a_postgresql_url(tmp_path, monkeypatch):
    with open_store(tmp_path / "a.db") as store, open_store(str(tmp_path / "b.db")) as other:
        assert isinstance(store, SQLiteStore) and isinstance(other, SQLiteStore)
    with pytest.raises(TypeError, match="no options"):
        open_store(tmp_path / "c.db", pool_size=4)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "paged_context.postgres_store", raising=False)
    for url in ("postgresql://u@db/pages", "postgres://u@db/pages"):
        with pytest.raises(ImportError, match=r"paged-context\[postgres\]"):
            open_store(url)
