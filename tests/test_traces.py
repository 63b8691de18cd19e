import json
import math
import subprocess
import sys

import pytest

from paged_context.bench import traces as bench
from paged_context.sim import traces as tr


def test_generator_follows_the_protocol():
    spec = tr.TraceSpec()
    trace = tr.generate(42, spec)
    assert len(trace) == 5000 and trace == tr.generate(42, spec) != tr.generate(43, spec)
    assert all(0 <= b < 64 for b in trace)
    phases = [set(trace[i : i + 500]) for i in range(0, 5000, 500)]
    assert all(len(p) <= 16 for p in phases)
    assert len(set.union(*phases)) > 16  # the working set moves


def test_perturbation_changes_exactly_floor_beta_t_positions():
    trace = tr.generate(1, tr.TraceSpec(length=1000))
    for beta in (0.0, 0.02, 0.15, 0.5):
        moved = tr.perturb(trace, beta, seed=7, universe=list(range(64)))
        assert sum(a != b for a, b in zip(trace, moved)) == math.floor(beta * 1000)


def test_theorem4_and_lemma1a_formulas():
    # LRU at K_b = 8 is 8-competitive: 8*F_opt + 9*9*beta*T
    assert tr.theorem4_bound(8, 600, 8, 0.02, 5000) == 8 * 600 + 9 * 9 * 100
    assert tr.lemma1a_bound(8, 100) == 900


def test_load_trace_reads_lines_and_jsonl(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("# a comment\n3\n5\n\nblock-a\n")
    assert tr.load_trace(plain) == [3, 5, "block-a"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"block": 1}\n{"id": "x"}\n7\n')
    assert tr.load_trace(jsonl) == [1, "x", 7]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"other": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        tr.load_trace(bad)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        tr.load_trace(tmp_path / "empty.txt")


def test_reproduces_the_paper_at_kb_8():
    """The acceptance figures of the Neural Paging protocol (seeds 42..51, K_b = 8)."""
    traces = [(s, tr.generate(s)) for s in bench.SEEDS]
    result = bench.run(traces, capacities=[8], betas=[0.0])
    rate = {name: p["fault_rate"]["8"] for name, p in result["policies"].items()}
    assert abs(rate["belady"] - 0.121) <= 0.01
    assert abs(rate["lru"] - 0.226) <= 0.015
    assert 1.75 <= result["policies"]["lru"]["competitive_ratio"]["8"] <= 1.95
    assert abs(rate["fifo"] - 0.28) <= 0.015 and abs(rate["random"] - 0.28) <= 0.015


def test_the_result_does_not_depend_on_the_number_of_processes():
    traces = [(s, tr.generate(s, tr.TraceSpec(length=600))) for s in (1, 2)]
    args = dict(capacities=[3, 6], policies=["lru", "random", "changepoint"], betas=[0.0, 0.1], perturb_capacity=4)
    one, two = bench.run(traces, **args, workers=1), bench.run(traces, **args, workers=2)
    assert one == two
    assert one["perturbation"]["rows"][-1]["delta_faults"] > 0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "paged_context", *args], capture_output=True, text=True, timeout=600)


def test_bench_traces_cli_writes_json_and_plot(tmp_path):
    done = run_cli("bench", "traces", "--seeds", "42", "43", "--capacities", "4", "8", "--betas", "0", "0.1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Theorem 4 bound" in done.stdout and "vacuous" in done.stdout
    data = json.loads((tmp_path / "traces.json").read_text())
    for name in ("fifo", "lru", "lfu", "random", "arc", "belady"):
        assert set(data["policies"][name]["fault_rate"]) == {"4", "8"}
        assert set(data["policies"][name]["competitive_ratio"]) == {"4", "8"}
    lru = [r for r in data["perturbation"]["rows"] if r["policy"] == "lru" and r["beta"] == 0.1][0]
    assert lru["bound_vacuous"] is True and lru["lemma1a_max_ratio"] <= 1
    assert (tmp_path / "traces.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_traces_reads_a_trace_file(tmp_path):
    trace_file = tmp_path / "trace.txt"
    trace_file.write_text("\n".join(str(b) for b in tr.generate(5, tr.TraceSpec(length=800))))
    done = run_cli("bench", "traces", "--trace-file", str(trace_file), "--capacities", "8", "--betas", "0", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "traces.json").read_text())
    assert data["source"].startswith("trace file") and data["n_traces"] == 10
    assert data["policies"]["belady"]["fault_rate"]["8"] <= data["policies"]["lru"]["fault_rate"]["8"]


def test_bench_traces_bad_file_is_a_clear_error(tmp_path):
    done = run_cli("bench", "traces", "--trace-file", str(tmp_path / "missing.txt"))
    assert done.returncode == 2 and "missing.txt" in done.stderr and "Traceback" not in done.stderr
