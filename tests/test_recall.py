import json

import pytest

from paged_context.pages import Page, Turn
from paged_context.recall import RECALL_INSTRUCTION, RecallError, parse_recall_arguments, recall_tool, render_recall

EVICTED = {1, 2, 3, 7, 8, 9}
RESIDENT = {4, 5}


def error_for(arguments, **kw):
    with pytest.raises(RecallError) as info:
        parse_recall_arguments(arguments, EVICTED, RESIDENT, **kw)
    message = str(info.value)
    assert message.startswith("recall error:") and len(message) < 600
    return message


def test_valid_calls():
    assert parse_recall_arguments('{"page_ids": [7, 2]}', EVICTED, RESIDENT) == [7, 2]
    assert parse_recall_arguments({"page_ids": [3]}, EVICTED) == [3]


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ('{"page_ids": [7, ', "not valid JSON"),
        ('{"page_ids": ' + "[" * 5000 + "]" * 5000 + "}", "nest too deeply"),
        ("[7]", "must be a JSON object"),
        ('{"pages": [7]}', "page_ids is missing"),
        ('{"page_ids": [7], "why": "x"}', "unexpected argument"),
        ('{"page_ids": 7}', "must be a list"),
        ('{"page_ids": "7"}', "must be a list"),
        ('{"page_ids": []}', "empty"),
        ('{"page_ids": ["p7"]}', "use the number only"),
        ('{"page_ids": [true]}', "must be integers"),
        ('{"page_ids": [7.5]}', "must be integers"),
        ('{"page_ids": [7, 7]}', "page 7 is listed twice"),
        ('{"page_ids": [42]}', "there is no evicted page 42"),
        ('{"page_ids": [4]}', "already in your context"),
        ("", "page_ids is missing"),
        ("null", "must be a JSON object"),
    ],
)
def test_malformed_calls_become_errors_the_model_can_read(arguments, expected):
    message = error_for(arguments)
    assert expected in message


def test_errors_list_what_can_be_recalled_compactly():
    assert "Pages you can recall: 1-3, 7-9." in error_for('{"page_ids": [42]}')


def test_ten_thousand_ids_give_a_short_error():
    message = error_for(json.dumps({"page_ids": list(range(10_000))}))
    assert "at most 3 pages per call, got 10000" in message


def test_every_problem_is_named_at_once():
    message = error_for('{"page_ids": [1, 1, 42]}')
    assert "listed twice" in message and "no evicted page 42" in message


def test_schema_is_an_openai_function():
    tool = recall_tool(max_ids=4)
    assert tool["type"] == "function" and tool["function"]["name"] == "recall"
    params = tool["function"]["parameters"]
    assert params["required"] == ["page_ids"] and params["properties"]["page_ids"]["maxItems"] == 4
    assert "call recall()" in RECALL_INSTRUCTION


def test_render_recall_puts_the_whole_page_back():
    page = Page(7, (Turn(20, "user", "I adopted a cat named Miso", speaker="Caroline"), Turn(21, "assistant", "Lovely!")), tokens=12)
    text = render_recall([page])
    assert text.startswith("[page 7, turns 21-22]")
    assert "Caroline: I adopted a cat named Miso" in text and "assistant: Lovely!" in text


def test_render_recall_says_a_page_shown_in_part_is_an_excerpt():
    from paged_context.pages import Page, Turn

    turns = tuple(Turn(i, "user", f"line {i}") for i in range(10, 20))
    page = Page(4, turns, 40)
    text = render_recall([page], {4: turns[2:5]})
    assert text.startswith("[page 4, turns 13-15 of 11-20; recall page 4 for all of it]")
    assert "line 12" in text and "line 14" in text and "line 11" not in text and "line 15" not in text
