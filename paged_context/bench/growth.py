"""`bench growth`: what a turn costs a session as its conversation grows.

One `PagedSession` with the default paging options (the learned controller with its
prefetch, question matching, `tokens_512` pages, distinctive bookmarks) and no model is
driven turn by turn to the last checkpoint (1k, 10k and 50k turns by default). A turn
is a synthetic user message of about 120 words, asked, its prompt rendered, and an
answer of about 40 words recorded. Per turn, the core time: ingest and plan (`ask`),
`render`, and recording the answer (`finish`), as wall time and as the process's CPU
time (on a machine shared with other work the wall time also counts waiting for a
core); at each checkpoint, their median and p95 over the `window` turns before it, the
process's resident memory, and the rendered prompt's size. The text is deterministic (a
seeded Zipf draw over a made-up vocabulary, with names and numbers), so runs differ only
in the machine's timing.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import os
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

from tqdm import tqdm

from ..session import PagedSession
from ..text import approx_tokens
from .report import percentile, publish, pyplot, save_panels, table

USER_WORDS, ANSWER_WORDS = 120, 40
VOCABULARY, NAMES = 8000, 300  # made-up words, drawn by Zipf's law; capitalised names among them
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


class Chat:
    """Deterministic synthetic chat: every draw is `random()` of one seeded generator, the
    part of `random` that Python promises to keep from version to version."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.words = self._made_up(VOCABULARY, set())
        self.names = [w.capitalize() for w in self._made_up(NAMES, set(self.words))]
        self.cumulative = list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))

    def _pick(self, n: int) -> int:
        return min(int(self.rng.random() * n), n - 1)

    def _made_up(self, n: int, taken: set[str]) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            word = "".join(_SYLLABLES[self._pick(len(_SYLLABLES))] for _ in range(2 + self._pick(2)))
            if word not in taken:
                taken.add(word)
                out.append(word)
        return out

    def _word(self) -> str:
        draw = self.rng.random()
        if draw < 0.04:
            return self.names[self._pick(NAMES)]
        if draw < 0.07:
            return str(1000 + self._pick(9000))
        return self.words[bisect.bisect(self.cumulative, self.rng.random() * self.cumulative[-1])]

    def message(self, words: int) -> str:
        """About `words` words, in sentences of 8 to 16."""
        sentences, left = [], words
        while left > 0:
            n = min(left, 8 + self._pick(9))
            said = [self._word() for _ in range(n)]
            sentences.append(" ".join([said[0].capitalize(), *said[1:]]) + ".")
            left -= n
        return " ".join(sentences)


def rss_mib() -> float:
    """The process's resident memory now (Linux); elsewhere its peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def _ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def run(checkpoints: list[int], window: int = 200, seed: int = 0, traced: bool = False) -> tuple[dict, PagedSession]:
    """Drive a session to the last checkpoint; the result, and the session for inspection."""
    checkpoints = sorted(set(checkpoints))
    chat, session = Chat(seed), PagedSession("growth")
    times: list[tuple[float, float, float]] = []  # per turn, wall: ask, render, finish
    cpu: list[float] = []  # per turn, the three together
    rows, series = [], []
    if traced:
        tracemalloc.start()
    for turn in tqdm(range(1, checkpoints[-1] + 1), desc="bench growth", unit="turn", disable=None):
        question, answer = chat.message(USER_WORDS), chat.message(ANSWER_WORDS)
        started, started_cpu = time.perf_counter(), time.process_time()
        request = session.ask(question)
        planned = time.perf_counter()
        messages = session.render(request)
        rendered = time.perf_counter()
        session.finish(request, answer)
        times.append((planned - started, rendered - planned, time.perf_counter() - rendered))
        cpu.append(time.process_time() - started_cpu)
        if turn % window == 0:
            series.append({"turn": turn, "wall_ms_p50": _ms([sum(t) for t in times[-window:]], 0.5), "cpu_ms_p50": _ms(cpu[-window:], 0.5)})
        if turn in checkpoints:
            recent, recent_cpu = times[-window:], cpu[-window:]
            rows.append({
                "turns": turn,
                "pages": len(session.pages),
                "evicted": len(session.evicted()),
                "wall_ms_p50": _ms([sum(t) for t in recent], 0.5),
                "wall_ms_p95": _ms([sum(t) for t in recent], 0.95),
                "cpu_ms_p50": _ms(recent_cpu, 0.5),
                "cpu_ms_p95": _ms(recent_cpu, 0.95),
                "ask_ms_p50": _ms([t[0] for t in recent], 0.5),
                "render_ms_p50": _ms([t[1] for t in recent], 0.5),
                "finish_ms_p50": _ms([t[2] for t in recent], 0.5),
                "prompt_tokens": sum(approx_tokens(m.content) for m in messages),
                "rss_mib": rss_mib(),
                "traced_mib": tracemalloc.get_traced_memory()[0] / 2**20 if traced else None,
            })
    if traced:
        tracemalloc.stop()
    first, last = rows[0], rows[-1]
    result = {
        "config": dataclasses.asdict(session.config),
        "words_per_turn": {"user": USER_WORDS, "answer": ANSWER_WORDS},
        "seed": seed,
        "window": window,
        "traced": traced,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "checkpoints": rows,
        "series": series,
        "acceptance": {
            clock: {
                "ratio": last[f"{clock}_ms_p50"] / first[f"{clock}_ms_p50"],
                "flat": last[f"{clock}_ms_p50"] <= 2 * first[f"{clock}_ms_p50"],
                "under_20_ms": last[f"{clock}_ms_p50"] < 20,
            }
            for clock in ("wall", "cpu")
        },
    }
    return result, session


def report(result: dict) -> str:
    rows = [
        [
            f"{r['turns']:,}", f"{r['pages']:,}", f"{r['evicted']:,}", r["wall_ms_p50"], r["wall_ms_p95"], r["cpu_ms_p50"],
            r["cpu_ms_p95"], r["ask_ms_p50"], r["render_ms_p50"], r["finish_ms_p50"], f"{r['prompt_tokens']:,}", r["rss_mib"], r["traced_mib"],
        ]
        for r in result["checkpoints"]
    ]
    first, last = result["checkpoints"][0]["turns"], result["checkpoints"][-1]["turns"]
    verdict = "".join(
        f"\nmedian {name} at {last:,} turns: {a['ratio']:.2f}x that at {first:,} (at most 2x: {'yes' if a['flat'] else 'NO'}; "
        f"under 20 ms: {'yes' if a['under_20_ms'] else 'NO'})"
        for name, a in (("wall time", result["acceptance"]["wall"]), ("CPU time", result["acceptance"]["cpu"]))
    )
    headers = [
        "turns", "pages", "evicted", "wall ms p50", "wall ms p95", "CPU ms p50", "CPU ms p95", "ask p50", "render p50", "finish p50",
        "prompt tokens", "RSS MiB", "traced MiB",
    ]
    title = (
        f"bench growth: one session, no model, default paging options, {USER_WORDS}-word questions and {ANSWER_WORDS}-word answers "
        f"(times in ms over the {result['window']} turns before each checkpoint; ask, render and finish: wall; "
        f"{result['machine']['cpus']} CPUs)"
    )
    return table(headers, rows, title=title, digits=2) + verdict


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    turns = [s["turn"] for s in result["series"]]
    left.plot(turns, [s["wall_ms_p50"] for s in result["series"]], label=f"wall, median of each {result['window']} turns")
    left.plot(turns, [s["cpu_ms_p50"] for s in result["series"]], label="CPU, the same")
    left.plot([r["turns"] for r in result["checkpoints"]], [r["wall_ms_p95"] for r in result["checkpoints"]], "o--", label="wall p95 at the checkpoints")
    left.set(xlabel="turn", ylabel="ms per turn", title="Core time per turn (ingest, plan, render)")
    left.set_ylim(bottom=0)
    right.plot([r["turns"] for r in result["checkpoints"]], [r["rss_mib"] for r in result["checkpoints"]], "o-", label="resident memory")
    right.set(xlabel="turn", ylabel="MiB", title="Process memory")
    return save_panels(fig, (left, right), path)


def main(args) -> dict:
    checkpoints = [int(n) for n in args.turns.split(",")]
    if not checkpoints or min(checkpoints) < args.window:
        raise ValueError(f"--turns must be turn counts of at least --window ({args.window}), got {args.turns!r}")
    result, _ = run(checkpoints, args.window, args.seed, args.tracemalloc)
    return publish(result, report(result), args.out, "growth", plot)


def add_arguments(p) -> None:
    p.add_argument("--turns", default="1000,10000,50000", metavar="N,N,...", help="checkpoints: turns at which to report (default 1000,10000,50000)")
    p.add_argument("--window", type=int, default=200, help="turns before each checkpoint that its times are taken over (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic chat (default 0)")
    p.add_argument("--tracemalloc", action="store_true", help="also report the memory Python allocated (tracemalloc; slows every turn)")
    p.add_argument("--out", type=Path, help="write growth.json and growth.png here")
