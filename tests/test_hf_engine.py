"""The transformers engine on a tiny random Llama: paging mechanics, exact KV reuse,
constrained recall calls, tool errors, streaming."""

import math
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
from exact_restore import restore_error  # noqa: E402
from tiny_model import build  # noqa: E402

from paged_context.answering import Round, Sampling, TextStream  # noqa: E402
from paged_context.calls import PLAIN  # noqa: E402
from paged_context.messages import Tools  # noqa: E402
from paged_context.session import PagingConfig  # noqa: E402
from paged_context.patches.hf_engine import HFEngine  # noqa: E402
from paged_context.patches.hf_generation import AnswerStream, RecallConstraint  # noqa: E402

SMALL = PagingConfig(boundary="tokens_60", recent_turns=2, resident_high=3, resident_low=2, policy="lru", prefetch_budget=0, match_budget=0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return HFEngine(build(tmp_path_factory.mktemp("tiny")), max_new_tokens=6, repetition_penalty=1.0)


def chat(engine, session, n, start=0):
    return [engine.reply(session, f"turn {i}: my Lisbon trip budget is {i}00 and the locker code is {i}{i}") for i in range(start, start + n)]


def test_paging_mechanics_and_kv_reuse(engine):
    session = engine.session("mechanics", SMALL)
    replies = chat(engine, session, 30)
    last = replies[-1]
    assert last.paging["pages"] >= 5 and last.paging["evicted"]
    assert len(last.paging["resident"]) <= SMALL.resident_high
    rendered = "\n".join(m.content for m in last.rendered)
    for page_id in last.paging["evicted"]:
        assert session.bookmarks[page_id].render() in rendered  # evicted: a bookmark...
        assert session.pages[page_id].turns[0].text not in rendered  # ...not the page
    assert sum(r.usage["cached_tokens"] for r in replies[1:]) > 0  # the prompt prefix came from the KV cache
    assert last.usage["prompt_tokens"] < last.paging["history_tokens"]


def test_rendering_is_deterministic(engine):
    a, b = engine.session("det-a", SMALL), engine.session("det-b", SMALL)
    for s in (a, b):
        for i in range(8):
            s.add_turn("user" if i % 2 == 0 else "assistant", f"message {i} about the kitchen renovation")
    ra, rb = a.ask("what is my budget?"), b.ask("what is my budget?")
    assert engine.template.encode(a.render(ra, "x")) == engine.template.encode(b.render(rb, "x"))


def test_restored_prefix_gives_the_logits_of_a_full_recompute(engine):
    session = engine.session("exact", SMALL)
    chat(engine, session, 6)
    request = session.ask("and the locker code?")
    reused, error = restore_error(engine, engine.caches[session.id], engine.template.encode(session.render(request, PLAIN.render(["N"]))))
    assert reused > 0 and error < 1e-4


def test_recall_calls_are_forced_well_formed_and_served(engine):
    session = engine.session("recall", replace(SMALL, max_recall_ids=1))
    chat(engine, session, 12)
    tok = engine.tokenizer
    (start,) = tok.encode("recall(", add_special_tokens=False)
    bias = {start: 30.0}  # push the model to open a call; the constraint must keep it valid
    reply = engine.reply(session, "what was the first budget?", logit_bias=bias, max_new_tokens=24)
    request_recalls = [t for t in reply.rendered if t.role == "tool"]
    assert len(request_recalls) == engine.max_recall_rounds
    assert all(not m.content.startswith("recall error") for m in request_recalls)
    assert reply.paging["recalled"] and set(reply.paging["recalled"]) <= set(session.pages)
    assert "recall(" not in reply.text


def test_garbage_recall_arguments_become_tool_errors_and_the_conversation_goes_on(engine):
    session = engine.session("garbage", SMALL)
    chat(engine, session, 12)
    request = session.ask("tell me about the trip")
    for arguments in ('{"page_ids": [999]}', '{"page_ids": ["p1", "two"]}', '{"page_ids": %s}' % list(range(10_000)), '{"page_ids": [1, '):
        result = session.recall(request, "recall(" + arguments, arguments)
        assert result.startswith("recall error:")
    reply = engine.answer(session, request)
    tool_results = [m.content for m in reply.rendered if m.role == "tool"]
    assert len(tool_results) >= 4 and all(r.startswith("recall error:") for r in tool_results[:4])
    assert session.turns[-1].role == "assistant" and reply.paging["recall_errors"] >= 4


def test_streaming_never_shows_a_call(engine):
    tok = engine.tokenizer
    round_ = Round([], Tools(), [], Sampling(), (), engine.template.markers())
    for text, shown in [("The budget is 300", "The budget is 300"), ('Let me look. recall({"page_ids": [3]})', "Let me look. ")]:
        out, growing = [], []
        visible = TextStream(out.append)
        stream = AnswerStream(tok, lambda text: (growing.append(text), visible.update(round_, text)))
        stream.put(torch.tensor([[1, 2]]))  # the prompt comes first
        for token in tok.encode(text, add_special_tokens=False):
            stream.put(torch.tensor([token]))
            assert not any(marker in "".join(out) for marker in round_.markers)
        stream.end()
        visible.flush(shown)
        assert growing[-1] == text and "".join(out) == shown


def test_constraint_allows_only_recallable_page_ids(engine):
    tok = engine.tokenizer
    prompt = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    partial = tok.encode('recall({"page_ids": [', add_special_tokens=False)
    constraint = RecallConstraint(tok, PLAIN, allowed={2, 12}, max_ids=2, prompt_length=len(prompt))
    scores = constraint(torch.tensor([prompt + partial]), torch.zeros(1, len(tok)))
    allowed = {tok.decode([i]) for i in torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()}
    assert allowed and allowed <= {"1", "2", "12"}
    assert not math.isfinite(scores[0, tok.encode("4", add_special_tokens=False)[0]].item())


def test_sampling_parameters_are_honoured(engine):
    """temperature, top_p and seed reach generation: a seed repeats a sampled answer, and
    sampling differs from greedy decoding somewhere over a few seeds."""
    from paged_context.answering import Sampling

    def sampled(seed, temperature=1.5):
        session = engine.session(f"sampling-{seed}-{temperature}", SMALL)
        return engine.answer(session, session.ask("tell me about Lisbon"), sampling=Sampling(12, temperature, 0.9, seed, repetition_penalty=1.0)).text

    assert sampled(7) == sampled(7)
    greedy = sampled(None, temperature=0.0)
    assert any(sampled(seed) != greedy for seed in (1, 2, 3))
    assert sampled(None, temperature=1.5e-165) == greedy  # too small to sample with: greedy, as vLLM does


def test_a_forced_tool_call_follows_its_schema_on_the_transformers_engine(engine):
    """tool_choice names a function: the call opens the answer and xgrammar keeps its
    arguments valid JSON for the function's schema, even from random weights."""
    import json

    from paged_context.messages import parse_tools

    tok = engine.tokenizer
    no_whitespace = {i: -100.0 for i in range(len(tok)) if not tok.decode([i]).strip()}
    schema = {"type": "object", "properties": {"path": {"type": "string", "enum": ["notes.txt", "todo.txt"]}}, "required": ["path"]}
    tools = parse_tools({"tools": [{"type": "function", "function": {"name": "read_file", "parameters": schema}}], "tool_choice": {"type": "function", "function": {"name": "read_file"}}})
    session = engine.session("forced", SMALL)
    reply = engine.answer(session, session.ask("open my notes"), logit_bias=no_whitespace, max_new_tokens=24, tools=tools)
    (call,) = reply.tool_calls
    assert reply.finish_reason == "tool_calls" and call.name == "read_file"
    assert json.loads(call.arguments)["path"] in ("notes.txt", "todo.txt")
    assert session.turns[-1].tool_calls == (call,)
    # the client runs the tool; its result is a turn, and the next answer reads it
    session.add_turn("tool", "Dentist on Friday.", tool_call_id=call.id)
    answer = engine.answer(session, session.plan(), max_new_tokens=4)
    assert answer.rendered[-1].role == "tool" and session.turns[-1].role == "assistant"


def test_deleting_a_session_frees_its_kv_on_the_async_engine(engine):
    import asyncio

    from paged_context.patches.hf_engine import AsyncHFEngine

    session = engine.session("to-delete", SMALL)
    chat(engine, session, 3)
    assert "to-delete" in engine.caches

    async def delete():
        front = AsyncHFEngine(engine)
        front.forget("to-delete")
        await asyncio.gather(*front.forgetting)

    asyncio.run(delete())
    assert "to-delete" not in engine.caches
