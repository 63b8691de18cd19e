"""`bench agent`: a scripted coding agent (`agent_script`) run through the real openai
client against the paging server and against stock vLLM without paging, same model and
engine flags. The client is stateless: every step it sends the whole history (the
client's own tools, its calls and their large results, the user's questions, the
model's replies) and asks for the model's next message.

Per step and server: prompt tokens, prompt tokens served from the prefix cache, the
history's size, latency, and the error if the request failed. At each question, whether
the planted fact was in the prompt the model saw (the paging server returns its prompt
when asked; stock vLLM sends everything, so there the request succeeding is enough) and
whether the answer has it (reported, not a target: the default model is small). Stock
vLLM refuses every request once the history passes its window; the bench keeps sending
every step to both servers, so each arm's record is complete (a refusal costs
milliseconds).
"""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .agent_script import ASKS, FACTS, NOT_FOUND, RESULT_TOKENS, TOOL_CALLS, TOOLS, Fact, Step, build, opening
from .report import percentile, publish, pyplot, save_panels, table
from .servers import served

SESSION = "bench-agent"
# stock vLLM takes `tools` with tool_choice "auto" only with a tool-call parser; the
# paging server parses calls itself
STOCK_TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


def fact_source(prompt: list[dict], needle: str) -> str | None:
    """Where the paging server's prompt showed the planted line: "prefetched" (the note
    of pages brought back for the request, a system message before it), "recalled" (the
    result of a recall call), "in view" (a resident page or a recent turn); None when
    the prompt does not have it."""
    for i, message in enumerate(prompt):
        if needle not in (message.get("content") or ""):
            continue
        if message["role"] == "system":
            return "prefetched"
        if message["role"] == "tool" and i and _is_recall(prompt[i - 1]):
            return "recalled"
        return "in view"
    return None


def _is_recall(message: dict) -> bool:
    calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
    return message["role"] == "assistant" and ("recall" in calls or (message.get("content") or "").lstrip().startswith("recall("))


def drive(url: str, model: str, script: list[Step], max_tokens: int, answer_tokens: int, paged: bool) -> list[dict]:
    """Run the script against one server; one row per step."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    headers = {"X-Session-Id": SESSION} if paged else {}
    history, rows = opening(), []
    for step in tqdm(script, desc="paged" if paged else "unpaged", unit="step", disable=None):
        history += step.messages()
        ask = step.ask
        row: dict = {"step": step.number, "calls": len(step.calls)} | ({"ask": ask.subject} if ask else {})
        extra = {"paged_context": {"return_prompt": True}} if paged and ask else None
        started = time.perf_counter()
        try:
            reply = client.chat.completions.create(
                model=model, messages=history, tools=TOOLS, tool_choice="auto", max_tokens=answer_tokens if ask else max_tokens,
                temperature=0, extra_headers=headers, extra_body=extra,
            )
        except (openai.APIStatusError, openai.APIConnectionError) as error:
            row |= {"error": _error_text(error), "latency_s": time.perf_counter() - started}
            rows.append(row | (_verdict(ask, None, None, paged) if ask else {}))
            continue
        row["latency_s"] = time.perf_counter() - started
        message, usage = reply.choices[0].message, reply.usage
        block = (reply.model_extra or {}).get("paged_context")
        details = usage.prompt_tokens_details
        row |= {
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": (details.cached_tokens or 0) if details else 0,
            "history_tokens": block["history_tokens"] if block else usage.prompt_tokens,  # unpaged, the prompt is the history
            "model_calls": len(message.tool_calls or []),
        }
        if block:
            row |= {"pages": block["pages"], "evicted": len(block["evicted"])} | {k: block[k] for k in ("resident", "prefetched", "recalled")}
        history.append(_assistant(message))
        history += [{"role": "tool", "tool_call_id": call.id, "content": NOT_FOUND} for call in message.tool_calls or []]
        rows.append(row | (_verdict(ask, message.content or "", block["prompt"] if paged else None, paged) if ask else {}))
    return rows


def _verdict(ask: Fact, answer: str | None, prompt: list[dict] | None, paged: bool) -> dict:
    """At a question: was the planted fact in the prompt (the paging server's, searched;
    stock vLLM's has everything), does the answer have it. `answer` None: the request failed."""
    source = fact_source(prompt, ask.needle) if prompt is not None else None
    verdict = {
        "fact_in_prompt": answer is not None and (source is not None or not paged),
        "answer_has_fact": ask.answer.lower() in (answer or "").lower(),
        "answer": answer or "",
    }
    return verdict | ({"fact_source": source} if paged else {})


def _error_text(error) -> str:
    """HTTP status and the server's message, or why there was no response (gone, timed out)."""
    if not hasattr(error, "status_code"):
        return f"no response: {error}"
    message = error.body.get("message") if isinstance(error.body, dict) else None  # the JSON error's message
    return f"HTTP {error.status_code}: " + " ".join(str(message or error.message).split())[:300]


def _assistant(message) -> dict:
    """The model's reply as the client sends it back."""
    calls = [c.model_dump() for c in message.tool_calls or []]
    return {"role": "assistant", "content": message.content or ""} | ({"tool_calls": calls} if calls else {})


def window_of(url: str) -> int:
    """The model's window, as the server's /v1/models reports it (vLLM's max_model_len)."""
    import openai

    (served_model,) = openai.OpenAI(base_url=url + "/v1", api_key="none").models.list().data
    return served_model.model_extra["max_model_len"]


def summarize(rows: list[dict]) -> dict:
    done = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    asks = [r for r in rows if "ask" in r]
    prompts, latencies = [r["prompt_tokens"] for r in done], [r["latency_s"] for r in done]
    return {
        "steps": len(rows),
        "completed": len(done),
        "errors": len(failed),
        "first_error_step": failed[0]["step"] if failed else None,
        "first_error": failed[0]["error"] if failed else None,
        "asks": len(asks),
        "facts_in_prompt": sum(r["fact_in_prompt"] for r in asks),
        "answers_with_fact": sum(r["answer_has_fact"] for r in asks),
        "model_tool_calls": sum(r["model_calls"] for r in done),
        "prompt_tokens_p50": percentile(prompts, 0.5),
        "prompt_tokens_p95": percentile(prompts, 0.95),
        "cached_tokens_p50": percentile([r["cached_tokens"] for r in done], 0.5),
        "latency_s_p50": percentile(latencies, 0.5),
        "latency_s_p95": percentile(latencies, 0.95),
        "seconds": sum(r["latency_s"] for r in rows),
    }


def acceptance(result: dict) -> dict:
    """The three figures the benchmark exists to show."""
    paged, unpaged = result["paged"]["summary"], result["unpaged"]["summary"]
    window, first = result["window"], unpaged["first_error_step"]
    history = {r["step"]: r.get("history_tokens") for r in result["paged"]["rows"]}
    # refused from the first error on and never before, and only once the history outgrew the window
    refused_after = first is not None and all("error" in r for r in result["unpaged"]["rows"] if r["step"] >= first)
    over = first is not None and history.get(first) is not None and history[first] > window - result["max_tokens"]
    return {
        "paged_completes_every_step": paged["errors"] == 0,
        "unpaged_fails_past_window": bool(refused_after and over),
        "unpaged_first_refused_step": first,
        "history_tokens_at_first_refusal": history.get(first) if first else None,
        "facts_in_prompt_rate": paged["facts_in_prompt"] / paged["asks"] if paged["asks"] else None,
        "facts_in_prompt_target": 0.9,
    }


def run(
    model: Path, seed: int, tool_calls: int, asks: int, result_tokens: int, max_tokens: int, answer_tokens: int,
    engine_flags: list[str], paging_flags: list[str],
) -> dict:
    script = build(seed, tool_calls, asks, result_tokens)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    result = {
        "model": model.name, "seed": seed, "tool_calls": tool_calls, "asks": asks, "result_tokens": result_tokens,
        "max_tokens": max_tokens, "answer_tokens": answer_tokens, "engine_flags": engine_flags, "paging_flags": paging_flags, "steps": len(script),
        "questions": {s.number: s.ask.question for s in script if s.ask},
    }
    started = time.perf_counter()
    with served(model, engine_flags, work, paged=True, own_flags=paging_flags) as url:
        result["window"] = window_of(url)
        rows = drive(url, model.name, script, max_tokens, answer_tokens, paged=True)
        result["paged"] = {"rows": rows, "summary": summarize(rows)}
    with served(model, engine_flags, work, paged=False, own_flags=STOCK_TOOL_FLAGS) as url:
        rows = drive(url, model.name, script, max_tokens, answer_tokens, paged=False)
        result["unpaged"] = {"rows": rows, "summary": summarize(rows)}
    result["wall_s"] = time.perf_counter() - started
    result["acceptance"] = acceptance(result)
    return result


def _cells(row: dict | None) -> list:
    if row is None:
        return ["-"] * 3
    if "error" in row:
        return [row["error"].split(":")[0], "", ""]  # the whole message is in the totals and the JSON
    return [row["prompt_tokens"], row["cached_tokens"], f"{row['latency_s']:.1f}"]


def _tokens(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,} tokens"


def _percent(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "-"


def report(result: dict) -> str:
    return "\n".join([_steps_table(result), _asks_table(result), _totals_table(result), "\nAcceptance:", *_verdicts(result)])


def _steps_table(result: dict) -> str:
    paged, unpaged = result["paged"]["rows"], {r["step"]: r for r in result["unpaged"]["rows"]}
    first = result["unpaged"]["summary"]["first_error_step"]
    every = max(len(paged) // 15, 1)
    shown = [r for r in paged if r["step"] % every == 0 or r["step"] in (1, len(paged), first, (first or 0) - 1)]
    return table(
        ["step", "history tokens (paged)", "paged: prompt", "paged: cached", "paged: s", "unpaged: prompt", "unpaged: cached", "unpaged: s"],
        [[r["step"], r.get("history_tokens", "-"), *_cells(r), *_cells(unpaged.get(r["step"]))] for r in shown],
        title=(f"bench agent: {result['model']} (window {result['window']:,}), seed {result['seed']}, {result['tool_calls']} tool calls "
               f"in {result['steps']} steps, {result['asks']} questions, the whole history sent every step; shown: every {every} steps "
               "and around stock vLLM's first refusal"),
    )


def _asks_table(result: dict) -> str:
    unpaged = {r["step"]: r for r in result["unpaged"]["rows"]}
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    return table(
        ["step", "asks about", "paged: fact in prompt", "paged: answer has it", "unpaged: fact in prompt", "unpaged: answer has it"],
        [[r["step"], r["ask"], r.get("fact_source") or ("error" if "error" in r else "no"), yes(r["answer_has_fact"]),
          "yes" if unpaged[r["step"]]["fact_in_prompt"] else "no (refused)", yes(unpaged[r["step"]]["answer_has_fact"])]
         for r in result["paged"]["rows"] if "ask" in r],
        title="Questions about planted facts (paged: where the prompt had the fact)",
    )


def _totals_table(result: dict) -> str:
    rows = []
    for arm in ("paged", "unpaged"):
        s = result[arm]["summary"]
        rows.append([
            arm, f"{s['completed']}/{s['steps']}", s["errors"], s["first_error_step"] or "-", _percent(s["facts_in_prompt"], s["asks"]),
            _percent(s["answers_with_fact"], s["asks"]), f"{s['prompt_tokens_p50'] or 0:,}/{s['prompt_tokens_p95'] or 0:,}",
            f"{s['latency_s_p50'] or 0:.1f}/{s['latency_s_p95'] or 0:.1f}", s["model_tool_calls"],
        ])
    return table(
        ["server", "steps answered", "errors", "first error at", "fact in prompt", "answer has fact", "prompt tokens p50/p95", "latency s p50/p95", "model's own calls"],
        rows, title="Totals (prompt tokens and latency over the answered steps)",
    )


def _verdicts(result: dict) -> list[str]:
    a, paged, unpaged = result["acceptance"], result["paged"]["summary"], result["unpaged"]["summary"]
    rate = a["facts_in_prompt_rate"]
    refused = (
        f"(first refused at step {a['unpaged_first_refused_step']}, history {_tokens(a['history_tokens_at_first_refusal'])} against a window "
        f"of {result['window']:,}; {unpaged['errors']} of {unpaged['steps']} steps refused, the first with {unpaged['first_error']})"
        if a["unpaged_first_refused_step"] else "(never refused)"
    )
    return [
        f"- paging server completes every step: {'yes' if a['paged_completes_every_step'] else 'NO'} ({paged['completed']}/{paged['steps']})",
        f"- stock vLLM fails past the window: {'yes' if a['unpaged_fails_past_window'] else 'NO'} {refused}",
        f"- planted facts in the prompt when asked >= 90%: {'yes' if rate is not None and rate >= 0.9 else 'NO'} "
        f"({_percent(paged['facts_in_prompt'], paged['asks'])})",
        f"wall time {result['wall_s'] / 60:.1f} min, both servers' starts included",
    ]


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, (tokens, latency) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for arm in ("paged", "unpaged"):
        rows = [r for r in result[arm]["rows"] if "error" not in r]
        tokens.plot([r["step"] for r in rows], [r["prompt_tokens"] for r in rows], marker=".", label=f"{arm}: prompt tokens")
        latency.plot([r["step"] for r in rows], [r["latency_s"] for r in rows], marker=".", label=arm)
    history = [r for r in result["paged"]["rows"] if "history_tokens" in r]
    tokens.plot([r["step"] for r in history], [r["history_tokens"] for r in history], color="gray", linestyle=":", label="history tokens (the paging server's count)")
    tokens.axhline(result["window"], color="black", linewidth=1, label=f"window ({result['window']:,})")
    first = result["unpaged"]["summary"]["first_error_step"]
    if first:
        tokens.axvline(first, color="red", alpha=0.4, linestyle="--", label=f"unpaged refused from step {first}")
    for r in (r for r in result["paged"]["rows"] if "ask" in r):
        for ax in (tokens, latency):
            ax.axvline(r["step"], color="green" if r["fact_in_prompt"] else "orange", alpha=0.25, linewidth=1)
    tokens.plot([], [], color="green", alpha=0.5, label="question (paged: fact in prompt)")
    tokens.plot([], [], color="orange", alpha=0.5, label="question (paged: fact missing)")
    tokens.set(ylabel="tokens", title="Prompt tokens per step")
    latency.set(xlabel="step", ylabel="seconds", title="Latency per step")
    return save_panels(fig, (tokens, latency), path, fontsize=8)


def main(args) -> dict:
    from ..models.default_model import resolve

    result = run(
        resolve(args.model), args.seed, args.tool_calls, args.asks, args.result_tokens, args.max_tokens, args.answer_tokens,
        shlex.split(args.engine_flags), shlex.split(args.paging_flags),
    )
    return publish(result, report(result), args.out, "agent", plot)


def add_arguments(p) -> None:
    p.add_argument("--model", type=Path, help="a local HF model directory (default: the embedded default model)")
    p.add_argument("--seed", type=int, default=0, help="the script's seed: facts asked, where they are planted, every tool result (default 0)")
    p.add_argument("--tool-calls", type=int, default=TOOL_CALLS, help=f"the agent's tool calls, one to three a step (default {TOOL_CALLS}: 110 steps, and the questions)")
    p.add_argument("--asks", type=int, default=ASKS, help=f"questions about planted facts, over the second half of the steps (default {ASKS}, at most {len(FACTS)})")
    p.add_argument("--result-tokens", type=int, default=RESULT_TOKENS, help=f"the tool results' size in all, at 4 characters a token (default {RESULT_TOKENS:,}: "
                   "about 45,000 tokens of history for the default model by the end, 5.5x its window)")
    p.add_argument("--max-tokens", type=int, default=16, help="the model's reply length after the agent's steps (default 16)")
    p.add_argument("--answer-tokens", type=int, default=48, help="the model's answer length to a question (default 48)")
    p.add_argument("--engine-flags", default="", metavar="FLAGS", help='extra vLLM flags for both servers, one string: --engine-flags "--dtype bfloat16"')
    p.add_argument("--paging-flags", default="", metavar="FLAGS", help='paged-context serve options for the paging server only (default: its defaults), '
                   'one string: --paging-flags "--page-tokens 256 --resident 2 4"')
    p.add_argument("--out", type=Path, help="write agent.json and agent.png here")
