import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from paged_context.bookmarks import Bookmark
from paged_context.calls import ToolCall
from paged_context.pages import Turn, segment
from paged_context.store import SQLiteStore, StoreError


def turns(n, start=0):
    return [Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i} text", speaker="Ann" if i % 2 == 0 else None) for i in range(start, start + n)]


def test_round_trip(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        store.create_session("s1", owner="key-a")
        calls = [Turn(0, "user", "weather?"), Turn(1, "assistant", "", tool_calls=(ToolCall("get_weather", "{}", "c1"),)), Turn(2, "tool", "sunny", tool_call_id="c1")]
        store.append_turns("s1", calls)
        store.append_turns("s1", turns(3, start=3))
        assert store.turns("s1") == calls + turns(3, start=3)
        assert store.turns("s1", 2, 4) == store.turns("s1")[2:4]
        pages = segment(store.turns("s1"), "fixed_2")
        store.save_pages("s1", pages)
        assert store.pages("s1") == pages
        assert [p.tokens for p in store.pages("s1")] == [p.tokens for p in pages]
        marks = [Bookmark(p.id, ("kw", f"p{p.id}")) for p in pages]
        store.save_bookmarks("s1", marks, "distinctive")
        assert store.bookmarks("s1") == marks
        store.record_references("s1", 5, [1, 3], "recall")
        assert [(r.step, r.page_id, r.kind) for r in store.references("s1")] == [(5, 1, "recall"), (5, 3, "recall")]
        info = store.session("s1")
        assert (info.owner, info.turns) == ("key-a", 6)
        assert [s.id for s in store.sessions(owner="key-a")] == ["s1"] and store.sessions(owner="other") == []
    with SQLiteStore(tmp_path / "pages.db") as again:  # everything was on disk
        assert again.pages("s1") == pages
        assert again.delete_session("s1") is True and again.delete_session("s1") is False
        assert again.turns("s1") == [] and again.pages("s1") == [] and again.references("s1") == []


def test_turns_must_continue_the_session(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        store.create_session("s")
        store.append_turns("s", turns(2))
        with pytest.raises(StoreError, match="does not continue"):
            store.append_turns("s", turns(2, start=1))
        with pytest.raises(StoreError, match="does not continue"):
            store.append_turns("s", [*turns(1, start=2), *turns(1, start=4)])
        assert len(store.turns("s")) == 2  # a rejected batch lands not even in part
        with pytest.raises(StoreError, match="no session"):
            store.append_turns("missing", turns(1))


def test_threads_share_one_store(tmp_path):
    store = SQLiteStore(tmp_path / "pages.db")

    def writer(name):
        store.create_session(name)
        for i in range(50):
            store.append_turns(name, turns(1, start=i))

    threads = [threading.Thread(target=writer, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s.turns for s in store.sessions()] == [50] * 4
    store.close()


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


def test_a_store_from_before_whole_tool_calls_opens_and_keeps_its_turns(tmp_path):
    """Stores written by the previous release kept only the ids of an assistant turn's
    calls, in a column `tool_call_ids`; they open, and new turns keep whole calls."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.executescript(
            """
            CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT, created REAL NOT NULL, config TEXT);
            CREATE TABLE turns (session_id TEXT NOT NULL, idx INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, speaker TEXT,
                session_no INTEGER, dia_id TEXT, tool_call_ids TEXT NOT NULL, tool_call_id TEXT, PRIMARY KEY (session_id, idx));
            INSERT INTO sessions VALUES ('s', NULL, 0, NULL);
            INSERT INTO turns VALUES ('s', 0, 'user', 'weather?', NULL, NULL, NULL, '[]', NULL);
            INSERT INTO turns VALUES ('s', 1, 'assistant', '', NULL, NULL, NULL, '["c1"]', NULL);
            INSERT INTO turns VALUES ('s', 2, 'tool', 'sunny', NULL, NULL, NULL, '[]', 'c1');
            """
        )
    with SQLiteStore(db) as store:
        before = store.turns("s")
        assert [t.text for t in before] == ["weather?", "", "sunny"] and before[1].tool_call_ids == ("c1",) and before[2].tool_call_id == "c1"
        call = ToolCall("get_weather", '{"city": "Lisbon"}', "c2")
        store.append_turns("s", [Turn(3, "assistant", "", tool_calls=(call,))])
        assert store.turns("s")[3].tool_calls == (call,)
    with SQLiteStore(db) as store:  # opening again changes nothing
        assert len(store.turns("s")) == 4


def test_a_session_version_counts_its_writes(tmp_path):
    with SQLiteStore(tmp_path / "pages.db") as store:
        assert store.version("s") == 0
        store.create_session("s")
        store.append_turns("s", [Turn(0, "user", "hello")])
        store.record_references("s", 0, [1], "recall")
        assert store.version("s") == 2
        with SQLiteStore(tmp_path / "pages.db") as other:  # another server on the same file sees it
            other.append_turns("s", [Turn(1, "assistant", "hi")])
        assert store.version("s") == 3


@pytest.mark.parametrize("where", ["pages.db", ":memory:"])
def test_one_writer_holds_a_session(tmp_path, where):
    from paged_context.store import SessionBusy

    path = tmp_path / where if where != ":memory:" else where
    with SQLiteStore(path) as store:
        with store.hold("s", wait=1):
            with pytest.raises(SessionBusy, match="busy after 0.05 s"):
                with store.hold("s", wait=0.05):
                    pass
            with store.hold("t", wait=0):  # other sessions are free
                pass
            if where != ":memory:":  # and another process (here: another open of the file) waits too
                with SQLiteStore(path) as other, pytest.raises(SessionBusy):
                    with other.hold("s", wait=0.05):
                        pass
        with store.hold("s", wait=0):  # released on leaving the block
            pass
