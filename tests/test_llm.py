"""PagedLLM: the server's paging in-process, on both engines, with a tiny random Llama."""

import pytest

pytest.importorskip("torch")

from paged_context import PagingConfig  # noqa: E402
from paged_context.serve import PagedLLM  # noqa: E402

CONFIG = PagingConfig(boundary="tokens_64", resident_low=1, resident_high=2, prefetch_budget=1, match_budget=1)
VLLM_ARGS = dict(max_model_len=1024, dtype="float32", kv_cache_memory_bytes=256 << 20, gpu_memory_utilization=0.2)


def converse(llm):
    history, replies = [], []
    for i in range(10):
        history.append({"role": "user", "content": f"message {i}: Lisbon trams, the budget, and the dog"})
        reply = llm.chat("s", history, max_tokens=12)  # stateless: the whole history every time
        history.append({"role": "assistant", "content": reply.text})
        replies.append(reply)
    return replies


def check(llm, replies):
    last = replies[-1]
    assert len(llm.sessions.get("s", None).turns) == 20  # the resent history is not stored twice
    assert last.paging["pages"] >= 3 and last.paging["evicted"]
    session = llm.sessions.get("s", None)
    rendered = "\n".join(m.content for m in last.rendered)
    out_of_view = [p for p in last.paging["evicted"] if p not in last.paging["prefetched"] + last.paging["recalled"]]
    assert out_of_view
    for page_id in out_of_view:
        assert session.bookmarks[page_id].render() in rendered
        assert session.pages[page_id].turns[0].text not in rendered
    assert sum(r.usage["cached_tokens"] for r in replies) > 0


def test_paged_llm_on_transformers(tiny, tmp_path):
    with PagedLLM(tiny, engine="hf", db=tmp_path / "pages.db", config=CONFIG) as llm:
        check(llm, converse(llm))
    with pytest.raises(ValueError, match="engine"):
        PagedLLM(tiny, engine="tgi")


@pytest.mark.slow
def test_paged_llm_on_vllm(tiny):
    pytest.importorskip("vllm")
    with PagedLLM(tiny, config=CONFIG, **VLLM_ARGS) as llm:
        check(llm, converse(llm))
        with pytest.raises(ValueError, match="last message"):
            llm.chat("s", [{"role": "assistant", "content": "hi"}])


def test_bench_locomo_in_process(tiny, tmp_path):
    """`bench locomo --endpoint inprocess`: PagedLLM answers, baselines and paged methods
    alike (model-made bookmarks included), and judges its own answers."""
    import json

    from locomo_sample import write

    from paged_context import llm_keywords
    from paged_context.bench import locomo
    from paged_context.cli import parser

    methods = ["truncation", "search_tool", "controller", "bookmark_recall:llm-batch"]
    argv = [
        "bench", "locomo", "--endpoint", "inprocess", "--engine", "hf", "--model-path", str(tiny), "--data", write(tmp_path / "locomo.json"),
        "--methods", *methods, "--limit", "2", "--window", "1024", "--context-tokens", "300", "--max-tokens", "6", "--resident", "1",
        "--judge", "--out", str(tmp_path / "run"),
    ]
    llm_keywords._cache.clear()
    result = locomo.main(parser().parse_args(argv))
    assert llm_keywords._cache  # the model was asked for keywords (failures are not cached)
    assert list(result["methods"]) == methods
    assert all(s["n"] == 2 and s["errors"] == 0 for s in result["methods"].values())
    records = [json.loads(line) for line in (tmp_path / "run" / "locomo.jsonl").read_text().splitlines()[1:]]
    assert sum(r["type"] == "answer" for r in records) == 8 == sum(r["type"] == "judge" for r in records)
    assert all(r["prompt_tokens"] > 0 for r in records if r["type"] == "answer")


@pytest.mark.slow
def test_a_killed_bench_stops_its_engine_workers(tiny, tmp_path):
    """`kill` on `bench locomo --endpoint inprocess` ends its vLLM engine too: the engine's
    worker processes (gigabytes each) once outlived the command."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    from locomo_sample import write

    pytest.importorskip("vllm")
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "paged_context", "bench", "locomo", "--endpoint", "inprocess", "--model-path", str(tiny),
        "--data", write(tmp_path / "locomo.json"), "--methods", "truncation", "full_context", "controller", "bookmark_recall",
        "--window", "1024", "--context-tokens", "300", "--max-tokens", "400", "--out", str(run),  # 40 long answers: still answering when killed
    ]
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    workers = []
    try:
        deadline = time.monotonic() + 600
        while not (run / "locomo.jsonl").exists() or len((run / "locomo.jsonl").read_text().splitlines()) < 2:  # answering
            assert bench.poll() is None and time.monotonic() < deadline
            time.sleep(1)
        workers = psutil.Process(bench.pid).children(recursive=True)
        assert workers  # vLLM's engine runs in its own processes
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        for process in [bench, *workers]:  # a failing run leaves nothing behind
            try:
                process.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
