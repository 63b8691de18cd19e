"""`bench agent` without a model: the scripted agent's steps, tool results and planted
facts, and how a paged prompt is searched for a fact. The run against both servers is
in test_server.py."""

import json

import pytest

from paged_context.bench.agent import fact_source
from paged_context.bench.agent_script import FACTS, TOOLS, build, opening
from paged_context.messages import parse_tools, split_messages
from paged_context.text import approx_tokens


@pytest.fixture(scope="module")
def script():
    return build(seed=0)


def test_the_default_script_is_long_deterministic_and_a_valid_conversation(script):
    calls = [c for s in script for c in s.calls]
    asks = [s for s in script if s.ask]
    assert len(calls) == 200 and len(asks) == 15 and [s.number for s in script] == list(range(1, len(script) + 1))
    assert max(len(s.calls) for s in script) == 3 and sum(len(s.calls) == 2 for s in script) > 10  # parallel calls
    assert len({(c.name, c.argument) for c in calls}) == 200 and len({c.id for c in calls}) == 200
    sizes = [approx_tokens(c.result) for c in calls]
    assert 24_000 < sum(sizes) < 28_000 and sum(size > 1_000 for size in sizes) >= 8  # several pages each
    assert build(seed=0) == script and build(seed=1) != script
    history = opening()
    for step in script:
        history += step.messages()
        exchange = split_messages(history)  # what the paging server accepts: every call answered, in order
    assert len(exchange.turns) == 1 + len(script) + len(calls)  # the task; a call message or a question per step; the results
    assert [f["name"] for f in parse_tools({"tools": TOOLS}).offered] == ["read_file", "search", "run_command"]
    assert all(json.loads(c.arguments) for c in calls)


def test_each_fact_is_planted_once_in_the_first_half_and_asked_in_the_second(script):
    asks = {s.ask: s.number for s in script if s.ask}
    results = [(s.number, c.result) for s in script for c in s.calls]
    half = len(script) / 2
    for fact, asked in asks.items():
        (planted,) = [number for number, result in results if fact.needle in result]
        assert planted < half < asked
        assert fact.needle not in fact.question and fact.answer.lower() not in fact.question.lower()
    assert list(asks) != sorted(asks, key=lambda f: next(n for n, r in results if f.needle in r))  # asked in another order
    assert set(asks) == set(FACTS)


def test_small_scripts_and_bad_sizes():
    small = build(seed=3, tool_calls=12, asks=2, result_tokens=1200)
    assert sum(len(s.calls) for s in small) == 12 and sum(bool(s.ask) for s in small) == 2
    for kwargs, message in [
        ({"asks": 16}, "between 1 and 15"),
        ({"tool_calls": 20, "asks": 6}, "too few to plant 6 facts"),
        ({"result_tokens": 100}, "at least 20 per tool call"),
        ({"tool_calls": 2000, "result_tokens": 60_000}, "distinct calls"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(**kwargs)


def test_where_a_paged_prompt_shows_a_fact():
    needle = "max_retries: 13"
    note = {"role": "system", "content": f"Bookmarks of pages out of view: [p2:ingest,yaml]\n\nPages brought back:\n{needle}"}
    prompt = [{"role": "system", "content": "instructions"}, {"role": "tool", "content": "other"}, {"role": "user", "content": "What retry limit?"}]
    assert fact_source(prompt, needle) is None
    assert fact_source([prompt[0], note, prompt[2]], needle) == "prefetched"
    assert fact_source([prompt[0], {"role": "tool", "content": f"x\n{needle}"}, prompt[2]], needle) == "in view"
    recalled = [{"role": "assistant", "content": 'recall({"page_ids": [2]})'}, {"role": "tool", "content": f"[page 2]\n{needle}"}]
    assert fact_source([prompt[0], prompt[2], *recalled], needle) == "recalled"
    hermes = {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "recall", "arguments": {}}}]}
    assert fact_source([prompt[0], prompt[2], hermes, recalled[1]], needle) == "recalled"
