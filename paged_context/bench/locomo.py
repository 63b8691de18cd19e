"""`bench locomo`: end-to-end question answering on LoCoMo conversations, through any
OpenAI-compatible endpoint, for the cooperative-paging paper's methods and ours.

Every method answers with the same system prompt and question message; they differ in
what of the conversation the model sees:

- truncation: the most recent turns that fit the context budget.
- bm25 / word_overlap: the most recent turns in half the budget, plus the top-k older
  pages for the question (BM25, or shared content words) in the other half.
- search_tool: the recent half, and a free-form `search("...")` the model may call once
  (BM25 over the older pages answers it, top-k pages); MemGPT-style, no bookmarks.
- full_context: the most recent turns that fit the model's whole window.
- bookmark_recall: the paper's method, served by the paging server: the whole
  conversation sent as chat history; fixed_10 pages, LRU, k resident pages, heuristic
  bookmarks, the recall tool.
- controller: ours: the same, with the learned Page Controller, its prefetch and
  distinctive bookmarks.
`bookmark_recall:STRATEGY` runs bookmark_recall with another keyword strategy; `--ablation`
runs the paper's bookmark ablation (random, heuristic, tfidf, distinctive, and the
model-made llm-batch and hybrid, which the server asks its own model for).

Answers are scored with LoCoMo's official F1 (`paged_context.scoring`), optionally by an
LLM judge. Runs are resumable: raw answers and judgements go to a JSONL file, one record
per (method, question), and a rerun skips what is there.
"""

from __future__ import annotations

import fcntl
import json
import random
import re
import statistics
import sys
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from .. import keywords
from ..bm25 import BM25
from ..pages import Page, Turn, segment
from ..scoring import score
from ..session import PagingConfig
from ..sim.conversations import Conversation, default_locomo_path, load_locomo
from ..text import approx_tokens, content_terms
from .endpoints import Endpoint, HTTPEndpoint, InProcessEndpoint, NotPaged
from .report import percentile, pyplot, save_figure, table

METHODS = ("truncation", "bm25", "word_overlap", "search_tool", "full_context", "bookmark_recall", "controller")
ABLATION = tuple(f"bookmark_recall:{k}" for k in ("random", "heuristic", "tfidf", "distinctive", "llm-batch", "hybrid"))
SYSTEM = (
    "You answer questions about a long conversation between {a} and {b}, using only what the conversation says. "
    "Reply with a short answer (a few words, a name or a date) and no explanation."
)
QUESTION = "Question: {question}\nShort answer:"
SEARCH = ' To look up older parts of the conversation first, reply with only: search("words to look for")'
SEARCH_CALL = re.compile(r"""search\(\s*["']?(.*?)["']?\s*\)""", re.S)
JUDGE = (
    "Label an answer to a question about a conversation as CORRECT or WRONG. You get the question, the gold answer "
    "and the generated answer. Be generous: an answer that refers to the same thing as the gold answer (the same "
    "date in another format, a shorter or longer phrasing of the same fact) is CORRECT; one that is wrong, "
    "incomplete in meaning or says it does not know is WRONG.\n\nQuestion: {question}\nGold answer: {gold}\n"
    "Generated answer: {answer}\n\nReply with one word: CORRECT or WRONG."
)
ANCHOR = (
    "cooperative paging (GPT-4o-mini, 98 probes, judge 1-5): truncation 1.64, bm25 1.86, word_overlap 1.88, "
    "search_tool 1.90, full_context 2.02, bookmark_recall 2.18; Mem0 (gpt-4o-mini, J): full context 72.9, Mem0 66.9"
)


@dataclass(frozen=True)
class Settings:
    """Everything that decides an answer: a resumed run must have the same."""

    model: str
    data: str
    context_tokens: int = 2500  # what every method but full_context may show of the conversation
    window: int = 8192  # the model's context window (full_context fills it)
    max_tokens: int = 48
    page: str = "fixed_10"
    resident: int = 5
    top_k: int = 3  # retrieved pages (bm25, word_overlap, search results)
    prefetch: int = 3  # the controller's prefetch budget
    prefetch_turns: int = PagingConfig.prefetch_turns  # turns shown of each page the controller brings back (0: all)
    # what bm25 and word_overlap rank pages by: "message", the question as every method
    # sends it (QUESTION), so they see what the paging server's question matching sees;
    # "question", the bare question, which runs before 2026-12-02 used
    rank_by: str = "message"


# what a run's settings held before a setting existed: such a run resumes with its value
BEFORE_SETTINGS = {"prefetch_turns": 0, "rank_by": "question"}


@dataclass(frozen=True)
class Question:
    id: str  # conversation:number, stable across runs
    conversation: str
    category: int
    question: str
    gold: str
    evidence: tuple[int, ...]  # turn indices


# --- questions ---------------------------------------------------------------------------


def questions_of(conversations: Sequence[Conversation], categories: Iterable[int]) -> list[Question]:
    wanted = set(categories)
    return [
        Question(f"{c.id}:{p.number}", c.id, int(p.category), p.question, p.answer, p.evidence)
        for c in conversations
        for p in c.probes
        if p.category.isdigit() and int(p.category) in wanted
    ]


def stratified(questions: Sequence[Question], limit: int | None, seed: int) -> list[Question]:
    """`limit` questions drawn so every (category, conversation) stratum keeps its share
    (largest remainders; at least one from each stratum when the limit allows)."""
    if limit is None or limit >= len(questions):
        return list(questions)
    strata: dict[tuple, list[Question]] = defaultdict(list)
    for q in questions:
        strata[(q.category, q.conversation)].append(q)
    keys = sorted(strata)
    exact = {k: limit * len(strata[k]) / len(questions) for k in keys}
    take = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: (-(exact[k] - take[k]), k))[: limit - sum(take.values())]:
        take[k] += 1
    rng = random.Random(seed)
    chosen = {q.id for k in keys for q in rng.sample(strata[k], take[k])}
    return [q for q in questions if q.id in chosen]


# --- what each method shows ----------------------------------------------------------------


def lines(conversation: Conversation) -> list[str]:
    """Each turn as the model sees it: the speaker's name, and the date where a session starts."""
    out, session = [], None
    for turn in conversation.turns:
        text = f"{turn.speaker}: {turn.text}"
        if turn.session != session and turn.session in conversation.dates:
            text = f"({conversation.dates[turn.session]})\n{text}"
        session = turn.session
        out.append(text)
    return out


def recent_start(texts: Sequence[str], budget: int) -> int:
    """Where the most recent turns that fit `budget` tokens begin."""
    used, start = 0, len(texts)
    while start > 0 and used + approx_tokens(texts[start - 1]) + 1 <= budget:
        start -= 1
        used += approx_tokens(texts[start]) + 1
    return start


def rank_pages(pages: Sequence[Page], query: str, how: str) -> list[int]:
    """Page ids by relevance to `query`, best first (pages sharing no term left out)."""
    terms = content_terms(query)
    if how == "word_overlap":
        wanted = set(terms)
        overlap = {p.id: len(wanted & set(content_terms(p.text))) for p in pages}
        return sorted((i for i in overlap if overlap[i]), key=lambda i: (-overlap[i], i))
    index = BM25()
    for p in pages:
        index.add(p.id, content_terms(p.text))
    return index.top(terms, len(pages))


def pick(pages: dict[int, Page], ranked: Sequence[int], k: int, budget: int) -> list[Page]:
    """The best `k` ranked pages that fit `budget` tokens together, in conversation order."""
    chosen, used = [], 0
    for page_id in ranked:
        size = sum(approx_tokens(t.text) + 1 for t in pages[page_id].turns)
        if len(chosen) < k and used + size <= budget:
            chosen.append(page_id)
            used += size
    return [pages[i] for i in sorted(chosen)]


@dataclass
class Shown:
    """What a question's prompt holds: messages, and which turns of the conversation."""

    messages: list[dict]
    turns: set[int]


class Context:
    """One conversation, prepared once for every method."""

    def __init__(self, conversation: Conversation, settings: Settings):
        self.conversation, self.settings = conversation, settings
        self.lines = lines(conversation)
        turns = [replace(t, text=text) for t, text in zip(conversation.turns, self.lines)]
        self.pages = {p.id: p for p in segment(turns, settings.page)}
        speakers = list(dict.fromkeys(t.speaker for t in conversation.turns if t.speaker))
        self.system = SYSTEM.format(a=speakers[0] if speakers else "two people", b=speakers[1] if len(speakers) > 1 else "someone")

    def recent(self, budget: int) -> tuple[str, set[int]]:
        start = recent_start(self.lines, budget)
        return "\n".join(self.lines[start:]), set(range(start, len(self.lines)))

    def older(self, before: set[int]) -> dict[int, Page]:
        """The pages before the turns in `before`, the one they cut short included."""
        first = min(before, default=len(self.lines))
        out = {}
        for i, p in self.pages.items():
            turns = tuple(t for t in p.turns if t.index < first)
            if turns:
                out[i] = p if len(turns) == len(p.turns) else replace(p, turns=turns, tokens=sum(approx_tokens(t.text) for t in turns))
        return out

    def baseline(self, method: str, question: str, scale: float = 1.0) -> Shown:
        """A baseline's prompt; `scale` shrinks full_context's budget (in estimated tokens)
        when the model's tokenizer finds the text longer than estimated."""
        s = self.settings
        if method in ("truncation", "full_context"):
            window = int(scale * (s.window - s.max_tokens - approx_tokens(self.system + question) - 64))
            budget = s.context_tokens if method == "truncation" else window
            text, seen = self.recent(budget)
            return Shown(self._prompt(self.system + "\n\nThe conversation, its most recent part:\n" + text, question), seen)
        text, seen = self.recent(s.context_tokens // 2)
        system = self.system + (SEARCH if method == "search_tool" else "") + "\n\nThe conversation, its most recent part:\n" + text
        if method == "search_tool":
            return Shown(self._prompt(system, question), seen)
        older = self.older(seen)
        query = QUESTION.format(question=question) if s.rank_by == "message" else question
        found = pick(older, rank_pages(list(older.values()), query, method), s.top_k, s.context_tokens // 2)
        if found:
            system += "\n\nOlder parts that may be relevant:\n" + "\n\n".join(p.text for p in found)
        return Shown(self._prompt(system, question), seen | {t.index for p in found for t in p.turns})

    def search(self, query: str, seen: set[int]) -> list[Page]:
        older = self.older(seen)
        return pick(older, rank_pages(list(older.values()), query, "bm25"), self.settings.top_k, self.settings.context_tokens // 2)

    def history(self, question: str) -> list[dict]:
        """The whole conversation as chat history, then the question: what a paged method sends."""
        turns = [{"role": t.role, "content": text} for t, text in zip(self.conversation.turns, self.lines)]
        return [{"role": "system", "content": self.system}, *turns, {"role": "user", "content": QUESTION.format(question=question)}]

    def _prompt(self, system: str, question: str) -> list[dict]:
        return [{"role": "system", "content": system}, {"role": "user", "content": QUESTION.format(question=question)}]


def paging_options(method: str, settings: Settings) -> dict:
    """The paging server's options for a paged method (`bookmark_recall[:STRATEGY]`, `controller`)."""
    base, _, strategy = method.partition(":")
    if base == "controller":  # ours as the server runs it: the controller's prefetch and the pages the question names
        options = {
            "policy": "learned", "prefetch_budget": settings.prefetch, "match_budget": PagingConfig.match_budget,
            "prefetch_turns": settings.prefetch_turns, "keywords": strategy or "distinctive",
        }
    else:  # the paper's: nothing comes back but what the model recalls
        options = {"policy": "lru", "prefetch_budget": 0, "match_budget": 0, "keywords": strategy or "heuristic"}
    return {"boundary": settings.page, "resident_low": settings.resident, "resident_high": settings.resident, **options}


def check_method(method: str) -> str:
    base, _, strategy = method.partition(":")
    if method in METHODS or (base == "bookmark_recall" and strategy in keywords.names()):
        return method
    raise SystemExit(f"unknown method {method!r}; methods: {', '.join(METHODS)}, bookmark_recall:STRATEGY ({', '.join(keywords.names())})")


# --- answering ---------------------------------------------------------------------------


def answer(endpoint: Endpoint, context: Context, method: str, q: Question, run: str) -> dict:
    """Ask one question with one method; the raw record for the JSONL file."""
    s = context.settings
    record = {"type": "answer", "method": method, "id": q.id, "conversation": q.conversation, "category": q.category}
    calls, fetched, seconds = 0, set(), 0.0
    try:
        if method.startswith(("bookmark_recall", "controller")):
            session = f"locomo-{run}-{method.replace(':', '.')}-{q.id.replace(':', '.')}"
            try:
                reply = endpoint.chat(context.history(q.question), s.max_tokens, session=session, paging=paging_options(method, s))
                pages = endpoint.pages(session)
            finally:
                endpoint.forget(session)
            block = reply.paging
            paged_until = max((last + 1 for _, last in pages.values()), default=0)
            shown_pages = set(block["resident"]) | set(block["prefetched"]) | set(block["recalled"]) | set(block["pinned"])
            shown_turns = {p: pages[p] for p in shown_pages} | {c["page"]: (c["first_turn"], c["last_turn"]) for c in block["prefetched_in_part"]}
            seen = {t for first, last in shown_turns.values() for t in range(first, last + 1)} | set(range(paged_until, len(context.lines)))
            calls = block["rounds"] - 1
            fetched = {t for p in block["recalled"] for t in range(pages[p][0], pages[p][1] + 1)}
            record.update(prefetched=block["prefetched"], recalled=block["recalled"], recall_errors=block["recall_errors"])
            seconds = reply.seconds
        else:
            shown, reply = ask_baseline(endpoint, context, method, q.question)
            seen, seconds = shown.turns, reply.seconds
            if method == "search_tool" and (found := SEARCH_CALL.search(reply.text)):
                calls = 1
                results = context.search(found.group(1), shown.turns)
                fetched = {t.index for p in results for t in p.turns}
                text = "\n\n".join(p.text for p in results) or "(nothing found)"
                follow = shown.messages + [
                    {"role": "assistant", "content": reply.text[: found.end()]},
                    {"role": "user", "content": f"Search results:\n{text}\n\n" + QUESTION.format(question=q.question)},
                ]
                reply = endpoint.chat(follow, s.max_tokens)
                reply = replace(reply, text=SEARCH_CALL.sub("", reply.text))  # no second search
                seen, seconds = seen | fetched, seconds + reply.seconds
        prediction = reply.text.strip()
        record.update(prediction=prediction, prompt_tokens=reply.prompt_tokens, cached_tokens=reply.cached_tokens, error=None)
    except NotPaged:
        raise
    except Exception as error:  # noqa: BLE001 - one failed question must not end a long run; it is counted
        prediction, seen = "", set()
        record.update(prediction="", prompt_tokens=0, error=f"{type(error).__name__}: {error}")
    evidence = set(q.evidence)
    record.update(
        f1=score(q.category, prediction, q.gold),
        evidence_any=bool(evidence & seen),
        evidence_all=evidence <= seen,
        calls=calls,
        fetched_evidence=bool(evidence & fetched) if calls else None,
        seconds=round(seconds, 3),
    )
    return record


def ask_baseline(endpoint: Endpoint, context: Context, method: str, question: str, shrink: float = 0.7, tries: int = 5):
    """A baseline's prompt and the endpoint's answer. full_context fills the window by an
    estimate; when the endpoint finds the prompt too long it is retried 30% shorter."""
    for attempt in range(tries):
        shown = context.baseline(method, question, shrink**attempt)
        try:
            return shown, endpoint.chat(shown.messages, context.settings.max_tokens)
        except Exception as error:  # noqa: BLE001 - openai's BadRequestError, or PagedLLM's ValueError
            if method != "full_context" or "token" not in str(error).lower() or attempt == tries - 1:
                raise


def judge(endpoint: Endpoint, q: Question, record: dict, max_tokens: int = 8) -> dict:
    prompt = JUDGE.format(question=q.question, gold=q.gold, answer=record["prediction"] or "(no answer)")
    reply = endpoint.chat([{"role": "user", "content": prompt}], max_tokens)
    words = reply.text.upper()
    verdict = 1 if "CORRECT" in words and "WRONG" not in words else 0 if "WRONG" in words else None
    return {"type": "judge", "method": record["method"], "id": q.id, "judge": endpoint.model, "verdict": verdict, "raw": reply.text}


# --- the run -----------------------------------------------------------------------------


class Log:
    """The run's JSONL file: its settings first, then one record per answer/judgement.
    One run writes it at a time (a lock held until `close`): two runs resuming the same
    folder would answer every question twice, each slowing the other's latencies."""

    def __init__(self, path: Path, settings: Settings):
        self.path = path
        self.records: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path.with_name(path.name + ".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SystemExit(f"another run is writing {path}: wait for it to end, or use another --out") from None
        if path.exists():
            lines_ = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            saved = lines_[0].get("settings") if lines_ else None
            saved = saved and {**BEFORE_SETTINGS, **saved}
            if saved != asdict(settings):
                self.close()
                raise SystemExit(f"{path} holds a run with other settings ({saved}); use another --out to start a new one")
            self.records, self.run = lines_[1:], lines_[0]["run"]
        else:
            self.run = uuid.uuid4().hex[:8]
            self._write({"type": "settings", "settings": asdict(settings), "run": self.run})

    def close(self) -> None:
        self._lock.close()

    def done(self, kind: str) -> set[tuple[str, str]]:
        return {(r["method"], r["id"]) for r in self.records if r["type"] == kind}

    def add(self, record: dict) -> None:
        self.records.append(record)
        self._write(record)

    def _write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def run(endpoint: Endpoint, conversations: Sequence[Conversation], questions: Sequence[Question], methods: Sequence[str],
        settings: Settings, log: Log, concurrency: int, judge_endpoint: Endpoint | None = None) -> None:
    """Answer every (method, question) not in the log yet. Per method and conversation the
    first question goes alone, so the shared start of its prompts is computed once and
    the others find it in the prefix cache."""
    contexts = {c.id: Context(c, settings) for c in conversations}
    done = log.done("answer")
    # a conversation's questions go through every method before the next conversation's, so
    # a machine whose load changes during a long run slows the methods alike
    todo = [(m, q) for q in questions for m in methods if (m, q.id) not in done]
    groups: dict[tuple[str, str], list[Question]] = defaultdict(list)
    for m, q in todo:
        groups[(m, q.conversation)].append(q)
    bar = tqdm(total=len(todo), desc="answers", unit="q", file=sys.stderr)
    with ThreadPoolExecutor(max(concurrency, 1)) as pool:
        for (method, conversation), group in groups.items():
            ask = lambda q: answer(endpoint, contexts[conversation], method, q, log.run)  # noqa: E731
            log.add(ask(group[0]))
            bar.update()
            for record in pool.map(ask, group[1:]):  # in order, each logged as soon as it and those before it are done
                log.add(record)
                bar.update()
    bar.close()
    if judge_endpoint is None:
        return
    by_id = {q.id: q for q in questions}
    judged = log.done("judge")
    pending = [r for r in log.records if r["type"] == "answer" and r["id"] in by_id and r["method"] in methods and (r["method"], r["id"]) not in judged]
    with ThreadPoolExecutor(max(concurrency, 1)) as pool:
        for verdict in tqdm(pool.map(lambda r: judge(judge_endpoint, by_id[r["id"]], r), pending), total=len(pending), desc="judge", unit="q", file=sys.stderr):
            log.add(verdict)


# --- the report --------------------------------------------------------------------------


def summarize(records: Sequence[dict], questions: Sequence[Question], methods: Sequence[str]) -> dict:
    """Per method: F1 overall and by category number (with counts), judge share, prompt
    tokens, calls, recall precision, evidence in context, F1 where all of it was (finding
    the evidence apart from reading it), latency."""
    wanted = {q.id for q in questions}
    answers = {(r["method"], r["id"]): r for r in records if r["type"] == "answer" and r["id"] in wanted}
    verdicts = {(r["method"], r["id"]): r["verdict"] for r in records if r["type"] == "judge" and r["verdict"] is not None}
    out = {}
    for method in methods:
        rows = [answers[(method, q.id)] for q in questions if (method, q.id) in answers]
        if not rows:
            continue
        cats = sorted({r["category"] for r in rows})
        called = [r for r in rows if r["calls"]]
        shown = [r["f1"] for r in rows if r["evidence_all"]]
        judged = [verdicts[(method, r["id"])] for r in rows if (method, r["id"]) in verdicts]
        out[method] = {
            "n": len(rows),
            "f1": statistics.fmean(r["f1"] for r in rows),
            "f1_by_category": {str(c): statistics.fmean(r["f1"] for r in rows if r["category"] == c) for c in cats},
            "count_by_category": {str(c): sum(1 for r in rows if r["category"] == c) for c in cats},
            "judge": statistics.fmean(judged) if judged else None,
            "judged": len(judged),
            "prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in rows),
            "cached_tokens": statistics.fmean(cached) if (cached := [r["cached_tokens"] for r in rows if r.get("cached_tokens") is not None]) else None,
            "calls_per_question": statistics.fmean(r["calls"] for r in rows),
            "recall_precision": statistics.fmean(bool(r["fetched_evidence"]) for r in called) if called else None,
            "evidence_any": statistics.fmean(r["evidence_any"] for r in rows),
            "evidence_all": statistics.fmean(r["evidence_all"] for r in rows),
            "f1_evidence_shown": statistics.fmean(shown) if shown else None,
            "evidence_shown": len(shown),
            "p50_s": percentile([r["seconds"] for r in rows], 0.5),
            "p95_s": percentile([r["seconds"] for r in rows], 0.95),
            "errors": sum(1 for r in rows if r["error"]),
        }
    return out


def report(summary: dict, settings: Settings, questions: Sequence[Question], concurrency: int) -> str:
    cats = sorted({str(q.category) for q in questions}, key=int)
    counts = {c: sum(1 for q in questions if str(q.category) == c) for c in cats}
    headers = ["method", "F1", *[f"F1 cat {c} (n={counts[c]})" for c in cats], "J", "prompt tok", "cached tok", "calls/q", "recall prec", "evidence any/all", "F1 all evidence shown (n)", "p50/p95 s", "errors"]
    rows = [
        [
            m, s["f1"], *[s["f1_by_category"].get(c) for c in cats], s["judge"], round(s["prompt_tokens"]),
            None if s["cached_tokens"] is None else round(s["cached_tokens"]), s["calls_per_question"],
            s["recall_precision"], f"{s['evidence_any']:.2f}/{s['evidence_all']:.2f}",
            "-" if s["f1_evidence_shown"] is None else f"{s['f1_evidence_shown']:.3f} ({s['evidence_shown']})", f"{s['p50_s']:.1f}/{s['p95_s']:.1f}", s["errors"],
        ]
        for m, s in summary.items()
    ]
    title = (
        f"LoCoMo, {len(questions)} questions (categories {', '.join(cats)}), model {settings.model}, "
        f"context budget {settings.context_tokens} tokens ({settings.window} for full_context), {settings.page} pages, "
        f"k = {settings.resident}, {concurrency} requests in flight"
    )
    return table(headers, rows, title) + f"\n\nanchor: {ANCHOR}"


def plot(summary: dict, path: Path) -> list[Path]:
    plt = pyplot()
    methods = list(summary)
    cats = sorted({c for s in summary.values() for c in s["f1_by_category"]}, key=int)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / (len(cats) + 1)
    for i, label in enumerate(["all", *cats]):
        values = [summary[m]["f1"] if label == "all" else summary[m]["f1_by_category"].get(label, 0.0) for m in methods]
        ax.bar([x + i * width for x in range(len(methods))], values, width, label="all categories" if label == "all" else f"category {label}")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(methods))], methods, rotation=20)
    ax.set_ylabel("LoCoMo F1")
    ax.legend(fontsize=8)
    scores = save_figure(fig, path.with_name(path.stem + "_scores.png"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in [(axes[0], "f1", "LoCoMo F1"), (axes[1], "evidence_any", "questions with evidence in the prompt")]:
        for m in methods:
            ax.scatter(summary[m]["prompt_tokens"], summary[m][key])
            ax.annotate(m, (summary[m]["prompt_tokens"], summary[m][key]), fontsize=8)
        ax.set_xlabel("prompt tokens per question (mean)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    return [scores, save_figure(fig, path.with_name(path.stem + "_tokens.png"))]


def update_readme(readme: Path, text: str) -> None:
    """Replace the block between the LoCoMo markers of the README with `text`."""
    start, end = "<!-- locomo-results:start -->", "<!-- locomo-results:end -->"
    content = readme.read_text(encoding="utf-8")
    if start not in content or end not in content:
        raise SystemExit(f"{readme} has no {start} ... {end} block to update")
    head, rest = content.split(start, 1)
    readme.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


def main(args) -> dict:
    data = args.data or default_locomo_path()
    if data is None:
        raise SystemExit("no LoCoMo file: pass --data PATH (or set PAGED_CONTEXT_LOCOMO)")
    methods = [check_method(m) for m in (args.methods or (ABLATION if args.ablation else METHODS))]
    conversations = load_locomo(data)
    questions = stratified(questions_of(conversations, args.categories), args.limit, args.seed)
    in_process = args.endpoint == "inprocess"
    if in_process and args.judge_model and not args.judge_endpoint:
        raise SystemExit("--judge-model needs --judge-endpoint when the answers come from --endpoint inprocess")
    endpoint: Endpoint = InProcessEndpoint(args.model_path, engine=args.engine) if in_process else HTTPEndpoint(args.endpoint, args.model, args.api_key)
    judge_endpoint = None
    if args.judge:
        separate = args.judge_endpoint or args.judge_model
        judge_endpoint = HTTPEndpoint(args.judge_endpoint or args.endpoint, args.judge_model or args.model, args.api_key) if separate else endpoint
    settings = Settings(endpoint.model, str(Path(data).resolve()), args.context_tokens, args.window, args.max_tokens, args.page, args.resident, args.top_k, args.prefetch, args.prefetch_turns)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "locomo.jsonl", settings)
    print(f"{len(questions)} questions x {len(methods)} methods, {len(conversations)} conversations from {data}", file=sys.stderr)
    try:
        run(endpoint, conversations, questions, methods, settings, log, 1 if in_process else args.concurrency, judge_endpoint)
    finally:
        log.close()
        if in_process:
            endpoint.close()
    summary = summarize(log.records, questions, methods)
    text = report(summary, settings, questions, 1 if in_process else args.concurrency)
    print(text)
    result = {"settings": asdict(settings), "questions": len(questions), "seed": args.seed, "methods": summary, "anchor": ANCHOR}
    (args.out / "locomo.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "locomo.md").write_text(text + "\n", encoding="utf-8")
    charts = plot(summary, args.out / "locomo.png")
    if args.readme:
        update_readme(args.readme, text)
    print(f"\nwrote {args.out / 'locomo.json'}, {args.out / 'locomo.md'}, {', '.join(map(str, charts))}")
    return result


def add_arguments(p) -> None:
    p.add_argument("--endpoint", default="http://127.0.0.1:8000/v1", help="an OpenAI-compatible base URL, or `inprocess` for PagedLLM without a server")
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="the model name the endpoint serves")
    p.add_argument("--model-path", help="with --endpoint inprocess: a local HF model directory (default: the embedded model)")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"], help="with --endpoint inprocess: the engine")
    p.add_argument("--api-key", default="none", help="the endpoint's API key, also sent to the judge")
    p.add_argument("--data", type=Path, help="a LoCoMo-format file (default: $PAGED_CONTEXT_LOCOMO or the dev split in ../shared)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"default: {' '.join(METHODS)}; also bookmark_recall:STRATEGY")
    p.add_argument("--ablation", action="store_true", help=f"the bookmark ablation instead: {' '.join(ABLATION)}")
    p.add_argument("--categories", type=int, nargs="+", default=[1, 2, 3, 4], help="LoCoMo category numbers (default 1 2 3 4)")
    p.add_argument("--limit", type=int, help="a subset of this many questions, stratified by category and conversation")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified subset")
    p.add_argument("--context-tokens", type=int, default=Settings.context_tokens, help="context budget of every method but full_context")
    p.add_argument("--window", type=int, default=Settings.window, help="the model's context window (full_context fills it)")
    p.add_argument("--max-tokens", type=int, default=Settings.max_tokens, help="answer length limit")
    p.add_argument("--page", default=Settings.page, help="page boundary strategy (default fixed_10)")
    p.add_argument("--resident", type=int, default=Settings.resident, help="resident pages k of the paged methods")
    p.add_argument("--top-k", type=int, default=Settings.top_k, help="pages bm25/word_overlap/search return")
    p.add_argument("--prefetch", type=int, default=Settings.prefetch, help="the controller's prefetch budget")
    p.add_argument("--prefetch-turns", type=int, default=Settings.prefetch_turns, metavar="N",
                   help=f"the controller shows N turns of each page it brings back, around the one the question names best (0: all; default {Settings.prefetch_turns})")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (the engine batches them)")
    p.add_argument("--judge", action="store_true", help="also ask an LLM judge (CORRECT/WRONG, temperature 0)")
    p.add_argument("--judge-endpoint", help="the judge's endpoint (default: --endpoint)")
    p.add_argument("--judge-model", help="the judge's model (default: --model)")
    p.add_argument("--readme", type=Path, help="also write the table into this README's locomo-results block")
    p.add_argument("--out", type=Path, default=Path("out/locomo"), help="the run's folder: locomo.jsonl (resumable), .json, .md, .png")
