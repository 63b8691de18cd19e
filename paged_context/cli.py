"""The `paged-context` command line. Subcommands import their modules only when run, so
`paged-context --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
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
}


COMMANDS = {
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
    args = parser().parse_args(argv)
    try:
        importlib.import_module(args.module).main(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"paged-context: error: {e}", file=sys.stderr)
        return 2
    return 0
