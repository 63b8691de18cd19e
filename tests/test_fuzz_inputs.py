"""Every malformed input gets a clear error, never a crash or a hang: property tests of
the code that takes what a client or a model sends (recall calls, tool calls in
generated text, chat messages and tools, paging options), each with the inputs that
once crashed it pinned beside it."""

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from paged_context import keywords
from paged_context.calls import HERMES, PLAIN, RECALL, CallGrammar, ToolCall, find_calls, viable, visible_end
from paged_context.messages import BadRequest, Exchange, Tools, parse_tools, split_messages
from paged_context.policy_registry import NAMES as POLICY_NAMES
from paged_context.recall import RecallError, parse_recall_arguments
from paged_context.session import PagedSession, PagingConfig

# bounded and repeatable: the same examples on every run, a few seconds per property
settings.register_profile("fuzz", deadline=None, max_examples=200, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
fuzz = settings.get_profile("fuzz")

DEEP = "[" * 100_000  # nests past the JSON parser's recursion limit
LONG_NUMBER = "7" * 5000  # past Python's limit for converting digits to an int

odd_text = st.text(max_size=30) | st.sampled_from(["", " ", "\x00", "\u2028", "é" * 3, "😀", "x" * 10_000])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4), max_leaves=12)


def objects(fields: dict) -> st.SearchStrategy:
    """Dicts with some of `fields` (name: strategy of its value), maybe an unknown field."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": json_values})


def parsed(parse, *args, refusal=BadRequest):
    """What `parse` makes of `args`, or None when it refuses them: only ever with a
    `refusal` that says what is wrong."""
    try:
        return parse(*args)
    except refusal as error:
        assert str(error).strip()
        return None


# --- recall calls -----------------------------------------------------------------------

page_ids = st.lists(st.integers(-3, 30) | json_scalars, max_size=5)
recall_arguments = (
    json_values
    | objects({"page_ids": page_ids | json_values})
    | objects({"page_ids": page_ids | json_values}).map(json.dumps)
    | st.lists(st.sampled_from(["{", "}", '"page_ids"', ":", "[", "]", ",", "3", "1e9", "null", " ", '"7"', "-"]), max_size=12).map("".join)
    | odd_text
)


@fuzz
@given(arguments=recall_arguments, evicted=st.sets(st.integers(-2, 30)), resident=st.sets(st.integers(-2, 30)), max_ids=st.integers(-1, 5))
def test_recall_arguments_are_ids_or_a_recall_error(arguments, evicted, resident, max_ids):
    ids = parsed(parse_recall_arguments, arguments, evicted, resident, max_ids, refusal=RecallError)
    if ids is None:
        return
    assert isinstance(ids, list) and 1 <= len(ids) <= max_ids and len(set(ids)) == len(ids)
    assert all(type(i) is int and i in evicted and i not in resident for i in ids)


@pytest.mark.parametrize("arguments, message", [(DEEP, "nest too deeply"), ('{"page_ids": [' + LONG_NUMBER + "]}", "a number too long to read")])
def test_recall_arguments_the_json_parser_cannot_read(arguments, message):
    with pytest.raises(RecallError, match=message):
        parse_recall_arguments(arguments, {1})


# --- tool calls in generated text -------------------------------------------------------

tool_names = st.lists(st.sampled_from(["read_file", "search", RECALL, "a", "re", "x.y", "f(", ""]), max_size=3)
fragments = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<tool_", "recall(", "read_file(", "search(", "myrecall(", '{"name": ', '"recall"', '"read_file"',
     '"arguments": ', '{"page_ids": [3]}', "{", "}", "[", "]", "(", ")", '"', ",", ":", "```json\n", "```", " ", "\n", "7", "1e999",
     "\ufffd", "\x00", "é"]
)  # fmt: skip
generated = st.lists(fragments | odd_text, max_size=16).map("".join)


@fuzz
@given(syntax=st.sampled_from([PLAIN, HERMES]), text=generated, tools=tool_names, bare=tool_names)
@example(syntax=HERMES, text="<tool_call>" + DEEP, tools=[], bare=[])
@example(syntax=HERMES, text='<tool_call>{"name": "recall", "arguments": ' + DEEP, tools=[], bare=[])
@example(syntax=HERMES, text='<tool_call>{"name": "recall", "arguments": ' + LONG_NUMBER + "}", tools=[], bare=[])
@example(syntax=HERMES, text=LONG_NUMBER, tools=[], bare=[RECALL])
@example(syntax=HERMES, text='{"name": ["recall"], "arguments": {}}', tools=[], bare={RECALL})  # a name that is not a string
@example(syntax=PLAIN, text="recall(" + DEEP, tools=[], bare=[])
@example(syntax=PLAIN, text="recall(" + LONG_NUMBER, tools=[], bare=[])
def test_finding_calls_in_any_text(syntax, text, tools, bare):
    found = find_calls(syntax, text, tools, bare)
    markers = syntax.markers(tools)
    shown = visible_end(text, markers, bare=bool(bare))
    assert 0 <= shown <= len(text) and not any(m in text[:shown] for m in markers)
    first_call = syntax.find(text)
    assert first_call is None or text.startswith(first_call[1], first_call[0]) and isinstance(first_call[2], str)
    syntax.wrap(text)  # any arguments text makes a call
    if found is None:
        return
    first, calls = found
    tagged = any(text.startswith(m, first) for m in markers)
    assert 0 <= first <= len(text) and (tagged or not text[:first].strip())  # a call opens with its marker, or opens the answer
    assert shown <= first or not tagged
    assert calls and all(isinstance(c, ToolCall) and isinstance(c.name, str) and isinstance(c.arguments, str) for c in calls)
    if syntax is PLAIN:
        assert all(c.name in {RECALL, *tools} for c in calls)


def call_bodies(syntax):
    """Text after the marker: mostly the pieces of a canonical call, in any order."""
    pieces = st.sampled_from(["1", "2", "3", "12", "0", ", ", ",", " ", syntax.tail, syntax.tail[:2], "]", "x"])
    return st.lists(pieces, max_size=8).map(lambda parts: syntax.head + "".join(parts)) | generated


@fuzz
@given(
    call=st.sampled_from([PLAIN, HERMES]).flatmap(lambda syntax: st.tuples(st.just(syntax), call_bodies(syntax))),
    allowed=st.sets(st.integers(-2, 40)), max_ids=st.integers(-1, 4),
)  # fmt: skip
def test_what_is_viable_stays_viable_on_every_prefix(call, allowed, max_ids):
    syntax, partial = call
    if viable(syntax, partial, allowed, max_ids):
        assert all(viable(syntax, partial[:n], allowed, max_ids) for n in range(len(partial)))


@fuzz
@given(
    syntax=st.sampled_from([PLAIN, HERMES]), generated=generated, shared=st.booleans(), allowed=st.sets(st.integers(0, 40)), max_ids=st.integers(0, 3),
    vocabulary=st.lists(st.sampled_from(["1", "2", "12", ", ", "]", "]}", ")", "}\n", "\n", " ", "x", ""]) | odd_text, max_size=12),
)  # fmt: skip
def test_the_grammar_allows_only_viable_tokens(syntax, generated, shared, allowed, max_ids, vocabulary):
    grammar = CallGrammar(syntax, vocabulary)
    partial = grammar.partial(generated, shared)
    if partial is None:
        return
    assert generated.endswith(partial)
    assert all(viable(syntax, partial + vocabulary[i], allowed, max_ids) for i in grammar.next_tokens(partial, allowed, max_ids))


# --- chat messages and tools ------------------------------------------------------------

call_ids = st.sampled_from(["c1", "c2", "", "x" * 300]) | json_scalars
tool_call = objects(
    {
        "id": call_ids,
        "type": st.just("function") | json_values,
        "function": objects({"name": st.sampled_from([RECALL, "read_file", ""]) | json_values, "arguments": json_values}) | json_values,
    }
)
text_parts = st.lists(objects({"type": st.just("text") | json_values, "text": odd_text | json_values}) | json_values, max_size=3)
message = objects(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "", "USER"]) | json_values,
        "content": odd_text | text_parts | json_values,
        "tool_calls": st.lists(tool_call | json_values, max_size=3) | json_values,
        "tool_call_id": call_ids | json_values,
        "name": json_values,
    }
)


@fuzz
@given(messages=st.lists(message | json_values, max_size=6) | json_values)
def test_split_messages_returns_an_exchange_or_a_bad_request(messages):
    exchange = parsed(split_messages, messages)
    if exchange is None:
        return
    assert isinstance(exchange, Exchange) and exchange.turns and exchange.turns[-1].role in ("user", "tool")
    for turn in exchange.turns:
        assert isinstance(turn.text, str) and all(isinstance(c.name + c.arguments + c.id, str) for c in turn.tool_calls)
    assert all(isinstance(a, str) for a in exchange.recall_calls) and all(isinstance(i, str) for i in exchange.instructions)


tool = objects(
    {
        "type": st.just("function") | json_values,
        "function": objects({"name": st.sampled_from(["read_file", "search", RECALL, "bad name"]) | json_values, "parameters": json_values, "description": json_values})
        | json_values,
    }
)  # fmt: skip
tool_choice = st.sampled_from(["auto", "none", "required"]) | objects(
    {"type": st.just("function") | json_values, "function": objects({"name": st.sampled_from(["read_file", "search"]) | json_values}) | json_values}
)  # fmt: skip
body = objects({"tools": st.lists(tool, max_size=4) | json_values, "tool_choice": tool_choice | json_values, "parallel_tool_calls": json_values})


@fuzz
@given(body=body | json_values)
def test_parse_tools_returns_tools_or_a_bad_request(body):
    tools = parsed(parse_tools, body)
    if tools is None:
        return
    assert isinstance(tools, Tools) and all(isinstance(f["name"], str) for f in tools.functions)
    assert tools.choice in ("auto", "none", "required", *(f["name"] for f in tools.functions))


CALLS_READ_FILE = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]}
SEARCH = {"type": "function", "function": {"name": "search"}}


@pytest.mark.parametrize(
    "parse, request_part, message",
    [
        (split_messages, ["hello"], "messages must be a list of message objects"),
        (split_messages, {"role": "user", "content": "hi"}, "messages must be a list of message objects"),
        (split_messages, [CALLS_READ_FILE, {"role": "tool", "tool_call_id": ["c1"], "content": "x"}], r"tool result for no open tool call \(tool_call_id \['c1'\]\)"),
        (parse_tools, [], "the request body must be a JSON object"),
        (parse_tools, {"tools": [SEARCH], "tool_choice": {"type": "function", "function": "search"}}, "tool_choice names no tool of this request: None"),
        (parse_tools, {"tools": [SEARCH], "tool_choice": {"type": "function", "function": {"name": ["search"]}}}, r"tool_choice names no tool of this request: \['search'\]"),
    ],
)  # fmt: skip
def test_requests_of_the_wrong_shape(parse, request_part, message):
    with pytest.raises(BadRequest, match=message):
        parse(request_part)


# --- paging options ---------------------------------------------------------------------

BOUNDARIES = ["fixed_0", "fixed_1", "fixed_2", "tokens_-1", "tokens_0", "tokens_1", "tokens_40", "exchange_1", "exchange_3", "topic_shift",
              "topic_shift_0", "topic_shift_0.2", "topic_shift_.5", "topic_shift_9", "topic_shift_1.2.3", "session", "fixed_٣"]  # fmt: skip
option_values = {
    f.name: st.sampled_from(BOUNDARIES) if f.name == "boundary"
    else st.sampled_from(keywords.names()) if f.name == "keywords"
    else st.sampled_from(POLICY_NAMES) if f.name == "policy"
    else st.integers(0, 20) | st.sampled_from([15, 16, 99, 100, 1000, 1 << 16])
    for f in dataclasses.fields(PagingConfig)
}  # fmt: skip
near_valid_options = st.fixed_dictionaries({}, optional=option_values)
any_options = (
    st.dictionaries(st.sampled_from(list(option_values)), json_values | st.integers(-2, 2**70) | st.sampled_from(BOUNDARIES), max_size=4)
    | st.dictionaries(odd_text, json_values, max_size=2)
    | json_values
)


@fuzz
@given(options=near_valid_options | any_options)
def test_paging_options_are_a_config_or_a_value_error(options):
    config = parsed(PagingConfig().with_options, options, refusal=ValueError)
    assert config is None or isinstance(config, PagingConfig)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"policy": "belady"}, "policy 'belady' is offline"),  # it reads the future: a session failed as it opened
        ({"max_recall_ids": 0}, "max_recall_ids must be an integer between 1 and 1000"),  # no recall call could ever be served
        ({"boundary": "topic_shift_1.2.3"}, "unknown segmentation strategy.*THRESHOLD: a decimal number"),
        ({"boundary": "fixed_" + LONG_NUMBER}, "unknown segmentation strategy.*at most 9 digits"),
    ],
)
def test_options_no_session_can_page_by(options, message):
    with pytest.raises(ValueError, match=message):
        PagingConfig().with_options(options)


conversation = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "tool-call"]), st.sampled_from(["", "hi", "the Lisbon trip went well", "x " * 300, "line\n" * 50]) | odd_text),
    min_size=1, max_size=10,
)  # fmt: skip


def fake_model(prompt: str, max_tokens: int) -> str:
    return "p1: Lisbon, trip\np2: 😀"


@fuzz
@given(options=near_valid_options, conversation=conversation, budget=st.sampled_from([300, 3000, 1 << 20]))
def test_a_valid_config_makes_a_working_session(options, conversation, budget):
    config = parsed(PagingConfig().with_options, options, refusal=ValueError)
    assume(config is not None)
    session = PagedSession("s", config, complete=fake_model)
    count = lambda messages: [0] * sum(len(m.content) // 4 + 4 for m in messages)  # noqa: E731
    for i, (role, text) in enumerate(conversation):
        if role == "tool-call":
            call = ToolCall("read_file", json.dumps({"path": text}), f"c{i}")
            session.add_turn("assistant", "", tool_calls=(call,))
            session.add_turn("tool", text, tool_call_id=call.id)
            request = session.plan()
        else:
            request = session.ask(text or "?")
        session.render(request, PLAIN.instruction())
        session.recall(request, "recall(...)", json.dumps({"page_ids": session.recallable(request)[:1]}))
        try:
            session.render_within(request, None, count, budget)
        except ValueError as error:
            assert "the recent turns alone need" in str(error)  # the server's 400: lower max_tokens
        session.finish(request, f"answer {i}: " + text)


def test_max_tokens_leaves_half_the_window_to_the_conversation():
    """Each of max_tokens and max_completion_tokens is checked against the window, and so
    is the server's default when the request gives neither."""
    from paged_context.serve.routes import parse_sampling

    assert parse_sampling({"max_completion_tokens": 2048}, 256, 1.1, 300, 4096).max_tokens == 2048
    for body, default, named in [({"max_tokens": 2049}, 256, "max_tokens=2049"), ({"max_completion_tokens": 4096}, 256, "max_completion_tokens=4096"),
                                 ({}, 3000, "max_tokens=3000")]:
        with pytest.raises(BadRequest, match=f"{named} leaves too little of the model's window \\(4096 tokens\\)"):
            parse_sampling(body, default, 1.1, 300, 4096)
