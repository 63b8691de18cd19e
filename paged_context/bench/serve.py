"""`bench serve`: one scripted long conversation, sent turn by turn as a stateless
OpenAI client would (the whole history every time), to the paging server and to the
same vLLM engine without paging. Per turn: the history's size, the prompt tokens the
engine processed, the prompt tokens served from its prefix cache, and the time to first
token. Without paging the prompt grows with the history until the engine refuses it;
with paging it stays bounded.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .report import publish, pyplot, save_figure, table
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


def message(turn: int, sentences: int) -> str:
    """A deterministic user message of about 25 tokens per sentence."""
    if turn == 0:
        return "Please remember this: my locker code at the Riverside gym is 4417. " + message(1, sentences - 1)
    topic = TOPICS[turn % len(TOPICS)]
    body = " ".join(SENTENCES[(turn + k) % len(SENTENCES)].format(t=topic) for k in range(sentences))
    return f"(Note {turn}.) {body} What do you think about {topic}?"


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
            "history_tokens": paging["history_tokens"] if paging else usage.prompt_tokens,
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": cached,
            "ttft_s": first if first is not None else total,
            "total_s": total,
            "evicted": len(paging["evicted"]) if paging else 0,
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
    return result


def report(result: dict) -> str:
    unpaged = {r["turn"]: r for r in result["unpaged"]}
    rows = []
    for p in result["paged"]:
        u = unpaged.get(p["turn"])
        if p.get("error"):
            rows.append([p["turn"], "-", p["error"], "-", "-", "-", "-", "-"])
            continue
        u_cells = ["-", "-", "-"] if u is None else [u["error"], "-", "-"] if u.get("error") else [u["prompt_tokens"], u["cached_tokens"], f"{u['ttft_s']:.2f}"]
        rows.append([p["turn"], p["history_tokens"], p["prompt_tokens"], p["cached_tokens"], f"{p['ttft_s']:.2f}", *u_cells])
    return table(
        ["turn", "history tokens", "paged: prompt", "paged: cached", "paged: TTFT s", "unpaged: prompt", "unpaged: cached", "unpaged: TTFT s"],
        rows,
        title=f"bench serve: {result['model']}, {result['turns']} turns, max_tokens {result['max_tokens']} (the whole history sent every turn)",
    )


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in (("paged", result["paged"]), ("unpaged", result["unpaged"])):
        ok = [r for r in rows if "error" not in r]
        left.plot([r["turn"] for r in ok], [r["prompt_tokens"] for r in ok], marker=".", label=label)
        right.plot([r["turn"] for r in ok], [r["ttft_s"] for r in ok], marker=".", label=label)
        failed = [r for r in rows if "error" in r]
        if failed:
            left.axvline(failed[0]["turn"], color="red", alpha=0.4, linestyle="--", label=f"{label} fails")
    left.set(xlabel="turn", ylabel="prompt tokens", title="Prompt tokens per turn")
    right.set(xlabel="turn", ylabel="seconds", title="Time to first token")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


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
