"""What every PageStore backend promises, run on each: a SQLite file and PostgreSQL
(`store_at` in conftest.py: a path or a fresh database's URL)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from paged_context.bookmarks import Bookmark
from paged_context.calls import ToolCall
from paged_context.pages import Turn, segment
from paged_context.store import SessionBusy, StoreError, open_store


def turns(n, start=0):
    return [Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i} text", speaker="Ann" if i % 2 == 0 else None) for i in range(start, start + n)]


def test_round_trip(store_at):
    with open_store(store_at) as store:
        store.create_session("s1", owner="key-a")
        calls = [Turn(0, "user", "weather?"), Turn(1, "assistant", "", tool_calls=(ToolCall("get_weather", "{}", "c1"),)), Turn(2, "tool", "sunny", tool_call_id="c1")]
        store.append_turns("s1", calls)
        store.append_turns("s1", turns(3, start=3))
        assert store.turns("s1") == calls + turns(3, start=3)
        assert store.turns("s1", 2, 4) == store.turns("s1")[2:4] and store.turns("s1", 4) == store.turns("s1")[4:]
        pages = segment(store.turns("s1"), "fixed_2")
        store.save_pages("s1", pages)
        assert store.pages("s1") == pages
        assert [p.tokens for p in store.pages("s1")] == [p.tokens for p in pages]
        marks = [Bookmark(p.id, ("kw", f"p{p.id}")) for p in pages]
        store.save_bookmarks("s1", marks, "distinctive")
        assert store.bookmarks("s1") == marks
        store.record_references("s1", 5, [3, 1], "recall")
        store.record_references("s1", 6, [2], "prefetch")
        assert [(r.step, r.page_id, r.kind) for r in store.references("s1")] == [(5, 3, "recall"), (5, 1, "recall"), (6, 2, "prefetch")]
        info = store.session("s1")
        assert (info.id, info.owner, info.turns) == ("s1", "key-a", 6)
    with open_store(store_at) as again:  # everything was committed
        assert again.turns("s1") == calls + turns(3, start=3) and again.pages("s1") == pages and again.bookmarks("s1") == marks


def test_pages_and_bookmarks_with_the_same_ids_are_replaced(store_at):
    with open_store(store_at) as store:
        store.create_session("s")
        store.append_turns("s", turns(6))
        first = segment(store.turns("s")[:4], "fixed_2")
        store.save_pages("s", first)
        regrown = segment(store.turns("s"), "fixed_3")  # page ids 0 and 1 again, over other turns
        store.save_pages("s", regrown)
        assert store.pages("s") == regrown
        store.save_bookmarks("s", [Bookmark(0, ("a",)), Bookmark(1, ("b",))], "distinctive")
        store.save_bookmarks("s", [Bookmark(1, ("c", "d"))], "llm")
        assert store.bookmarks("s") == [Bookmark(0, ("a",)), Bookmark(1, ("c", "d"))]


def test_text_comes_back_verbatim(store_at):
    texts = ["", "a\x00b", "naïve café ✓ 🚀 中文", "line\nbreak\ttab\r\n", "'; DROP TABLE turns; --", "x" * 200_000]
    with open_store(store_at) as store:
        store.create_session("s", config='{"policy": "lru"}')
        store.append_turns("s", [Turn(i, "tool", text, dia_id=f"D{i}", tool_call_id=f"c{i}") for i, text in enumerate(texts)])
        assert [t.text for t in store.turns("s")] == texts and store.turns("s")[1].dia_id == "D1"


def test_turns_must_continue_the_session(store_at):
    with open_store(store_at) as store:
        store.create_session("s")
        store.append_turns("s", turns(2))
        with pytest.raises(StoreError, match="does not continue"):
            store.append_turns("s", turns(2, start=1))
        with pytest.raises(StoreError, match="does not continue"):
            store.append_turns("s", [*turns(1, start=2), *turns(1, start=4)])
        assert len(store.turns("s")) == 2  # a rejected batch lands not even in part
        with pytest.raises(StoreError, match="no session"):
            store.append_turns("missing", turns(1))
        for write in (lambda: store.save_pages("missing", []), lambda: store.record_references("missing", 0, [1], "recall")):
            with pytest.raises(StoreError, match="no session"):
                write()
        assert store.session("missing") is None and store.turns("missing") == [] and store.pages("missing") == []


def test_owners_and_configs(store_at):
    with open_store(store_at) as store:
        store.create_session("b", owner="key-a", config='{"policy": "lru"}')
        store.create_session("a", owner="key-b")
        store.create_session("c")
        store.create_session("b", owner="key-b", config='{"policy": "fifo"}')  # exists: keeps its owner and config
        assert (store.session("b").owner, store.session("b").config) == ("key-a", '{"policy": "lru"}')
        assert [s.id for s in store.sessions()] == ["b", "a", "c"]  # in the order they were created
        assert [s.id for s in store.sessions(owner="key-b")] == ["a"] and store.sessions(owner="other") == []
        assert store.session("c").owner is None and store.session("c").config is None
        assert store.session("b").created <= store.session("a").created <= time.time()


def test_deleting_a_session_deletes_what_hangs_off_it(store_at):
    with open_store(store_at) as store:
        for name in ("gone", "kept"):
            store.create_session(name, owner="k")
            store.append_turns(name, turns(4))
            store.save_pages(name, segment(store.turns(name), "fixed_2"))
            store.save_bookmarks(name, [Bookmark(0, ("kw",))], "distinctive")
            store.record_references(name, 1, [0], "recall")
        assert store.delete_session("gone") is True and store.delete_session("gone") is False
        assert store.session("gone") is None and store.version("gone") == 0
        assert (store.turns("gone"), store.pages("gone"), store.bookmarks("gone"), store.references("gone")) == ([], [], [], [])
        store.create_session("gone")  # the id is free again, and starts empty
        store.append_turns("gone", turns(1))
        assert len(store.turns("gone")) == 1 and store.pages("gone") == []
        assert len(store.turns("kept")) == 4 and len(store.pages("kept")) == 2 and len(store.references("kept")) == 1


def test_threads_share_one_store(store_at):
    with open_store(store_at) as store:

        def writer(name):
            store.create_session(name)
            for i in range(50):
                store.append_turns(name, turns(1, start=i))

        threads = [threading.Thread(target=writer, args=(f"s{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(s.turns for s in store.sessions()) == [50] * 4
        assert all(store.version(f"s{i}") == 50 for i in range(4))


def test_writers_racing_for_the_same_turn_index_land_one(store_at):
    """Two replicas appending the same next turn: one lands, the others are told it does not continue."""
    with open_store(store_at) as store:
        store.create_session("s")
        store.append_turns("s", turns(1))
        start, outcomes = threading.Barrier(4), []

        def writer(k):
            with open_store(store_at) as own:
                start.wait()
                try:
                    own.append_turns("s", [Turn(1, "assistant", f"answer {k}")])
                    outcomes.append("landed")
                except StoreError as e:
                    outcomes.append(str(e))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("landed") == 1 and all("does not continue" in o for o in outcomes if o != "landed")
        assert len(store.turns("s")) == 2 and store.version("s") == 2


def test_a_session_version_counts_its_writes(store_at):
    with open_store(store_at) as store:
        assert store.version("s") == 0
        store.create_session("s")
        store.append_turns("s", [Turn(0, "user", "hello")])
        store.record_references("s", 0, [1], "recall")
        assert store.version("s") == 2
        with pytest.raises(StoreError):
            store.append_turns("s", [Turn(5, "user", "out of order")])
        assert store.version("s") == 2  # a rejected write changed nothing
        store.save_pages("s", segment(store.turns("s"), "fixed_2"))
        store.save_bookmarks("s", [Bookmark(0, ("hello",))], "distinctive")
        assert store.version("s") == 4
        with open_store(store_at) as other:  # another server on the same store sees it
            other.append_turns("s", [Turn(1, "assistant", "hi")])
        assert store.version("s") == 5


def test_one_writer_holds_a_session(store_at):
    with open_store(store_at) as store:
        store.create_session("s")
        with store.hold("s", wait=1):
            with pytest.raises(SessionBusy, match="busy after 0.05 s"):
                with store.hold("s", wait=0.05):
                    pass
            with store.hold("t", wait=0):  # other sessions are free
                pass
            store.append_turns("s", turns(1))  # the holder writes
            with open_store(store_at) as other, pytest.raises(SessionBusy):  # another server waits too
                with other.hold("s", wait=0.05):
                    pass
        with store.hold("s", wait=0):  # released on leaving the block
            pass
        with pytest.raises(KeyError), store.hold("s", wait=0):
            raise KeyError("the block failed")
        with store.hold("s", wait=0):  # and when the block raises
            pass
        assert len(store.turns("s")) == 1


def test_a_waiting_writer_gets_the_session_when_it_is_let_go(store_at):
    with open_store(store_at) as store:
        order = []
        holding = threading.Event()

        def first():
            with store.hold("s", wait=0):
                holding.set()
                time.sleep(0.3)
                order.append("first")

        thread = threading.Thread(target=first)
        thread.start()
        holding.wait()
        with store.hold("s", wait=10):
            order.append("second")
        thread.join()
        assert order == ["first", "second"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from paged_context.store import open_store
    store = open_store(sys.argv[1])
    with store.hold("s", wait=10):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_hold_ends_with_the_process_that_held_it(store_at):
    """A replica that dies (here: SIGKILL) while it answers leaves the session free."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, store_at], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with open_store(store_at) as store:
            with pytest.raises(SessionBusy):
                with store.hold("s", wait=0.1):
                    pass
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            started = time.monotonic()
            with store.hold("s", wait=10):
                pass
            assert time.monotonic() - started < 5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
