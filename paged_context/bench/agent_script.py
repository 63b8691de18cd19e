"""The scripted coding agent of `bench agent`: its tools, the results they return, the
facts planted in those results, and the questions a user asks about them later.

The agent investigates a failing ingest service, "harbor". It calls three tools a
client would define itself, `read_file(path)`, `search(query)` and `run_command(command)`,
one to three calls per step, and every call gets a deterministic synthetic result:
Python modules, YAML configs, docs, logs, git history, test runs, grep hits. Most results
are short; about one call in 25 returns a few thousand tokens, more than a 512-token page,
so the paging server pages it in parts.

Facts (a retry limit, an incident ticket, an on-call name...) are planted, one line each,
in results during the first half of the steps, and asked about as user messages in the
second half, in another order. Each fact's line appears in exactly one tool result and
its answer in no question; a question names the file or subject, as a user would, and
never copies the line (`build` checks the first two). Which facts are asked, where they
are planted, the results' sizes and contents all follow from the seed: the same seed
gives the same script on every machine running the same Python version (`random`
promises only its `random()` sequence across versions, not `choice` or `sample`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable, Iterator

from ..text import approx_tokens


def _tool(name: str, description: str, parameter: str, about: str) -> dict:
    schema = {"type": "object", "properties": {parameter: {"type": "string", "description": about}}, "required": [parameter]}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


TOOLS = [
    _tool("read_file", "Read a file of the repository", "path", "path from the repository root"),
    _tool("search", "Search the repository and its support tickets; returns path:line: text hits", "query", "words or an identifier"),
    _tool("run_command", "Run a shell command in the repository and return its output", "command", "the command line"),
]
SYSTEM = (
    "You are a coding agent working in the harbor repository, a data-ingest service. Investigate with the "
    "tools, and answer the user's questions briefly."
)
TASK = "The nightly ingest job has been failing since last week's deploy. Find out why, and keep notes of what you learn."
# what the client answers a call the model makes on its own: the script drives the tools
NOT_FOUND = "not found"


@dataclass(frozen=True)
class Fact:
    subject: str  # for the report
    tool: str  # the call whose result carries the fact
    argument: str
    kind: str  # the kind of content around it (a key of KINDS)
    needle: str  # the line planted in the result: in the prompt, the fact is in view
    answer: str  # what an answer that has the fact contains
    question: str  # the user's question: names the subject, never the line
    large: bool  # the result is a large one (several pages)


FACTS = (
    Fact("retry limit", "read_file", "config/ingest.yaml", "yaml", "max_retries: 13", "13",
         "What retry limit did config/ingest.yaml set?", False),
    Fact("incident ticket", "run_command", "tail -n 400 logs/payments-gateway.log", "log",
         "2025-03-14T03:12:09Z ERROR payments.gateway acquirer returned 502 for 312 requests, opened INC-48213", "INC-48213",
         "Which incident ticket was opened for the 502 errors in the payments gateway log?", True),
    Fact("on-call", "read_file", "docs/oncall.md", "markdown", "- Billing exporter: Oksana Petrenko (primary), Dev Malhotra (backup)", "Petrenko",
         "Who is the primary on-call for the billing exporter?", False),
    Fact("Postgres port", "read_file", "docker-compose.yml", "yaml", 'postgres: {image: "postgres:15.6", ports: ["5433:5432"]}', "5433",
         "Which host port does docker-compose expose Postgres on?", False),
    Fact("dedup cache", "run_command", "git log --format='%h %an %s' -n 80", "gitlog",
         "4be1c07 Tomasz Wierzbicki Turn off the dedup cache until the key collisions are understood", "Wierzbicki",
         "Who disabled the dedup cache, according to the git history?", True),
    Fact("feature flag", "search", "feature flag", "hits",
         'src/harbor/flags.py:41:    "harbor.ingest.v2_writer": False,  # columnar writer, off until the backfill is done', "v2_writer",
         "What is the feature flag for the new columnar writer called?", False),
    Fact("flush timeout", "read_file", "src/harbor/ingest/batcher.py", "python", "DEFAULT_FLUSH_TIMEOUT_MS = 7250", "7250",
         "What default flush timeout does the ingest batcher use?", True),
    Fact("pyarrow pin", "read_file", "requirements.txt", "requirements", "pyarrow==14.0.2", "14.0.2",
         "Which version of pyarrow is pinned in requirements.txt?", False),
    Fact("replay test", "run_command", "pytest tests/test_replay.py -q", "pytest",
         "E       AssertionError: expected 4096 replayed rows, got 4031", "4031",
         "How many rows did the failing replay test get?", True),
    Fact("dead-letter bucket", "read_file", "docs/runbook.md", "markdown",
         "Dead-lettered records are written to s3://harbor-dlq-eu-west-3/ingest/ and kept for 30 days.", "harbor-dlq-eu-west-3",
         "Which S3 bucket do dead letters go to, per the runbook?", True),
    Fact("duplicate invoices", "search", "duplicate invoice", "hits",
         "support/tickets/SUP-2291.md:3: Lindqvist Freight reports duplicate invoices after the March replay", "Lindqvist",
         "Which customer reported the duplicate invoices?", False),
    Fact("compaction schedule", "read_file", "ops/crontab", "crontab", "17 4 * * * harbor compact --all-partitions", "17 4",
         "When does cron run the compaction job?", False),
    Fact("Kafka topic", "read_file", ".env.example", "env", "HARBOR_KAFKA_TOPIC=ingest.events.v3", "ingest.events.v3",
         "Which Kafka topic does the service consume?", False),
    Fact("shipments migration", "read_file", "migrations/0042_shipments_customs.sql", "sql",
         "ALTER TABLE shipments ADD COLUMN customs_code VARCHAR(12) NOT NULL DEFAULT '';", "customs_code",
         "What column did the shipments migration add?", False),
    Fact("release freeze", "run_command", "cat notes/standup-2025-03-12.md", "markdown",
         "Release freeze begins Thursday March 28 at 18:00 UTC; only hotfixes after that.", "March 28",
         "When does the release freeze start?", False),
)

# --- synthetic content: each kind is an endless stream of lines ------------------------

PACKAGES = ("ingest", "storage", "replay", "billing", "api", "schema", "metrics", "auth", "export", "queue")
MODULES = ("batcher", "writer", "reader", "client", "models", "handlers", "retry", "cache", "routes", "codec", "planner", "validator")
VERBS = ("load", "parse", "flush", "write", "read", "merge", "split", "encode", "decode", "validate", "schedule", "compact",
         "emit", "resolve", "register", "build", "drain", "ack", "replay", "upsert")
NOUNS = ("batch", "record", "segment", "offset", "schema", "partition", "cursor", "checkpoint", "manifest", "payload", "header",
         "event", "row", "column", "window", "lease", "snapshot", "shard", "key", "buffer")
SETTINGS = ("batch_size", "flush_interval_ms", "workers", "compression", "endpoint", "region", "timeout_s", "buffer_mb", "enabled",
            "log_level", "queue_depth", "lease_seconds", "partitions", "prefetch", "max_inflight", "backoff_ms")
AUTHORS = ("Amara Okafor", "Lena Fischer", "Jun Watanabe", "Priya Raman", "Mateo Alvarez", "Sofia Rossi", "Noah Brennan", "Ines Duarte")
LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
LIBRARIES = ("fastapi", "uvicorn", "pydantic", "sqlalchemy", "psycopg", "kafka-python", "boto3", "orjson", "structlog", "tenacity",
             "prometheus-client", "httpx", "click", "zstandard", "redis", "alembic")


def _ident(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"


def _sentence(rng: random.Random) -> str:
    a, b = rng.sample(NOUNS, 2)
    return rng.choice((
        f"The {a} is {rng.choice(VERBS)}ed before the {b} is written, so a crash in between replays it.",
        f"Each {a} carries its {b} id; {rng.choice(MODULES)} uses it to skip work already done.",
        f"When the {a} queue backs up, lower {rng.choice(SETTINGS)} before adding workers.",
        f"We {rng.choice(VERBS)} every {a} within {rng.randint(2, 90)} seconds of its {b} arriving.",
        f"Do not {rng.choice(VERBS)} a {a} by hand: the {rng.choice(PACKAGES)} service owns its {b}.",
    ))


def _python(rng: random.Random, subject: str) -> Iterator[str]:
    yield f'"""{subject}: {rng.choice(VERBS)} and {rng.choice(VERBS)} {rng.choice(NOUNS)}s for harbor."""'
    yield from ("", "from __future__ import annotations", "", "import logging", "", "log = logging.getLogger(__name__)", "")
    while True:
        a, b = rng.sample(NOUNS, 2)
        yield f"def {rng.choice(VERBS)}_{a}({a}, {b}=None, limit={rng.randint(2, 512)}):"
        yield f'    """{rng.choice(VERBS).capitalize()} the {a} against its {b}."""'
        for _ in range(rng.randint(2, 6)):
            yield rng.choice((
                f"    {b} = {_ident(rng)}({a}, {rng.choice(SETTINGS)}={rng.randint(1, 999)})",
                f"    if {b} is None:\n        return {rng.choice(('None', '[]', '0', a))}",
                f"    for item in {a}.{rng.choice(NOUNS)}s:\n        {_ident(rng)}(item, {b})",
                f'    log.debug("{rng.choice(VERBS)} %s {rng.choice(NOUNS)}s", len({a}))',
            ))
        yield f"    return {b}"
        yield ""


def _yaml(rng: random.Random, subject: str) -> Iterator[str]:
    yield f"# {subject}"
    while True:
        yield f"{rng.choice(PACKAGES)}_{rng.choice(NOUNS)}:"
        for setting in rng.sample(SETTINGS, rng.randint(2, 5)):
            yield f"  {setting}: {rng.choice((rng.randint(1, 5000), rng.choice(('true', 'false', 'zstd', 'eu-west-1', 'info'))))}"


def _markdown(rng: random.Random, subject: str) -> Iterator[str]:
    yield f"# {subject}"
    while True:
        yield ""
        yield f"## {rng.choice(VERBS).capitalize()} {rng.choice(NOUNS)}s"
        for _ in range(rng.randint(2, 4)):
            yield _sentence(rng)


def _log(rng: random.Random, subject: str) -> Iterator[str]:
    service = subject.rsplit("/", 1)[-1].removesuffix(".log").replace("-", ".")
    t = rng.randint(0, 3600)
    while True:
        t += rng.randint(1, 40)
        a = rng.choice(NOUNS)
        yield (f"2025-03-14T{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d}Z {rng.choice(LEVELS)} {service} "
               + rng.choice((f"{rng.choice(VERBS)} {a} {rng.randint(1, 99999)} in {rng.randint(2, 900)} ms",
                             f"retrying {a} {rng.randint(1, 99999)} after {rng.randint(1, 9)} attempts",
                             f"{a} backlog at {rng.randint(0, 5000)}, lag {rng.randint(0, 300)} s")))


def _gitlog(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        a, b = rng.sample(NOUNS, 2)
        yield f"{rng.getrandbits(28):07x} {rng.choice(AUTHORS)} {rng.choice(VERBS).capitalize()} the {a} {rng.choice(('before', 'after', 'with'))} the {b}"


def _hits(rng: random.Random, subject: str) -> Iterator[str]:
    words = subject.replace(" ", "_")
    while True:
        path = f"src/harbor/{rng.choice(PACKAGES)}/{rng.choice(MODULES)}.py"
        yield f"{path}:{rng.randint(3, 600)}: " + rng.choice((
            f"    {rng.choice(NOUNS)} = {words}({rng.choice(NOUNS)}, limit={rng.randint(1, 99)})",
            f"def {words}_{rng.choice(NOUNS)}({rng.choice(NOUNS)}):",
            f"    # {subject}: {_sentence(rng)}",
        ))


def _pytest(rng: random.Random, subject: str) -> Iterator[str]:
    yield f"============================= test session starts ==============================\ncollected {rng.randint(20, 300)} items"
    while True:
        yield f"tests/test_{rng.choice(MODULES)}.py::test_{_ident(rng)} {rng.choice(('PASSED', 'PASSED', 'PASSED', 'FAILED', 'SKIPPED'))}"


def _listing(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        yield f"{rng.choice(('-rw-r--r--', 'drwxr-xr-x'))} {rng.randint(80, 90000):>6} Mar {rng.randint(1, 14):>2} {rng.choice(MODULES)}_{rng.choice(NOUNS)}.py"


def _diff(rng: random.Random, subject: str) -> Iterator[str]:
    yield f"--- a/{subject}\n+++ b/{subject}"
    while True:
        yield f"@@ -{rng.randint(1, 400)},{rng.randint(3, 9)} +{rng.randint(1, 400)},{rng.randint(3, 9)} @@"
        for _ in range(rng.randint(2, 6)):
            yield rng.choice(("-", "+", " ")) + f"    {rng.choice(NOUNS)} = {_ident(rng)}({rng.choice(NOUNS)})"


def _sql(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        table, column = rng.sample(NOUNS, 2)
        yield rng.choice((
            f"CREATE INDEX IF NOT EXISTS {table}s_{column}_idx ON {table}s ({column}_id);",
            f"UPDATE {table}s SET {column}_id = NULL WHERE {column}_id < {rng.randint(1, 9999)};",
            f"ALTER TABLE {table}s ALTER COLUMN {column}_at SET DEFAULT now();",
        ))


def _requirements(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        yield f"{rng.choice(LIBRARIES)}=={rng.randint(0, 3)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"


def _env(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        yield f"HARBOR_{rng.choice(NOUNS).upper()}_{rng.choice(SETTINGS).upper()}={rng.randint(1, 9000)}"


def _crontab(rng: random.Random, subject: str) -> Iterator[str]:
    while True:
        yield f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * {rng.choice(('*', '1-5', '0'))} harbor {rng.choice(VERBS)} --{rng.choice(NOUNS)}s"


KINDS: dict[str, Callable[[random.Random, str], Iterator[str]]] = {
    "python": _python, "yaml": _yaml, "markdown": _markdown, "log": _log, "gitlog": _gitlog, "hits": _hits, "pytest": _pytest,
    "listing": _listing, "diff": _diff, "sql": _sql, "requirements": _requirements, "env": _env, "crontab": _crontab,
}


def _pool(rng: random.Random, taken: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Every call the agent may make besides the facts' (tool, argument, kind), shuffled."""
    calls = [("read_file", f"src/harbor/{p}/{m}.py", "python") for p in PACKAGES for m in MODULES]
    calls += [("read_file", f"tests/test_{m}.py", "python") for m in MODULES]
    calls += [("read_file", f"config/{p}.yaml", "yaml") for p in PACKAGES] + [("read_file", f"k8s/{p}-deployment.yaml", "yaml") for p in PACKAGES]
    calls += [("read_file", f"docs/{p}.md", "markdown") for p in PACKAGES]
    calls += [("read_file", f"migrations/00{i}_{rng.choice(NOUNS)}s.sql", "sql") for i in range(10, 40)]
    calls += [("search", f"{v}_{n}", "hits") for v in VERBS[:10] for n in NOUNS[:10]]
    calls += [("run_command", f"pytest tests/test_{m}.py -q", "pytest") for m in MODULES]
    calls += [("run_command", f"git log --oneline -n 40 -- src/harbor/{p}", "gitlog") for p in PACKAGES]
    calls += [("run_command", f"tail -n 300 logs/{p}-worker.log", "log") for p in PACKAGES]
    calls += [("run_command", f"ls -l src/harbor/{p}", "listing") for p in PACKAGES]
    calls += [("run_command", f"git diff HEAD~3 -- src/harbor/{p}/{m}.py", "diff") for p in PACKAGES for m in MODULES[:4]]
    calls = [c for c in calls if c[:2] not in taken]
    rng.shuffle(calls)
    return calls


LARGE_KINDS = ("python", "markdown", "log", "gitlog", "hits", "pytest")  # what can run to thousands of tokens


def content(rng: random.Random, kind: str, subject: str, tokens: int, needle: str | None = None) -> str:
    """About `tokens` tokens (4 characters each) of `kind`, with `needle` as one line
    somewhere in its middle."""
    lines, size = [], 0
    for line in KINDS[kind](rng, subject):
        if size >= tokens:
            break
        lines.append(line)
        size += approx_tokens(line + "\n")
    if needle is not None:
        lines.insert(rng.randint(len(lines) // 5, max(len(lines) * 4 // 5, 1)), needle)
    return "\n".join(lines)


# --- the script ------------------------------------------------------------------------

TOOL_PARAMETER = {t["function"]["name"]: t["function"]["parameters"]["required"][0] for t in TOOLS}


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    argument: str
    result: str

    @property
    def arguments(self) -> str:
        return json.dumps({TOOL_PARAMETER[self.name]: self.argument})


@dataclass(frozen=True)
class Step:
    number: int  # from 1
    calls: tuple[Call, ...] = ()  # the agent's own calls and their results...
    ask: Fact | None = None  # ...or a user's question

    def messages(self) -> list[dict]:
        """What the client appends to the history for this step."""
        if self.ask is not None:
            return [{"role": "user", "content": self.ask.question}]
        calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in self.calls]
        return [{"role": "assistant", "content": None, "tool_calls": calls}] + [
            {"role": "tool", "tool_call_id": c.id, "content": c.result} for c in self.calls
        ]


def opening() -> list[dict]:
    """The history before the first step."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]


CALLS_PER_STEP = {1: 0.5, 2: 0.35, 3: 0.15}
LARGE_EVERY = 25  # one call in this many returns a large result...
LARGE_SHARE = 0.5  # ...and the large ones hold this share of all result tokens
PLANTED_IN = 0.4  # facts are planted in the first 40% of the agent's steps


# the default script: about 45,000 tokens of history for the default model by the end, 5.5x its window
TOOL_CALLS, ASKS, RESULT_TOKENS = 200, 15, 26_000


def build(seed: int = 0, tool_calls: int = TOOL_CALLS, asks: int = ASKS, result_tokens: int = RESULT_TOKENS) -> list[Step]:
    """The script: `tool_calls` calls in steps of one to three, with `result_tokens` tokens
    of results in all (4 characters a token), and `asks` questions about planted facts,
    spread over the second half of the steps."""
    if not 1 <= asks <= len(FACTS):
        raise ValueError(f"asks must be between 1 and {len(FACTS)} (the planted facts), got {asks}")
    if result_tokens < 20 * tool_calls:
        raise ValueError(f"result_tokens ({result_tokens}) must be at least 20 per tool call ({20 * tool_calls} for {tool_calls})")
    rng = random.Random(seed)
    facts = rng.sample(FACTS, asks)
    sizes, left = [], tool_calls
    while left:
        k = min(rng.choices(list(CALLS_PER_STEP), list(CALLS_PER_STEP.values()))[0], left)
        sizes.append(k)
        left -= k
    steps = len(sizes)
    planted = int(steps * PLANTED_IN)
    if planted < asks:
        raise ValueError(f"{tool_calls} tool calls make {steps} steps, too few to plant {asks} facts one a step in the first "
                         f"{PLANTED_IN:.0%} of them: give more tool calls or fewer asks")
    # the calls, in order: pool calls, the fact carriers in the first steps, large results scattered
    slots = [(step, k) for step, n in enumerate(sizes) for k in range(n)]
    carriers = [slots.index((step, 0)) for step in _spread(0, planted, asks)]
    calls: list[tuple[str, str, str, Fact | None]] = [("", "", "", None)] * tool_calls
    for slot, fact in zip(carriers, facts):
        calls[slot] = (fact.tool, fact.argument, fact.kind, fact)
    pool = iter(_pool(rng, {(f.tool, f.argument) for f in FACTS}))
    for i in range(tool_calls):
        if calls[i][3] is None:
            try:
                calls[i] = (*next(pool), None)
            except StopIteration:
                raise ValueError(f"tool_calls ({tool_calls}) is more than the script has distinct calls") from None
    large = {i for i, c in enumerate(calls) if c[3] is not None and c[3].large}
    wanted = max(tool_calls // LARGE_EVERY, 1) - len(large)
    candidates = [i for i, c in enumerate(calls) if c[3] is None and c[2] in LARGE_KINDS]
    large |= set(rng.sample(candidates, max(min(wanted, len(candidates)), 0)))
    small = tool_calls - len(large)
    mean = {True: result_tokens * LARGE_SHARE / len(large), False: result_tokens * (1 - LARGE_SHARE) / max(small, 1)}
    results = [
        content(rng, kind, argument, max(int(mean[i in large] * rng.uniform(0.6, 1.4)), 8), fact.needle if fact else None)
        for i, (_, argument, kind, fact) in enumerate(calls)
    ]
    # the steps: call steps, with the asks inserted over the second half in another order
    total = steps + asks
    ask_at = set(_spread(total - total // 2, total, asks))
    asked = iter(rng.sample(facts, asks))
    script, slot, call_step = [], 0, 0
    for number in range(1, total + 1):
        if number - 1 in ask_at:
            script.append(Step(number, ask=next(asked)))
            continue
        made = []
        for _ in range(sizes[call_step]):
            name, argument, _, _ = calls[slot]
            made.append(Call(f"call_{number}_{len(made) + 1}", name, argument, results[slot]))
            slot += 1
        script.append(Step(number, tuple(made)))
        call_step += 1
    _check(script, facts)
    return script


def _spread(start: int, stop: int, n: int) -> list[int]:
    """`n` distinct positions evenly spread over [start, stop)."""
    width = (stop - start) / n
    return [start + int((k + 0.5) * width) for k in range(n)]


def _check(script: list[Step], facts: list[Fact]) -> None:
    results = [c.result for s in script for c in s.calls]
    questions = [s.ask.question for s in script if s.ask]
    for fact in facts:
        carrying = sum(fact.needle in r for r in results)
        if carrying != 1:
            raise AssertionError(f"the {fact.subject} fact's line is in {carrying} tool results, not one")
        if any(fact.answer.lower() in q.lower() or fact.needle in q for q in questions):
            raise AssertionError(f"a question gives away the {fact.subject} fact")
