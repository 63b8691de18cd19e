"""`paged-context chat`: a terminal chat with the transformers engine that shows, after
every answer, what paging did: pages resident, evicted, prefetched and recalled, and the
prompt tokens saved against sending the whole history."""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "commands: /pages (bookmarks of every page), /help, /quit (or end of input)"


def status(paging: dict, usage: dict) -> str:
    pages = lambda ids: " ".join(f"p{i}" for i in ids) or "-"  # noqa: E731
    kv = paging.get("kv", {})
    return (
        f"[{paging['pages']} pages | resident {pages(paging['resident'])} | evicted {len(paging['evicted'])}"
        f" | prefetched {pages(paging['prefetched'])} | recalled {pages(paging['recalled'])}"
        f" | prompt {usage['prompt_tokens']:,} tokens, whole history {paging['history_tokens']:,}"
        f" (saved {paging['prompt_tokens_saved']:,}) | KV reused {usage['cached_tokens']:,}"
        f"{', host ' + format(kv['host_bytes'] / 2**20, '.1f') + ' MiB' if 'host_bytes' in kv else ''}"
        f" | {usage['seconds']:.1f} s]"
    )


def main(args) -> None:
    from paged_context.models.default_model import home
    from paged_context.patches.hf_engine import HFEngine
    from paged_context.session import PagingConfig
    from paged_context.store import SQLiteStore

    engine = HFEngine(
        args.model, device=args.device, kv_mode=args.kv_mode, max_new_tokens=args.max_new_tokens, kv_host_limit_bytes=args.kv_host_mib << 20,
        kv_repair_tokens=args.kv_repair_tokens,
    )
    config = PagingConfig(
        boundary=f"tokens_{args.page_tokens}", part_tokens=args.page_tokens, resident_low=args.resident[0], resident_high=args.resident[1], policy=args.policy
    )
    db = args.db or home() / "sessions.db"
    interactive = sys.stdin.isatty()
    with SQLiteStore(db, engine.count_tokens) as store:
        session = engine.session(args.session, config, store)
        print(f"paged-context chat: {engine.path.name} on {engine.device}; session '{session.id}' in {db} ({len(session.turns)} stored turns). {HELP}")
        while True:
            try:
                line = input("you> " if interactive else "").strip()
            except EOFError:
                break
            if not interactive and line:
                print(f"you> {line}")
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/help":
                print(HELP)
                continue
            if line == "/pages":
                if not session.pages:
                    print("  no pages yet: the whole conversation is still in view")
                for page_id in sorted(session.pages):
                    where = "resident" if page_id in session.resident else "evicted"
                    print(f"  {session.bookmarks[page_id].render()} {where}, turns {session.pages[page_id].first_turn + 1}-{session.pages[page_id].last_turn + 1}")
                continue
            print("assistant> ", end="", flush=True)
            reply = engine.reply(session, line, on_text=lambda text: print(text, end="", flush=True))
            print("\n" + status(reply.paging, reply.usage), flush=True)


def add_arguments(p) -> None:
    p.add_argument("--model", type=Path, help="a local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct, pulled on first use)")
    p.add_argument("--db", type=Path, help="the SQLite page store (default: $PAGED_CONTEXT_HOME/sessions.db)")
    p.add_argument("--session", default="chat", help="session name: the same name continues a stored conversation (default 'chat')")
    p.add_argument("--max-new-tokens", type=int, default=200, help="longest answer in tokens (default 200)")
    p.add_argument("--page-tokens", type=int, default=512, help="page size in tokens (default 512)")
    p.add_argument("--resident", type=int, nargs=2, default=(4, 16), metavar=("LOW", "HIGH"), help="resident pages: compact down to LOW when over HIGH (default 4 16)")
    p.add_argument("--policy", default="learned", help="eviction policy (default learned: the Page Controller)")
    p.add_argument("--kv-mode", default="exact", choices=["exact", "splice"], help="KV reuse: exact prefix restore, or approximate splicing")
    p.add_argument("--kv-repair-tokens", type=int, default=0, metavar="N", help="--kv-mode splice: recompute the first N tokens of each spliced page (default 0)")
    p.add_argument("--kv-host-mib", type=int, default=1024, help="host memory for KV snapshots, MiB (default 1024; least recently used go first)")
    p.add_argument("--device", help="torch device (default cuda when available, else cpu)")
