"""`bench load`: many sessions at once through the real `openai` client, as a busy server
sees them.

N client sessions run concurrently, each M turns. They are mixed the way real clients are:
every other session streams; half resend their whole history each turn (stateless,
OpenAI style, named by nothing but their opening message) and half send only the new
message (incremental, named by `X-Session-Id`).
Per request: time to first token (streaming: the first content chunk; otherwise the whole
answer), latency, and the error if it failed. Meanwhile the server's resident memory is
read from its Prometheus `/metrics` (`process_resident_memory_bytes`) once a second.

`--heavy-turns N` adds a second phase: the same sessions again, while one more client
resends a stateless history of N turns with each question (the first of its requests
stores them all): what a long session costs the others, as their TTFT.

The paging server is started on the given model (`--model`, default the embedded model;
`--engine hf` for the transformers engine), or an `--endpoint` already running is used.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .report import percentile, publish, pyplot, save_panels, table

ANCHOR = "issue 19: 0 errors at 32 sessions x 20 turns (tiny model) and 8 x 10 (default model); RSS flat as sessions accumulate"
RSS = re.compile(r"^process_resident_memory_bytes\s+([0-9.e+]+)", re.M)
TOPICS = ["the garden", "a chess opening", "sourdough", "a marathon plan", "birds seen today", "a pottery class", "the night sky"]


def kind_of(session: int) -> dict:
    """How client `session` behaves: streaming or not, stateless (whole history) or incremental."""
    return {"stream": session % 2 == 0, "stateless": session % 4 < 2}


def user_message(session: int, turn: int, run: str) -> str:
    return f"Session {session} of run {run}, message {turn}: a few words about {TOPICS[(session + turn) % len(TOPICS)]}, and what should I do next?"


def client_session(url: str, model: str, session: int, turns: int, max_tokens: int, run: str, done: Callable[[], None]) -> list[dict]:
    """One client's conversation; a row per request."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    kind, history, rows = kind_of(session), [], []
    # a stateless client names nothing: the server knows its session by the opening message
    headers = {} if kind["stateless"] else {"X-Session-Id": f"load-{run}-{session}"}
    for turn in range(turns):
        history.append({"role": "user", "content": user_message(session, turn, run)})
        sent = history if kind["stateless"] else history[-1:]
        started, first, text, error = time.perf_counter(), None, "", None
        try:
            if kind["stream"]:
                for chunk in client.chat.completions.create(model=model, messages=sent, max_tokens=max_tokens, temperature=0, stream=True, extra_headers=headers):
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started if first is None else first
                        text += chunk.choices[0].delta.content
            else:
                reply = client.chat.completions.create(model=model, messages=sent, max_tokens=max_tokens, temperature=0, extra_headers=headers)
                text = reply.choices[0].message.content or ""
        except openai.APIError as e:
            error = f"{type(e).__name__}: {getattr(e, 'status_code', '')} {e}"[:300]
        latency = time.perf_counter() - started
        history.append({"role": "assistant", "content": text})
        rows.append({"session": session, "turn": turn, **kind, "ttft_s": first if first is not None else latency, "latency_s": latency, "error": error})
        done()
    return rows


def heavy_history(turns: int, run: str) -> list[dict]:
    """A stateless conversation of `turns` turns (odd: it ends with the user)."""
    return [
        {"role": "user", "content": f"Heavy {run}, message {i}: notes on {TOPICS[i % len(TOPICS)]}, item {i}."} if i % 2 == 0
        else {"role": "assistant", "content": f"Noted item {i}."}
        for i in range(turns | 1)
    ]


def heavy_client(url: str, model: str, turns: int, max_tokens: int, run: str, stop: threading.Event) -> list[dict]:
    """One client resending a history of `turns` turns, and a new question each time,
    until `stop`; a row per request."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    history, rows = heavy_history(turns, run), []
    while not stop.is_set():
        started, error, text = time.perf_counter(), None, ""
        try:
            text = client.chat.completions.create(model=model, messages=history, max_tokens=max_tokens, temperature=0).choices[0].message.content or ""
        except openai.APIError as e:
            error = f"{type(e).__name__}: {getattr(e, 'status_code', '')} {e}"[:300]
        rows.append({"history_turns": len(history), "latency_s": time.perf_counter() - started, "error": error})
        if error is not None:  # refused (too large a body?): the phase goes on without it
            break
        history += [{"role": "assistant", "content": text}, {"role": "user", "content": f"And item {len(history)}?"}]
    return rows


def with_heavy(url: str, model: str, heavy_turns: int, **settings) -> dict:
    """`drive` while a heavy client resends its long history."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(heavy_client, url, model, heavy_turns, settings["max_tokens"], f"{time.time_ns():x}", stop)
        try:
            phase = drive(url, model, **settings)
        finally:
            stop.set()
        phase["heavy_rows"] = heavy.result()
    return phase


def server_rss(url: str) -> float | None:
    """The server process's resident memory in MiB, from its Prometheus metrics."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            found = RSS.search(response.read().decode())
    except OSError:
        return None
    return float(found.group(1)) / (1 << 20) if found else None


def drive(url: str, model: str, sessions: int, turns: int, max_tokens: int) -> dict:
    """All sessions at once, sampling the server's memory meanwhile."""
    run, samples, stop = f"{time.time_ns():x}", [], threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while True:
            samples.append({"t_s": time.perf_counter() - started, "rss_mib": server_rss(url)})
            if stop.wait(1.0):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tqdm(total=sessions * turns, desc="requests", unit="req", disable=None) as bar, ThreadPoolExecutor(sessions) as pool:
        lock = threading.Lock()

        def done() -> None:
            with lock:
                bar.update()

        futures = [pool.submit(client_session, url, model, s, turns, max_tokens, run, done) for s in range(sessions)]
        rows = [row for f in futures for row in f.result()]
    stop.set()
    sampler.join()
    samples.append({"t_s": time.perf_counter() - started, "rss_mib": server_rss(url)})
    return {"rows": rows, "rss": samples, "seconds": time.perf_counter() - started}


def summarize(result: dict) -> dict:
    rows = result["rows"]
    ok = [r for r in rows if r["error"] is None]
    rss = [s["rss_mib"] for s in result["rss"] if s["rss_mib"] is not None]
    summary = {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "requests_per_s": round(len(rows) / result["seconds"], 3),
    }
    for name, key in (("ttft", "ttft_s"), ("latency", "latency_s")):
        values = [r[key] for r in ok]
        summary[f"{name}_p50_s"], summary[f"{name}_p95_s"] = percentile(values, 0.5), percentile(values, 0.95)
    summary["rss_first_mib"], summary["rss_last_mib"], summary["rss_max_mib"] = (rss[0], rss[-1], max(rss)) if rss else (None, None, None)
    return summary


def summarize_heavy(phase: dict) -> dict:
    """The sessions' summary while the heavy client ran, and its own requests."""
    heavy = phase["heavy_rows"]
    ok = [r["latency_s"] for r in heavy if r["error"] is None]
    return {
        **summarize(phase),
        "heavy_requests": len(heavy),
        "heavy_errors": len(heavy) - len(ok),
        "heavy_first_latency_s": heavy[0]["latency_s"] if heavy else None,  # stores the whole history
        "heavy_latency_p50_s": percentile(ok, 0.5) if ok else None,
    }


def report(result: dict) -> str:
    s = result["summary"]
    head = (f"bench load: {result['sessions']} sessions x {result['turns']} turns on {result['model']} ({result['where']}), "
            f"{result['max_tokens']} tokens per answer, {result['seconds']:.0f} s")
    headers = ["phase", "requests", "errors", "req/s", "TTFT p50 s", "TTFT p95 s", "latency p50 s", "latency p95 s", "RSS first MiB", "RSS last MiB", "RSS max MiB"]
    keys = ["requests", "errors", "requests_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s", "rss_first_mib", "rss_last_mib", "rss_max_mib"]
    rows = [["alone", *(s[k] for k in keys)]]
    lines = []
    if "heavy" in result:
        h = result["heavy"]["summary"]
        rows.append([f"+ {result['heavy_turns']}-turn client", *(h[k] for k in keys)])
        lines.append(
            f"heavy client: {h['heavy_requests']} requests ({h['heavy_errors']} errors), the first (storing its history) "
            f"{h['heavy_first_latency_s'] or 0:.1f} s, p50 {h['heavy_latency_p50_s'] or 0:.1f} s"
        )
    errors = sorted({r["error"] for r in result["rows"] + result.get("heavy", {}).get("rows", []) if r["error"]})[:5]
    return "\n".join([head, table(headers, rows, digits=2), *lines, *(f"error: {e}" for e in errors), f"\nanchor: {ANCHOR}"])


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rss = [s for s in result["rss"] if s["rss_mib"] is not None]
    left.plot([s["t_s"] for s in rss], [s["rss_mib"] for s in rss], label="server RSS")
    left.set(xlabel="seconds", ylabel="MiB", title="Server resident memory")
    turns = range(1, result["turns"] + 1)

    def per_turn(rows: list[dict], key: str, q: float) -> list[float | None]:
        """The q-quantile of `key` over the answered requests of each turn."""
        by_turn = [[r[key] for r in rows if r["turn"] == t and r["error"] is None] for t in range(result["turns"])]
        return [percentile(v, q) if v else None for v in by_turn]

    for label, key in (("TTFT", "ttft_s"), ("latency", "latency_s")):
        right.plot(turns, per_turn(result["rows"], key, 0.5), marker=".", label=f"{label} p50")
        right.plot(turns, per_turn(result["rows"], key, 0.95), linestyle="--", label=f"{label} p95")
    if "heavy" in result:
        right.plot(turns, per_turn(result["heavy"]["rows"], "ttft_s", 0.5), marker="x", label=f"TTFT p50, + {result['heavy_turns']}-turn client")
    right.set(xlabel="turn", ylabel="seconds", title="Per turn, over all sessions")
    return save_panels(fig, (left, right), path)


def main(args) -> dict:
    from ..models.default_model import resolve

    settings = {"sessions": args.sessions, "turns": args.turns, "max_tokens": args.max_tokens}

    def phases(url: str, model: str) -> dict:
        result = drive(url, model, **settings)
        if args.heavy_turns:
            result["heavy"] = with_heavy(url, model, args.heavy_turns, **settings)
        return result

    if args.endpoint:
        result = {**phases(args.endpoint.rstrip("/"), args.model_name or "default"), "model": args.model_name or "?", "where": args.endpoint}
    else:
        from .servers import served

        model = resolve(args.model)
        flags = ["--engine", args.engine, *shlex.split(args.server_flags)]
        with tempfile.TemporaryDirectory(prefix="paged-load-") as work, served(model, shlex.split(args.engine_flags), Path(work), True, flags) as url:
            result = {**phases(url, model.name), "model": model.name, "where": f"paged-context serve --engine {args.engine}"}
    result.update(settings, heavy_turns=args.heavy_turns)
    result["summary"] = summarize(result)
    if "heavy" in result:
        result["heavy"]["summary"] = summarize_heavy(result["heavy"])
    return publish(result, report(result), args.out, "load", plot)


def add_arguments(p) -> None:
    p.add_argument("--sessions", type=int, default=32, help="client sessions at once (default 32)")
    p.add_argument("--turns", type=int, default=20, help="turns per session (default 20)")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length (default 16)")
    p.add_argument("--model", type=Path, help="a local HF model directory to serve (default: the embedded default model)")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"], help="the engine of the server it starts (default vllm)")
    p.add_argument("--engine-flags", default="", metavar="FLAGS", help='extra vLLM flags for the server, one string')
    p.add_argument("--server-flags", default="", metavar="FLAGS", help='extra paged-context serve flags, one string: "--resident 2 4"')
    p.add_argument("--endpoint", help="a running paging server's base URL instead (http://host:port)")
    p.add_argument("--model-name", help="with --endpoint: the model name it serves")
    p.add_argument(
        "--heavy-turns", type=int, default=0, metavar="N",
        help="a second phase: the sessions again while one client resends a stateless history of N turns (default 0: none)",
    )
    p.add_argument("--out", type=Path, help="write load.json and load.png here")
