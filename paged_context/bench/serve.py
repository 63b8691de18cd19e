"""`bench serve`: one scripted long conversation, sent turn by turn as a stateless
OpenAI client would (the whole history every time), to the paging server and to the
same vLLM engine without paging. Per turn: the history's size, the prompt tokens, those
served from the prefix cache and those computed (prompt less cached), the time to first
token, and the pages brought back. Without paging the prompt grows with the history until
the engine refuses it; with paging it stays bounded. A few turns ask about facts told
early on (`asks_past`); the rest talk about one hobby at a time and ask about none.

The summary compares the two in the same run: while the conversation fits the window
(turns both answered), the median TTFT and median computed tokens, paged over unpaged;
past the window, the paged TTFT of the last 10 turns over turns 10-20; and on how many
turns that ask about nothing past pages were brought back.
"""

from __future__ import annotations

import shlex
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .report import publish, pyplot, save_panels, table
from .servers import served

TOPICS = ["gardening", "chess openings", "sourdough baking", "marathon training", "birdwatching", "pottery", "astronomy", "jazz piano"]
SENTENCES = [
    "I spent a while today thinking about {t} and the people who have taken it up for years.",
    "A friend keeps telling me that the first months of {t} are the hardest and that patience matters most.",
    "I read two long articles about {t} this morning and took notes on the practical advice they gave.",
    "The common mistakes beginners make with {t} seem to come from rushing and from expensive equipment.",
    "Keeping a simple journal of progress in {t} might help me see whether it deserves a place in my week.",
    "There is a small group near my flat that meets on Thursdays for {t}, and I might join them next month.",
]
# facts told in passing (turn -> sentence) and, much later, questions about them (turn -> question)
FACTS = {
    0: "Please remember this: my locker code at the Riverside gym is 4417.",
    3: "Also, my sister Ines is getting married in Porto on the 14th of June.",
    6: "By the way, my first cat was called Pimenta.",
}
QUESTIONS = {
    21: "What is my locker code at the Riverside gym?",
    27: "Where is my sister Ines getting married, and when?",
    33: "What was my first cat called?",
}


def message(turn: int, sentences: int) -> str:
    """A deterministic user message of about 25 tokens per sentence (0-based turn)."""
    if turn in QUESTIONS:
        return f"(Note {turn}.) {QUESTIONS[turn]}"
    topic = TOPICS[turn % len(TOPICS)]
    body = " ".join(SENTENCES[(turn + k) % len(SENTENCES)].format(t=topic) for k in range(max(sentences - (turn in FACTS), 0)))
    fact = f"{FACTS[turn]} " if turn in FACTS else ""
    return f"(Note {turn}.) {fact}{body} What do you think about {topic}?"


def converse(url: str, model: str, turns: int, sentences: int, max_tokens: int, session: str | None, label: str) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    history, rows = [], []
    headers = {"X-Session-Id": session} if session else {}
    for turn in tqdm(range(turns), desc=label, unit="turn", disable=None):
        history.append({"role": "user", "content": message(turn, sentences)})
        started, first, text, usage, paging = time.perf_counter(), None, "", None, None
        try:
            stream = client.chat.completions.create(
                model=model, messages=history, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_headers=headers,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - started
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    paging = (chunk.model_extra or {}).get("paged_context", paging)
                if chunk.usage:
                    usage = chunk.usage
        except openai.APIStatusError as error:
            rows.append({"turn": turn + 1, "error": f"HTTP {error.status_code}: {str(error.message)[:200]}"})
            break
        total = time.perf_counter() - started
        cached = (usage.prompt_tokens_details.cached_tokens or 0) if usage.prompt_tokens_details else 0
        rows.append({
            "turn": turn + 1,
            "asks_past": turn in QUESTIONS,
            "history_tokens": paging["history_tokens"] if paging else usage.prompt_tokens,
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": cached,
            "computed_tokens": usage.prompt_tokens - cached,
            "ttft_s": first if first is not None else total,
            "total_s": total,
            "evicted": len(paging["evicted"]) if paging else 0,
            "evicted_now": len(paging["evicted_now"]) if paging else 0,
            "prefetched": len(paging["prefetched"]) if paging else 0,
        })
        history.append({"role": "assistant", "content": text})
    return rows


def run(model: Path, turns: int, sentences: int, max_tokens: int, engine_flags: list[str]) -> dict:
    name = model.name
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    result = {"model": name, "turns": turns, "max_tokens": max_tokens, "engine_flags": engine_flags}
    with served(model, engine_flags, work, paged=True) as url:
        result["paged"] = converse(url, name, turns, sentences, max_tokens, "bench", "paged")
    with served(model, engine_flags, work, paged=False) as url:
        result["unpaged"] = converse(url, name, turns, sentences, max_tokens, None, "unpaged")
    result["summary"] = summarize(result)
    return result


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(result: dict) -> dict:
    """The paged server against the unpaged one, from the rows of one run."""
    paged = [r for r in result["paged"] if "error" not in r]
    unpaged = {r["turn"]: r for r in result["unpaged"] if "error" not in r}
    both = [(r, unpaged[r["turn"]]) for r in paged if r["turn"] in unpaged]
    refused = next((r["turn"] for r in result["unpaged"] if "error" in r), None)
    ttft = lambda rows: _median([r["ttft_s"] for r in rows])  # noqa: E731
    computed = lambda rows: _median([r["computed_tokens"] for r in rows])  # noqa: E731
    middle = [r for r in paged if 10 <= r["turn"] <= 20]
    last = paged[-10:] if refused is not None and len(paged) >= 30 else []
    chat = [r for r in paged if not r["asks_past"] and r["evicted"]]  # could have brought back a page
    asks = [r for r in paged if r["asks_past"]]
    return {
        "turns_both_answered": len(both),
        "unpaged_refused_at_turn": refused,
        "fits_ttft_ratio": _ratio(ttft([p for p, _ in both]), ttft([u for _, u in both])),
        "fits_computed_ratio": _ratio(computed([p for p, _ in both]), computed([u for _, u in both])),
        "past_window_ttft_ratio": _ratio(ttft(last), ttft(middle)) if last else None,
        "compactions": sum(1 for r in paged if r["evicted_now"]),
        "compaction_computed_tokens": _median([r["computed_tokens"] for r in paged if r["evicted_now"]]),
        "chat_turns_with_pages_out": len(chat),
        "chat_turns_prefetching": sum(1 for r in chat if r["prefetched"]),
        "past_turns": len(asks),
        "past_turns_prefetching": sum(1 for r in asks if r["prefetched"]),
    }


def report(result: dict) -> str:
    unpaged = {r["turn"]: r for r in result["unpaged"]}
    rows = []
    for p in result["paged"]:
        u = unpaged.get(p["turn"])
        if p.get("error"):
            rows.append([p["turn"], "-", p["error"], "-", "-", "-", "-", "-", "-", "-"])
            continue
        u_cells = ["-", "-", "-"] if u is None else [u["error"], "-", "-"] if u.get("error") else [u["prompt_tokens"], u["computed_tokens"], f"{u['ttft_s']:.2f}"]
        brought = f"{p['prefetched']}" + (" (asks past)" if p["asks_past"] else "")
        rows.append([p["turn"], p["history_tokens"], p["prompt_tokens"], p["computed_tokens"], f"{p['ttft_s']:.2f}", p["evicted_now"] or "", brought, *u_cells])
    text = table(
        ["turn", "history tokens", "paged: prompt", "paged: computed", "paged: TTFT s", "evicted now", "pages brought back",
         "unpaged: prompt", "unpaged: computed", "unpaged: TTFT s"],
        rows,
        title=f"bench serve: {result['model']}, {result['turns']} turns, max_tokens {result['max_tokens']} (the whole history sent every turn)",
    )
    s = result.get("summary") or summarize(result)
    fmt = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
    lines = [
        "",
        f"While the conversation fits ({s['turns_both_answered']} turns both answered; unpaged refused from turn {s['unpaged_refused_at_turn'] or '-'}):",
        f"  median TTFT paged / unpaged {fmt(s['fits_ttft_ratio'])} (target <= 1.25), median computed prompt tokens {fmt(s['fits_computed_ratio'])} (target <= 1.5)",
        f"Past the window: paged TTFT, last 10 turns / turns 10-20 {fmt(s['past_window_ttft_ratio'])} (target <= 1.3)",
        f"Compactions: {s['compactions']}, median computed tokens on those turns {s['compaction_computed_tokens'] or '-'}",
        f"Pages brought back on {s['chat_turns_prefetching']} of {s['chat_turns_with_pages_out']} turns that ask about nothing past (target <= 10%), "
        f"on {s['past_turns_prefetching']} of {s['past_turns']} that do",
    ]
    return text + "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in (("paged", result["paged"]), ("unpaged", result["unpaged"])):
        ok = [r for r in rows if "error" not in r]
        line, = left.plot([r["turn"] for r in ok], [r["prompt_tokens"] for r in ok], marker=".", label=f"{label}: prompt")
        left.plot([r["turn"] for r in ok], [r["computed_tokens"] for r in ok], linestyle="--", color=line.get_color(), label=f"{label}: computed")
        right.plot([r["turn"] for r in ok], [r["ttft_s"] for r in ok], marker=".", label=label)
        failed = [r for r in rows if "error" in r]
        if failed:
            left.axvline(failed[0]["turn"], color="red", alpha=0.4, linestyle="--", label=f"{label} fails")
    left.set(xlabel="turn", ylabel="prompt tokens", title="Prompt tokens per turn (computed: not cached)")
    right.set(xlabel="turn", ylabel="seconds", title="Time to first token")
    return save_panels(fig, (left, right), path)


def main(args) -> dict:
    from ..models.default_model import resolve

    result = run(resolve(args.model), args.turns, args.sentences, args.max_tokens, shlex.split(args.engine_flags))
    return publish(result, report(result), args.out, "serve", plot)


def add_arguments(p) -> None:
    p.add_argument("--model", type=Path, help="a local HF model directory (default: the embedded default model)")
    p.add_argument("--turns", type=int, default=40, help="user turns (default 40: about 1k to 20k tokens of history)")
    p.add_argument("--sentences", type=int, default=18, help="sentences per user message, about 25 tokens each (default 18)")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length per turn (default 32)")
    p.add_argument("--engine-flags", default="", metavar="FLAGS", help='extra vLLM flags for both servers, one string: --engine-flags "--dtype bfloat16"')
    p.add_argument("--out", type=Path, help="write serve.json and serve.png here")
