"""A real server (transformers engine, tiny random model) under a thousand short sessions:
idle and least recently used sessions leave memory, the server's resident memory stays
flat, and a session that left memory continues from the store."""

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("torch")

from serving import Server  # noqa: E402

SESSIONS, CLIENTS, MAX_OPEN = 1000, 8, 50
METRIC = re.compile(r"^(paged_context_sessions_evicted_total|paged_context_sessions_in_memory|process_resident_memory_bytes) ([0-9.e+]+)$", re.M)


def metrics(server) -> dict[str, float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        return {name: float(value) for name, value in METRIC.findall(response.read().decode())}


def rss_mib(server) -> float:
    """The server process's resident memory (VmRSS), in MiB."""
    status = open(f"/proc/{server.launched.process.pid}/status").read()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024


def ask(server, session: str, text: str) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    status, reply = server.post("/v1/chat/completions", json.dumps(body).encode(), {"X-Session-Id": session})
    assert status == 200, reply
    return reply


def converse(server, i: int) -> None:
    """Session i: one turn, or two for every fourth."""
    for turn in range(1 + (i % 4 == 1)):
        ask(server, f"short-{i}", f"Session {i}, turn {turn}: what should I cook tonight?")


def test_a_thousand_short_sessions_leave_memory_and_rss_stays_flat(tiny, tmp_path):
    limits = ["--session-idle-seconds", "2", "--max-open-sessions", str(MAX_OPEN)]
    with Server(tiny, tmp_path / "pages.db", engine="hf", extra=limits) as server, ThreadPoolExecutor(CLIENTS) as clients:
        started = time.perf_counter()
        list(clients.map(lambda i: converse(server, i), range(10)))
        rss_10 = rss_mib(server)
        list(clients.map(lambda i: converse(server, i), range(10, SESSIONS)))
        rss_1000 = rss_mib(server)
        seen = metrics(server)
        print(f"\nRSS after 10 sessions {rss_10:.0f} MiB, after {SESSIONS}: {rss_1000:.0f} MiB ({rss_1000 / rss_10:.2f}x); "
              f"evicted {seen['paged_context_sessions_evicted_total']:.0f}, in memory {seen['paged_context_sessions_in_memory']:.0f}; "
              f"{time.perf_counter() - started:.0f} s")
        assert rss_1000 <= 1.5 * rss_10
        assert seen["paged_context_sessions_evicted_total"] >= SESSIONS - MAX_OPEN - CLIENTS
        assert seen["paged_context_sessions_in_memory"] <= MAX_OPEN + CLIENTS
        # an early session left memory long ago: it continues from the store
        assert server.get("/paging/sessions/short-1")["turns"] == 4
        ask(server, "short-1", "And for dessert?")
        assert server.get("/paging/sessions/short-1")["turns"] == 6
        time.sleep(2.5)  # idle past --session-idle-seconds: the next request sweeps them out
        ask(server, "short-2", "Still there?")
        assert metrics(server)["paged_context_sessions_in_memory"] == 1
        time.sleep(3.5)  # and with no request at all, the server's timer does
        assert metrics(server)["paged_context_sessions_in_memory"] == 0
