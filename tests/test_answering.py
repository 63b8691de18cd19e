"""The answering loop without a model: scripted outputs stand in for what an engine
generates, so every path of a round (an answer, recall served, a client's tool call,
refusals, the round bound, forced calls, a message larger than the window) is checked
on the real chat templates of the tiny test tokenizer, plain and Hermes."""

import dataclasses
import json

import pytest

pytest.importorskip("transformers")

from tiny_model import HERMES_TEMPLATE, tokenizer  # noqa: E402

from paged_context.answering import Answering, Generated, Sampling  # noqa: E402
from paged_context.messages import Tools, parse_tools  # noqa: E402
from paged_context.session import PagedSession, PagingConfig  # noqa: E402
from paged_context.templates import ChatTemplate  # noqa: E402

SMALL = PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=2, resident_low=1, policy="lru", prefetch_budget=0, match_budget=0)
READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def plain():
    return ChatTemplate(tokenizer())


@pytest.fixture(scope="module")
def hermes():
    return ChatTemplate(tokenizer(HERMES_TEMPLATE))


def paged_session(template, turns=12, config=SMALL):
    session = PagedSession("s", config, count_tokens=template.count_tokens)
    for i in range(turns):
        session.finish(session.ask(f"note {i}: the Lisbon budget is {i}00"), f"noted {i}")
    return session


def run(answering, outputs):
    """Drive the loop with scripted outputs; returns the reply and the rounds it asked for."""
    rounds = []
    for text in outputs:
        round_ = answering.next_round()
        if round_ is None:
            break
        rounds.append(round_)
        answering.take(Generated(text, completion_tokens=len(text) // 4))
    assert answering.next_round() is None, "the loop wanted more rounds than scripted"
    return answering.reply(), rounds


def test_an_answer_without_calls_is_stored(plain):
    session = paged_session(plain)
    reply, (round_,) = run(Answering(session, session.ask("what was the budget?"), plain, 4096), ["It was 300."])
    assert reply.text == "It was 300." and reply.finish_reason == "stop" and not reply.tool_calls
    assert session.turns[-1].text == "It was 300." and session.turns[-1].role == "assistant"
    assert round_.recall is not None and set(round_.recall.allowed) == set(session.evicted())
    assert round_.stop == (plain.syntax.tail,)  # a constrained call ends there
    assert reply.paging["history_tokens"] > 0 and reply.usage["rounds"] == 1


def test_a_recall_call_is_served_and_the_answer_continues(plain):
    session = paged_session(plain)
    page = session.evicted()[0]
    reply, rounds = run(Answering(session, session.ask("first budget?"), plain, 4096), [f'Let me look. recall({{"page_ids": [{page}]}})', "It was 0."])
    assert reply.text == "Let me look. It was 0." and reply.paging["recalled"] == [page]
    assert rounds[1].messages[-1].role == "tool" and rounds[1].messages[-1].content.startswith(f"[page {page},")
    assert len(rounds[1].prompt) > len(rounds[0].prompt) and page not in rounds[1].recall.allowed
    assert page in session.resident  # recalled pages come back into the layout


def test_the_round_bound_cuts_a_call_that_would_not_be_served(plain):
    session = paged_session(plain)
    a, b, c = session.evicted()[:3]
    answering = Answering(session, session.ask("budgets?"), plain, 4096, max_rounds=2)
    reply, rounds = run(answering, [f'recall({{"page_ids": [{a}]}})', f'recall({{"page_ids": [{b}]}})', f'Sure. recall({{"page_ids": [{c}]}})'])
    assert [r.recall is not None for r in rounds] == [True, True, False]
    assert rounds[2].stop == ("recall(",)  # the last round ends where a call would begin
    assert reply.text == "Sure." and reply.paging["recalled"] == [a, b] and reply.usage["rounds"] == 3


def test_a_call_to_a_client_tool_goes_back_to_the_client(plain):
    session = paged_session(plain)
    tools = parse_tools({"tools": [READ_FILE, SEARCH]})
    answering = Answering(session, session.ask("open notes.txt"), plain, 4096, tools=tools)
    reply, (round_,) = run(answering, ['I will read it.\nread_file({"path": "notes.txt"})\nsearch({"query": "Lisbon"})'])
    assert reply.finish_reason == "tool_calls" and reply.text == "I will read it."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("read_file", {"path": "notes.txt"}), ("search", {"query": "Lisbon"})]
    assert all(c.id.startswith("call_") for c in reply.tool_calls)
    assert session.turns[-1].tool_calls == reply.tool_calls  # stored before the client hears it
    assert "read_file(" in round_.markers and "read_file({" in plain.text(round_.messages, tools)  # described in the system message
    reply, _ = run(Answering(session, session.ask("again"), plain, 4096, tools=parse_tools({"tools": [READ_FILE], "parallel_tool_calls": False})), ['read_file({"path": "a"}) read_file({"path": "b"})'])
    assert [json.loads(c.arguments)["path"] for c in reply.tool_calls] == ["a"]


def test_tool_results_are_turns_and_the_request_answers_them(plain):
    session = paged_session(plain)
    tools = parse_tools({"tools": [READ_FILE]})
    run(Answering(session, session.ask("open notes.txt"), plain, 4096, tools=tools), ['read_file({"path": "notes.txt"})'])
    call = session.turns[-1].tool_calls[0]
    session.add_turn("tool", "The dentist is on Friday.", tool_call_id=call.id)
    request = session.plan()
    assert "dentist" in request.query and "read_file" in request.query
    reply, (round_,) = run(Answering(session, request, plain, 4096, tools=tools), ["Your dentist is on Friday."])
    assert [m.role for m in round_.messages[-2:]] == ["assistant", "tool"]  # the request: the call and its result
    assert any(m.segment == "bookmarks" for m in round_.messages[:-2])
    assert 'read_file({"path": "notes.txt"})' in round_.messages[-2].content or round_.messages[-2].tool_calls
    assert reply.text == "Your dentist is on Friday."


def test_hermes_renders_tools_natively_and_refuses_unknown_tools(hermes):
    session = paged_session(hermes)
    tools = parse_tools({"tools": [READ_FILE]})
    answering = Answering(session, session.ask("open it"), hermes, 4096, tools=tools)
    first = answering.next_round()
    text = hermes.text(first.messages, first.tools)
    assert '"name": "recall"' in text and '"name": "read_file"' in text and "<tools>" in text
    assert first.recall.shared and first.stop == (hermes.syntax.tail,)
    answering.take(Generated('<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>', 9))
    second = answering.next_round()
    assert second.messages[-1].content.startswith("error: there is no tool named 'delete_everything'")
    answering.take(Generated('<tool_call>\n{"name": "read_file", "arguments": {"path": "x"}}\n</tool_call>', 9))
    reply = answering.reply()
    assert [c.name for c in reply.tool_calls] == ["read_file"] and reply.paging["recall_errors"] == 1


def test_recall_is_offered_only_once_pages_are_out_of_view(hermes):
    """A conversation that fits shows the model no recall tool (nothing to recall; a model
    shown one calls it anyway), nor paging instructions: the prompt a stock server sends."""
    session = PagedSession("short", PagingConfig(boundary="fixed_2", resident_high=50), count_tokens=hermes.count_tokens)
    session.add_turn("user", "hello there")
    round_ = Answering(session, session.plan(), hermes, 4096).next_round()
    assert not round_.tools.recall and round_.recall is None
    text = hermes.text(round_.messages, round_.tools)
    assert "recall" not in text and "<tools>" not in text
    paged = paged_session(hermes, config=dataclasses.replace(SMALL, max_recall_ids=5))
    round_ = Answering(paged, paged.ask("and now?"), hermes, 4096).next_round()
    text = hermes.text(round_.messages, round_.tools)
    assert round_.tools.recall == 5 and '"name": "recall"' in text and '"maxItems": 5' in text  # the session's own limit


def test_a_bare_recall_call_is_served(hermes):
    """Qwen2.5-Coder's habit: the call's JSON in a code block, no <tool_call> tags."""
    session = paged_session(hermes)
    page = session.evicted()[0]
    bare = f'```json\n{{"name": "recall", "arguments": {{"page_ids": [{page}]}}}}\n```'
    reply, rounds = run(Answering(session, session.ask("what was the first budget?"), hermes, 4096), [bare, "000"])
    assert reply.text == "000" and reply.paging["recalled"] == [page] and len(rounds) == 2
    assert session.pages[page].turns[0].text in rounds[1].messages[-1].content


def test_expose_recall_returns_the_call_and_stores_no_answer(plain):
    session = paged_session(plain)
    page = session.evicted()[0]
    turns = len(session.turns)
    reply, _ = run(Answering(session, session.ask("first?"), plain, 4096, expose_recall=True), [f'recall({{"page_ids": [{page}]}})'])
    assert [c.name for c in reply.tool_calls] == ["recall"] and reply.finish_reason == "tool_calls"
    assert len(session.turns) == turns + 1  # the question, unanswered


@pytest.mark.parametrize("template_name", ["plain", "hermes"])
def test_a_forced_call_opens_the_prompt_and_follows_the_schema(template_name, request):
    template = request.getfixturevalue(template_name)
    session = paged_session(template)
    named = parse_tools({"tools": [READ_FILE, SEARCH], "tool_choice": {"type": "function", "function": {"name": "search"}}})
    answering = Answering(session, session.ask("find Lisbon"), template, 4096, tools=named)
    round_ = answering.next_round()
    assert round_.recall is None and round_.schema == SEARCH["function"]["parameters"] and round_.visible_end("anything") == 0
    assert template.tokenizer.decode(round_.prompt).endswith(round_.opening) and "search" in round_.opening
    answering.take(Generated('{"query": "Lisbon"}', 6))
    reply = answering.reply()
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("search", '{"query": "Lisbon"}')]
    required = parse_tools({"tools": [READ_FILE, SEARCH], "tool_choice": "required"})
    answering = Answering(session, session.ask("anything"), template, 4096, tools=required)
    round_ = answering.next_round()
    assert {option["properties"]["name"]["const"] for option in round_.schema["anyOf"]} == {"read_file", "search"}
    answering.take(Generated('{"name": "read_file", "arguments": {"path": "a.txt"}}', 12))
    assert [(c.name, json.loads(c.arguments)) for c in answering.reply().tool_calls] == [("read_file", {"path": "a.txt"})]


def test_an_answer_cut_by_max_tokens_says_length(plain):
    session = paged_session(plain, turns=2)
    answering = Answering(session, session.ask("tell me everything"), plain, 4096, Sampling(max_tokens=4))
    answering.next_round()
    answering.take(Generated("Well, the", 4, truncated=True))
    assert answering.reply().finish_reason == "length"


def test_a_message_larger_than_the_window_is_paged_in_parts(plain):
    """A tool result of ~3x the window: stored whole, paged in parts; the prompt fits."""
    config = PagingConfig(boundary="tokens_200", recent_turns=2, resident_high=2, resident_low=1, policy="lru", prefetch_budget=0, match_budget=0, part_tokens=150)
    session = paged_session(plain, turns=2, config=config)
    tools = parse_tools({"tools": [READ_FILE]})
    run(Answering(session, session.ask("read the log"), plain, 1024, tools=tools), ['read_file({"path": "app.log"})'])
    call = session.turns[-1].tool_calls[0]
    dump = "\n".join(f"line {i}: request {i} took {i * 7 % 300} ms on worker {i % 5}" for i in range(400))
    assert plain.count_tokens(dump) > 3 * 1024
    session.add_turn("tool", dump, tool_call_id=call.id)
    reply, (round_,) = run(Answering(session, session.plan(), plain, 1024, Sampling(max_tokens=64), tools), ["The log looks fine."])
    assert len(round_.prompt) <= 1024 - 64 and reply.paging["history_tokens"] > 3 * 1024
    assert session.turns[-2].text == dump  # the store's record is whole
    parts = [u for u in session.units if u.index == len(session.turns) - 2]
    assert len(parts) > 10 and "".join(u.text for u in parts) == dump
    assert any(page.turns[0].part for page in session.pages.values())
    assert round_.messages[-1].content.startswith(f"[part {len(parts)} of {len(parts)} of the result of read_file(")  # the end of the dump is in view, and says what it is
    assert reply.paging["evicted"]


def test_a_prompt_that_cannot_fit_is_a_clear_error(plain):
    from paged_context.messages import BadRequest

    session = PagedSession("s", PagingConfig(recent_turns=4, part_tokens=4000), count_tokens=plain.count_tokens)
    request = session.ask("word " * 3000)
    with pytest.raises(BadRequest, match="recent turns alone need"):
        Answering(session, request, plain, 1024).next_round()


def test_tools_are_checked(plain):
    from paged_context.messages import BadRequest

    for body, message in [
        ({"tools": [{"type": "function", "function": {"name": "recall"}}]}, "server's own tool"),
        ({"tools": [READ_FILE, READ_FILE]}, "two tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "letters"),
        ({"tools": [READ_FILE], "tool_choice": {"type": "function", "function": {"name": "search"}}}, "names no tool"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [READ_FILE], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": "read_file"}, "list"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_tools(body)
    assert parse_tools({}) == Tools() and parse_tools({"tools": [READ_FILE], "tool_choice": "none"}).offered == ()


@pytest.mark.parametrize("template_name", ["plain", "hermes"])
def test_the_history_size_is_counted_turn_by_turn_and_matches_the_whole_prompt(template_name, request):
    """A reply reports what the unpaged prompt would cost without encoding the whole
    history again: each turn is counted once, as the template writes it."""
    from paged_context.calls import ToolCall
    from paged_context.session import Message, _message

    template = request.getfixturevalue(template_name)
    session = paged_session(template, turns=4)
    tools = parse_tools({"tools": [READ_FILE]})
    for i in range(3):
        reply, _ = run(Answering(session, session.ask(f"read file {i}"), template, 4096, tools=tools), ["ok"])
        session.add_turn("assistant", "", tool_calls=(ToolCall("read_file", json.dumps({"path": f"f{i}.txt"}), f"c{i}"),))
        session.add_turn("tool", f"the contents of f{i}.txt: " + "word " * 20, tool_call_id=f"c{i}")
    reply, _ = run(Answering(session, session.plan(), template, 4096, tools=tools), ["done"])
    whole = [Message("system", "You are a helpful assistant.", "system"), *(_message(t, "turn") for t in session.turns)]  # the answer too
    assert reply.paging["history_tokens"] == len(template.encode(whole, tools))
