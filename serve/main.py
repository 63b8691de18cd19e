"""`paged-context serve`: the OpenAI-compatible paging server.

With `--engine vllm` (the default) this is vLLM's own server, started through its
launcher (`run_server`), so every `vllm serve` flag works; the only change is one hook
on `build_app` that puts the paging routes in front of vLLM's chat route and registers
the recall tool parser and logits processor. `--engine hf` serves the transformers
engine behind the same routes with uvicorn. Without `--model` the embedded default model
is served (pulled once).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from paged_context.session import PagingConfig

from .llm import VLLM_DEFAULTS

PAGING_ROUTES = ("/v1/chat/completions",)


def build_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    p = make_arg_parser(
        FlexibleArgumentParser(
            prog="paged-context serve",
            description="OpenAI-compatible server with paging: conversations longer than the model's window keep working. "
            "Takes every `vllm serve` option, plus the paged-context options below.",
        )
    )
    # safe, small-machine defaults; each is an ordinary vLLM flag that overrides them
    p.set_defaults(model=None, host="127.0.0.1", port=8000, **VLLM_DEFAULTS)
    g = p.add_argument_group("paged-context")
    g.add_argument("--engine", choices=["vllm", "hf"], default="vllm", help="vllm, or hf for the transformers engine")
    g.add_argument("--db", help="page store: a SQLite file's path, or a postgresql:// URL that replicas share (default: $PAGED_CONTEXT_HOME/sessions.db)")
    g.add_argument(
        "--db-pool-size", type=int, metavar="N",
        help="with a postgresql:// --db: connections this replica keeps at most, one per session being answered at once plus a few (default 16)",
    )
    g.add_argument("--page-tokens", type=int, default=512, help="page size in tokens (a longer message is paged in parts of this size)")
    g.add_argument(
        "--resident", type=int, nargs=2, default=(4, 16), metavar=("LOW", "HIGH"),
        help="resident pages: compact to LOW when over HIGH (default 4 16); --window-watermarks compacts sooner when the prompt fills the window",
    )
    g.add_argument(
        "--window-watermarks", type=int, nargs=2, default=(55, 85), metavar=("LOW", "HIGH"),
        help="when the prompt fills more than HIGH%% of the model's window, compact it to about LOW%% in one batch (default 55 85)",
    )
    g.add_argument("--policy", default="learned", help="eviction policy (learned: the Page Controller)")
    g.add_argument(
        "--prefetch-budget", type=int, default=PagingConfig.prefetch_budget,
        help="pages a request may bring back: those the question names first (--match-budget), then the controller's",
    )
    g.add_argument("--match-budget", type=int, default=PagingConfig.match_budget, help="of those, pages a user's question may bring back by sharing their words")
    g.add_argument(
        "--prefetch-turns", type=int, default=PagingConfig.prefetch_turns, metavar="N",
        help=f"a page brought back shows its N turns around the one the question names best, and the model may recall the rest (0: whole pages; default {PagingConfig.prefetch_turns})",
    )
    g.add_argument("--recall-rounds", type=int, default=2, help="recall rounds per request")
    g.add_argument(
        "--client-tool-parser", default="auto",
        help="vLLM's tool parser for the served model's own call format (hermes, llama3_json, mistral, ...); "
        "auto: the family whose call marker the chat template writes (<tool_call>, <|python_tag|>, [TOOL_CALLS]), "
        "else paged-context's own syntax; none: ours always",
    )
    g.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    g.add_argument("--default-repetition-penalty", type=float, default=1.1, help="repetition_penalty when a request gives none (the transformers engine always uses 1.1)")
    g.add_argument("--max-request-bytes", type=int, default=8 << 20, help="largest request body accepted")
    g.add_argument(
        "--session-wait", type=float, default=5.0,
        help="seconds a request waits for a session another replica sharing the store is answering, then HTTP 503 with Retry-After (default 5)",
    )
    g.add_argument("--session-idle-seconds", type=float, default=600, help="a session unused this long leaves memory (reopened from the store when asked for; default 600)")
    g.add_argument("--max-open-sessions", type=int, default=1000, help="sessions in memory at most: beyond, the least recently used leaves (default 1000)")
    g.add_argument("--kv-host-mib", type=int, default=1024, help="--engine hf: host memory for KV snapshots, all sessions together, least recently used first out (MiB)")
    g.add_argument("--kv-live-sessions", type=int, default=8, help="--engine hf: sessions keeping their last prompt's whole KV on the device (default 8)")
    return p


def configure(args) -> argparse.Namespace:
    """Fill in what the paging layer needs: the model, the plugins, the API keys."""
    from paged_context.models.default_model import home, resolve
    from paged_context.store import POSTGRES_SCHEMES

    model = args.model or args.model_tag
    args.model = str(resolve(model))
    args.model_tag = None
    if args.served_model_name is None:
        args.served_model_name = [Path(args.model).name]
    args.enable_auto_tool_choice = True
    args.tool_call_parser = "paged_recall"
    args.tool_parser_plugin = "paged_context.patches.vllm_tool_parser"
    processor = "paged_context.patches.vllm_logits:RecallLogitsProcessor"
    args.logits_processors = [*(args.logits_processors or []), processor]
    keys = args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])
    args.paging_api_keys = frozenset([keys] if isinstance(keys, str) else keys)
    args.db = args.db or home() / "sessions.db"
    if args.db_pool_size is not None and not str(args.db).startswith(POSTGRES_SCHEMES):
        raise ValueError("--db-pool-size is for a postgresql:// --db (a SQLite store has no connection pool)")
    return args


def paging_state(args, engine, tokenizer_count):
    from paged_context.store import open_store

    from .routes import PagingState
    from .sessions import SessionRegistry

    config = PagingConfig(
        boundary=f"tokens_{args.page_tokens}", part_tokens=args.page_tokens, resident_low=args.resident[0], resident_high=args.resident[1],
        window_low=args.window_watermarks[0], window_high=args.window_watermarks[1], policy=args.policy, prefetch_budget=args.prefetch_budget, match_budget=args.match_budget,
        prefetch_turns=args.prefetch_turns,
    )
    from .sessions import LoopBridge

    store = open_store(args.db, tokenizer_count, **({} if args.db_pool_size is None else {"pool_size": args.db_pool_size}))
    sessions = SessionRegistry(
        store, config, tokenizer_count, LoopBridge(engine), engine.forget, wait=args.session_wait,
        idle_seconds=args.session_idle_seconds, max_open=args.max_open_sessions,
    )
    register_metrics(sessions)
    return PagingState(
        engine, sessions, list(args.served_model_name), args.paging_api_keys, args.max_request_bytes,
        args.default_max_tokens, args.default_repetition_penalty, args.recall_rounds,
    )


class SessionMetrics:
    """The registry's sessions in memory and evictions so far, read when /metrics is."""

    sessions = None  # the SessionRegistry served now

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.sessions is not None:
            yield GaugeMetricFamily("paged_context_sessions_in_memory", "Sessions held in memory (the rest are in the store only)", value=len(self.sessions.used))
            yield CounterMetricFamily("paged_context_sessions_evicted", "Sessions that left memory, idle or least recently used", value=self.sessions.evicted)


SESSION_METRICS = SessionMetrics()


def register_metrics(sessions) -> None:
    """Count `sessions` in /metrics (Prometheus' default registry; once per process)."""
    from prometheus_client import REGISTRY

    if SESSION_METRICS.sessions is None:
        REGISTRY.register(SESSION_METRICS)
    SESSION_METRICS.sessions = sessions


def install_routes(app, state) -> None:
    """Our routes replace vLLM's for the same paths; everything else stays vLLM's. The
    app's /openapi.json describes ours beside its own."""
    from . import openapi
    from .routes import router

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in PAGING_ROUTES]
    app.include_router(router)
    app.state.paging = state
    openapi.install(app, state)


# what a chat template writes around a call -> vLLM's parser for that family
FAMILY_MARKERS = {"<tool_call>": "hermes", "<|python_tag|>": "llama3_json", "[TOOL_CALLS]": "mistral"}


def client_tool_parser(name: str, tokenizer):
    """vLLM's parser for the model family's tool calls, or None for our own syntax. `auto`
    knows a family by its template's call marker."""
    from paged_context.patches.vllm_tool_parser import family_parser

    if name == "auto":
        template = tokenizer.chat_template or ""
        name = next((parser for marker, parser in FAMILY_MARKERS.items() if marker in template), "none")
    return None if name == "none" else family_parser(name, tokenizer)


def serve_vllm(args) -> None:
    import uvloop
    from transformers import AutoTokenizer
    from vllm.entrypoints.launchers.api_server import entry

    from paged_context.patches.vllm_engine import VLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    parse_calls = client_tool_parser(args.client_tool_parser, tokenizer)
    build_app = entry.build_app

    def build_paged_app(app_args, supported_tasks=None, model_config=None):
        app = build_app(app_args, supported_tasks, model_config)
        window = model_config.max_model_len if model_config is not None else 8192

        # the engine client is put in app.state after the app is built
        engine = VLLMEngine(lambda: app.state.engine_client, tokenizer, window, parse_calls)
        state = paging_state(args, engine, engine.count_tokens)
        state.sessions.complete.bind()  # the app is built inside the server's event loop
        state.sessions.sweep_idle()
        install_routes(app, state)
        return app

    entry.build_app = build_paged_app
    uvloop.run(entry.run_server(args))


def serve_hf(args) -> None:
    import uvicorn
    from fastapi import FastAPI
    from prometheus_client import make_asgi_app

    from paged_context.patches.hf_engine import AsyncHFEngine, HFEngine

    from .routes import install_error_handlers

    engine = AsyncHFEngine(HFEngine(args.model, kv_host_limit_bytes=args.kv_host_mib << 20, kv_live_sessions=args.kv_live_sessions))
    state = paging_state(args, engine, engine.count_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.sessions.complete.bind()
        sweeper = state.sessions.sweep_idle()
        yield
        if sweeper is not None:
            sweeper.cancel()

    app = FastAPI(title="paged-context (transformers engine)", lifespan=lifespan)
    names = list(args.served_model_name)

    @app.get("/health")
    async def health():
        return {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "paged-context", "max_model_len": engine.window} for name in names]}

    app.mount("/metrics", make_asgi_app())
    install_routes(app, state)
    install_error_handlers(app)
    uvicorn.run(app, host=args.host or "127.0.0.1", port=args.port, log_level="warning")


def main(args) -> None:
    argv = args.argv
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = configure(build_parser().parse_args(argv))
    (serve_hf if args.engine == "hf" else serve_vllm)(args)


def add_arguments(p) -> None:
    p.add_argument("argv", nargs=argparse.REMAINDER, help="vLLM and paged-context options (paged-context serve --help lists them)")


if __name__ == "__main__":
    main(argparse.Namespace(argv=sys.argv[1:]))
