import json
import subprocess
import sys

import pytest

from paged_context.bookmarks import Bookmark
from paged_context.pages import Turn, segment
from paged_context.sim.conversations import Conversation, Probe
from paged_context.sim.probes import pick_bookmark, simulate, split_spec


def conversation(probes, n=30):
    turns = tuple(Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(n))
    return Conversation("c", turns, tuple(probes))


END = [Probe(30, "q1", "a", (27,), "4"), Probe(30, "q2", "a", (2,), "4"), Probe(30, "q3", "a", (22,), "4"), Probe(30, "q4", "a", (3,), "4")]


def test_availability_by_hand_under_lru_and_belady():
    # fixed_5 makes pages 1..6; with k=2 the last two pages are resident at the end
    conv = conversation(END)
    lru = simulate(conv, "fixed_5", "lru", k=2)
    assert [o.needed for o in lru] == [(6,), (1,), (5,), (1,)]
    assert [o.any_resident for o in lru] == [True, False, False, True]
    # Belady keeps page 1 through the conversation because the probes will want it
    belady = simulate(conv, "fixed_5", "belady", k=2)
    assert [o.any_resident for o in belady] == [True, True, False, True]


def test_the_page_being_written_is_always_resident():
    conv = conversation([Probe(12, "q", "a", (11,), "x"), Probe(12, "q", "a", (0,), "x")])
    outcomes = simulate(conv, "fixed_5", "fifo", k=1)
    assert [o.any_resident for o in outcomes] == [True, False]


def test_evidence_not_yet_said_gives_no_probe_and_multi_page_probes_count_any_and_all():
    conv = conversation([Probe(10, "q", "a", (20,), "x"), Probe(30, "q", "a", (1, 26), "x")])
    (outcome,) = simulate(conv, "fixed_5", "lru", k=2)
    assert outcome.needed == (1, 6) and outcome.any_resident and not outcome.all_resident


def test_stand_in_recalls_the_best_matching_evicted_bookmark():
    conv = conversation([Probe(30, "what did Ann say about the Lisbon flight?", "a", (2,), "x")])
    pages = segment(conv.turns, "fixed_5")
    marks = [Bookmark(p.id, ("Ann", "chat")) for p in pages]
    marks[0] = Bookmark(1, ("Ann", "Lisbon", "flight"))
    marks[2] = Bookmark(3, ("Ann", "Lisbon"))
    (o,) = simulate(conv, "fixed_5", "lru", k=2, bookmarks=marks, pages=pages)
    assert not o.any_resident and o.recalled == 1 and o.recall_correct and o.answered


def test_a_name_on_every_bookmark_decides_nothing():
    marks = [Bookmark(1, ("Ann", "budget")), Bookmark(2, ("Ann", "dentist")), Bookmark(3, ("Ann", "Lisbon"))]
    assert pick_bookmark("When is Ann's dentist appointment?", marks) == 2
    assert pick_bookmark("Anything new?", marks) is None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "paged_context", *args], capture_output=True, text=True, timeout=600)


def test_bench_probes_runs_the_full_grid_on_locomo_and_synthetic(tmp_path, locomo_path):
    done = run_cli("bench", "probes", "--data", str(locomo_path), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for title in ("Table 7 of the paper", "Table 8 of the paper", "Keyword strategies"):
        assert title in done.stdout
    data = json.loads((tmp_path / "probes.json").read_text())
    for name in ("locomo", "synthetic"):
        grid = data["datasets"][name]["grid"]
        assert list(grid) == ["fixed_5", "fixed_10", "fixed_20", "exchange_5", "topic_shift"]
        for cell in grid.values():
            assert {"fifo", "lru", "lfu", "belady", "random", "arc"} <= set(cell["policies"])
            for summary in cell["policies"].values():
                assert 0 <= summary["availability_all"] <= summary["availability"] <= summary["answered"] <= 100
        assert set(data["datasets"][name]["keywords"]) == {"random", "heuristic", "tfidf", "distinctive"}
    locomo = data["datasets"]["locomo"]
    assert locomo["conversations"] == 6 and locomo["probes"] >= 1100
    assert (tmp_path / "probes.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_probes_bad_data_path_is_a_clear_error(tmp_path):
    done = run_cli("bench", "probes", "--data", str(tmp_path / "nope.json"), "--synthetic", "0")
    assert done.returncode == 2 and "nope.json" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("bench", "probes", "--data", str(tmp_path), "--synthetic", "0")  # a folder, not the file
    assert done.returncode == 2 and "Is a directory" in done.stderr and "Traceback" not in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "locomo"}')
    done = run_cli("bench", "probes", "--data", str(bad), "--synthetic", "0")
    assert done.returncode == 2 and "not a LoCoMo file" in done.stderr


def test_the_grid_does_not_depend_on_the_number_of_processes():
    from paged_context.bench.probes import run_grid
    from paged_context.sim import synthetic

    class Count:
        n = 0

        def update(self, n=1):
            self.n += n

    convs, bar = synthetic.generate_many(3, 0), Count()
    args = (convs, ("fixed_5", "session"), ("lru", "random", "learned+prefetch"), 3, "heuristic")
    one = run_grid(*args, bar, workers=1)
    assert run_grid(*args, Count(), workers=2) == one
    assert bar.n == 3 * 2 * 3  # one step per simulation
    assert 0 < one["fixed_5"]["policies"]["learned+prefetch"]["availability"] <= 100


def test_policy_specs():
    assert split_spec("lru") == ("lru", None)
    assert split_spec("arc+bm25") == ("arc", "bm25")
    assert split_spec("learned+prefetch") == ("learned", "learned")
    for bad in ("lru+prefetch", "lru+magic"):
        with pytest.raises(ValueError, match="bad policy spec"):
            split_spec(bad)


def test_bm25_prefetch_brings_the_matching_page_into_context():
    turns = tuple(Turn(i, "user" if i % 2 == 0 else "assistant", f"small talk {i}") for i in range(30))
    turns = turns[:3] + (Turn(3, "assistant", "Your dentist appointment is on Friday"),) + turns[4:]
    conv = Conversation("c", turns, (Probe(30, "When is the dentist appointment?", "Friday", (3,), "x"),))
    (plain,) = simulate(conv, "fixed_5", "lru", k=2)
    (fetched,) = simulate(conv, "fixed_5", "lru", k=2, prefetch="bm25", budget=1)
    assert not plain.any_in_context and fetched.prefetched == (1,) and fetched.any_in_context and not fetched.any_resident
    with pytest.raises(ValueError, match="needs the learned policy"):
        simulate(conv, "fixed_5", "lru", k=2, prefetch="learned")
