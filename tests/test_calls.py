import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paged_context.calls import HERMES, PLAIN, complete, held_back, viable
from paged_context.recall import parse_recall_arguments


@pytest.mark.parametrize("syntax", [PLAIN, HERMES])
@given(ids=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True))
def test_every_prefix_of_a_valid_call_is_viable(syntax, ids):
    call = syntax.render(ids)
    body = call[len(syntax.marker) :]
    allowed = set(range(1, 41))
    assert all(viable(syntax, body[:n], allowed, 3) for n in range(len(body) + 1))
    assert complete(syntax, body)
    start, text, arguments = syntax.find("Let me check. " + call + " trailing")
    assert start == len("Let me check. ") and text == call
    assert parse_recall_arguments(arguments, allowed) == ids


@pytest.mark.parametrize("syntax", [PLAIN, HERMES])
def test_invalid_calls_are_not_viable(syntax):
    head = syntax.head
    allowed = {3, 12}
    assert viable(syntax, head + "1", allowed, 3)  # may become 12
    assert not viable(syntax, head + "4", allowed, 3)  # no page starts with 4
    assert not viable(syntax, head + "3, 3", allowed, 3)  # twice
    assert not viable(syntax, head + "3, 12, ", allowed, 2)  # too many
    assert not viable(syntax, head + "03", allowed, 3)
    assert not viable(syntax, head + "3" + syntax.tail + "x", allowed, 3)  # nothing after the call
    assert not viable(syntax, head + "]", allowed, 3)  # at least one page
    assert not viable(syntax, "garbage", allowed, 3)
    assert not viable(syntax, head + "3, ", {3}, 3)  # nothing left to name


def test_lenient_find_hands_malformed_calls_to_validation():
    _, call, arguments = PLAIN.find('recall({"page_ids": [3, ')  # cut short
    assert call == 'recall({"page_ids": [3, ' and arguments == '{"page_ids": [3,'
    _, _, arguments = HERMES.find('<tool_call>{"name": "search", "arguments": {}}</tool_call>')
    assert "not recall" in json.loads(arguments)["unexpected"]
    _, _, arguments = HERMES.find('<tool_call>{"name": "recall", "arguments": "{\\"page_ids\\": [2]}"}</tool_call>')
    assert arguments == '{"page_ids": [2]}'
    assert PLAIN.find("no call here") is None


def test_held_back_keeps_a_possible_marker_start():
    assert held_back("The answer is rec", "recall(") == 3
    assert held_back("The answer is 42", "recall(") == 0
    assert held_back("x <tool", "<tool_call>") == 5


@pytest.mark.parametrize(
    "text, name, arguments",
    [
        ('{"name": "recall", "arguments": {"page_ids": [3]}}', "recall", '{"page_ids": [3]}'),
        ('```json\n{"name": "recall", "arguments": {"page_ids": [3, 4]}}\n```', "recall", '{"page_ids": [3, 4]}'),
        ('  {"name": "read_file", "arguments": {"path": "a.txt"}}\nI will read it.', "read_file", '{"path": "a.txt"}'),
    ],
)
def test_a_hermes_model_may_write_a_call_without_the_tags(text, name, arguments):
    """Qwen2.5-Coder writes its calls as the JSON object alone, or in a json code block."""
    from paged_context.calls import find_calls

    start, (call,) = find_calls(HERMES, text, ["read_file"], bare=["recall", "read_file"])
    assert (call.name, json.loads(call.arguments)) == (name, json.loads(arguments)) and not text[:start].strip()


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "recall", "arguments": {"page_ids": [3]}}',  # recall not shown to the model
        'The call is {"name": "read_file", "arguments": {}}',  # an answer that contains JSON
        '{"name": "delete_everything", "arguments": {}}',  # no such tool
        '{"name": "read_file", "arguments": {}, "why": 1}',  # not a call's shape
        '{"name": "read_file", "arguments": {',  # cut short: an answer, as the model wrote it
    ],
)
def test_json_that_is_not_a_bare_call_stays_an_answer(text):
    from paged_context.calls import find_calls

    assert find_calls(HERMES, text, ["read_file"], bare=["read_file"]) is None


def test_an_answer_that_may_be_a_bare_call_is_held_until_done():
    from paged_context.calls import visible_end

    assert visible_end('```json\n{"name"', ["<tool_call>"], bare=True) == 0
    assert visible_end("  {", ["<tool_call>"], bare=True) == 0
    assert visible_end("Paris is", ["<tool_call>"], bare=True) == len("Paris is")
    assert visible_end('{"a": 1}', ["<tool_call>"]) == len('{"a": 1}')  # no bare calls: streamed as it comes
