"""`bench store`: what the page store costs a turn, on SQLite and on PostgreSQL.

One writer: a session gets `--turns` turns appended one at a time, each append one
committed transaction, as the server writes a turn; the wall time of each append, p50,
p95 and p99. Many writers: `--threads` threads share one store (PostgreSQL: a pool of as
many connections), each taking the next of `--sessions` sessions, creating it and
appending its `--session-turns` turns one at a time; sessions/s and turns/s over the
whole run, and the per-turn times under that load.

PostgreSQL is a throwaway server (paged_context.postgres_server: initdb in a temporary
folder, a Unix socket there, fsync on) unless `--db postgresql://...` names one; the
bench's sessions are deleted from it afterwards. The SQLite file is in a temporary folder
(`--dir`: put it on the disk you mean to measure). The text is bench growth's synthetic
chat (120-word questions, 40-word answers). The anchor: issue 18's acceptance, a
PostgreSQL per-turn commit p50 under 10 ms.
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from ..pages import Turn
from ..store import PageStore, open_store
from .growth import ANSWER_WORDS, USER_WORDS, Chat
from .report import percentile, publish, pyplot, save_panels, table

BACKENDS = ("sqlite", "postgresql")
TARGET_P50_MS = 10.0  # issue 18: PostgreSQL per-turn commit p50
WARMUP_TURNS = 10  # appended, not timed: the first connections, the first pages of the tables


def _ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def texts(n: int, seed: int) -> list[str]:
    chat = Chat(seed)
    return [chat.message(USER_WORDS if i % 2 == 0 else ANSWER_WORDS) for i in range(n)]


def _turn(index: int, said: list[str]) -> Turn:
    return Turn(index, "user" if index % 2 == 0 else "assistant", said[index % len(said)])


def one_writer(store: PageStore, said: list[str], turns: int, session_id: str, desc: str) -> list[float]:
    """Seconds per append of one turn, after the warm-up."""
    store.create_session(session_id)
    times = []
    for i in tqdm(range(WARMUP_TURNS + turns), desc=desc, unit="turn", disable=None):
        started = time.perf_counter()
        store.append_turns(session_id, [_turn(i, said)])
        if i >= WARMUP_TURNS:
            times.append(time.perf_counter() - started)
    return times


def many_writers(store: PageStore, said: list[str], threads: int, sessions: int, session_turns: int, prefix: str, desc: str) -> tuple[float, list[float]]:
    """Wall seconds for all the sessions, and the seconds of every append."""
    queue = itertools.count()  # next() on it is atomic under the GIL
    lock, times, errors = threading.Lock(), [], []
    start = threading.Barrier(threads + 1)
    bar = tqdm(total=sessions * session_turns, desc=desc, unit="turn", disable=None)

    def writer() -> None:
        mine = []
        start.wait()
        try:
            while (k := next(queue)) < sessions:
                session_id = f"{prefix}-{k}"
                store.create_session(session_id)
                for i in range(session_turns):
                    began = time.perf_counter()
                    store.append_turns(session_id, [_turn(i, said)])
                    mine.append(time.perf_counter() - began)
                bar.update(session_turns)
        except Exception as e:  # noqa: BLE001 - raised in the main thread below
            errors.append(e)
        with lock:
            times.extend(mine)

    workers = [threading.Thread(target=writer, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    bar.close()
    if errors:
        raise errors[0]
    return elapsed, times


def measure(store: PageStore, name: str, args, said: list[str]) -> dict:
    prefix = f"bench-store-{uuid.uuid4().hex[:8]}"
    try:
        single = one_writer(store, said, args.turns, f"{prefix}-one", f"bench store {name}: one writer")
        elapsed, loaded = many_writers(
            store, said, args.threads, args.sessions, args.session_turns, prefix, f"bench store {name}: {args.threads} writers"
        )
    finally:  # a server named with --db keeps none of the bench's sessions
        for info in store.sessions():
            if info.id.startswith(prefix):
                store.delete_session(info.id)
    return {
        "one_writer": {
            "turns": len(single), "p50_ms": _ms(single, 0.5), "p95_ms": _ms(single, 0.95), "p99_ms": _ms(single, 0.99),
            "mean_ms": 1000 * sum(single) / len(single), "samples_ms": [round(1000 * t, 4) for t in single],
        },
        "many_writers": {
            "threads": args.threads, "sessions": args.sessions, "turns_per_session": args.session_turns, "seconds": elapsed,
            "sessions_per_s": args.sessions / elapsed, "turns_per_s": len(loaded) / elapsed,
            "p50_ms": _ms(loaded, 0.5), "p95_ms": _ms(loaded, 0.95),
        },
    }


def server_settings(url: str) -> dict:
    import psycopg

    with psycopg.connect(url) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")}


def run(args) -> dict:
    backends = [b.strip() for b in args.backends.split(",")]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        raise ValueError(f"--backends takes {', '.join(BACKENDS)}; got {args.backends!r}")
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"--db takes a postgresql:// URL, got {args.db!r}")
    said = texts(max(args.turns, args.session_turns) + WARMUP_TURNS, args.seed)
    result: dict = {
        "config": {
            "turns": args.turns, "threads": args.threads, "sessions": args.sessions, "session_turns": args.session_turns,
            "words_per_turn": {"user": USER_WORDS, "answer": ANSWER_WORDS}, "seed": args.seed,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "backends": {},
    }
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        for name in backends:
            if name == "sqlite":
                where, pool = str(folder / "pages.db"), {}
                result["sqlite"] = {"file": where, "journal": "WAL, synchronous=FULL"}
            else:
                if args.db:
                    where = args.db
                    result["postgresql"] = {"server": "--db"}
                else:
                    from ..postgres_server import PostgresServer

                    server = stack.enter_context(PostgresServer(args.dir))
                    where = server.url()
                    result["postgresql"] = {"server": "throwaway: initdb, Unix socket, fsync on"}
                result["postgresql"].update(server_settings(where))
                pool = {"pool_size": args.threads}
            with open_store(where, **pool) as store:
                result["backends"][name] = measure(store, name, args, said)
    if "postgresql" in result["backends"]:
        p50 = result["backends"]["postgresql"]["one_writer"]["p50_ms"]
        result["acceptance"] = {"postgresql_turn_p50_ms": p50, "target_ms": TARGET_P50_MS, "under_target": p50 < TARGET_P50_MS}
    return result


def report(result: dict) -> str:
    c = result["config"]
    rows = []
    for name, r in result["backends"].items():
        one, many = r["one_writer"], r["many_writers"]
        rows.append([name, one["p50_ms"], one["p95_ms"], one["p99_ms"], many["sessions_per_s"], many["turns_per_s"], many["p50_ms"], many["p95_ms"]])
    rows.append([f"anchor: issue 18 (postgresql)", f"< {TARGET_P50_MS:g}", "-", "-", "-", "-", "-", "-"])
    headers = [
        "backend", "turn p50 ms", "turn p95 ms", "turn p99 ms", f"sessions/s ({c['threads']} writers)", "turns/s", "turn p50 ms (loaded)", "turn p95 ms (loaded)",
    ]
    title = (
        f"bench store: appending one turn = one committed transaction; one writer: {c['turns']} turns; then {c['threads']} writer threads, "
        f"{c['sessions']} sessions of {c['session_turns']} turns ({result['machine']['cpus']} CPUs)"
    )
    text = table(headers, rows, title=title, digits=2)
    if "acceptance" in result:
        a = result["acceptance"]
        pg = result.get("postgresql", {})
        text += (
            f"\nPostgreSQL {pg.get('server_version', '?')} ({pg.get('server')}; fsync {pg.get('fsync')}, synchronous_commit "
            f"{pg.get('synchronous_commit')}, {pg.get('wal_sync_method')}): per-turn commit p50 {a['postgresql_turn_p50_ms']:.2f} ms "
            f"(under {a['target_ms']:g} ms: {'yes' if a['under_target'] else 'NO'})"
        )
    return text


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in result["backends"].items():
        samples = sorted(r["one_writer"]["samples_ms"])
        left.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))], label=name)
    left.axvline(TARGET_P50_MS, color="grey", linestyle="--", label=f"{TARGET_P50_MS:g} ms (issue 18, p50)")
    left.set(xscale="log", xlabel="ms per turn (one committed append)", ylabel="fraction of turns", title="One writer")
    names = list(result["backends"])
    right.bar(names, [result["backends"][n]["many_writers"]["sessions_per_s"] for n in names], label="sessions/s")
    right.set(ylabel="sessions/s", title=f"{result['config']['threads']} writers, {result['config']['session_turns']} turns a session")
    return save_panels(fig, (left, right), path)


def main(args) -> dict:
    for name in ("turns", "threads", "sessions", "session_turns"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    result = run(args)
    return publish(result, report(result), args.out, "store", plot)


def add_arguments(p) -> None:
    p.add_argument("--backends", default="sqlite,postgresql", help="which stores to measure (default sqlite,postgresql)")
    p.add_argument("--db", help="a postgresql:// URL to measure instead of a throwaway server (the bench's sessions are deleted afterwards)")
    p.add_argument("--dir", type=Path, help="folder for the SQLite file and the throwaway server (default: the temporary folder)")
    p.add_argument("--turns", type=int, default=1000, help="turns the one writer appends, each timed (default 1000)")
    p.add_argument("--threads", type=int, default=32, help="concurrent writer threads (default 32)")
    p.add_argument("--sessions", type=int, default=256, help="sessions the writers create, together (default 256)")
    p.add_argument("--session-turns", type=int, default=20, help="turns in each of those sessions (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic chat (default 0)")
    p.add_argument("--out", type=Path, help="write store.json and store.png here")
