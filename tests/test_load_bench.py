"""`bench load` against a real paging server (transformers engine, tiny random model):
every request answered, every client kind present, the server's memory sampled."""

import json

import pytest

pytest.importorskip("torch")

from tiny_model import build  # noqa: E402


def test_bench_load_drives_mixed_clients_and_samples_memory(tmp_path):
    from paged_context.bench.load import kind_of
    from paged_context.cli import main

    tiny = build(tmp_path / "tiny", hidden=128, heads=2)
    argv = [
        "bench", "load", "--model", str(tiny), "--engine", "hf", "--sessions", "4", "--turns", "3", "--max-tokens", "4",
        "--engine-flags", "--max-model-len 1024 --dtype float32", "--server-flags", "--page-tokens 192 --resident 1 2", "--out", str(tmp_path),
        "--heavy-turns", "301",
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "load.json").read_text())
    rows = result["rows"]
    assert len(rows) == 12 and result["summary"]["errors"] == 0 and all(r["error"] is None for r in rows)
    assert {(r["stream"], r["stateless"]) for r in rows} == {(kind_of(s)["stream"], kind_of(s)["stateless"]) for s in range(4)}
    assert len({(r["stream"], r["stateless"]) for r in rows}) == 4  # every kind of client
    assert all(0 < r["ttft_s"] <= r["latency_s"] for r in rows)
    assert result["summary"]["rss_max_mib"] > 100 and len(result["rss"]) >= 2
    assert (tmp_path / "load.png").stat().st_size > 0
    # the second phase: the sessions again, beside a client resending a 301-turn history
    heavy = result["heavy"]
    assert len(heavy["rows"]) == 12 and heavy["summary"]["errors"] == 0 and heavy["summary"]["ttft_p50_s"] > 0
    assert heavy["summary"]["heavy_requests"] >= 1 and heavy["summary"]["heavy_errors"] == 0
    assert heavy["heavy_rows"][0]["history_turns"] == 301 and heavy["summary"]["heavy_first_latency_s"] > 0
