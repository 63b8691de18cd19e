import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paged_context.calls import ToolCall
from paged_context.pages import Segmenter, Turn, atoms, segment, split_long

STRATEGIES = ["fixed_1", "fixed_3", "fixed_10", "exchange_2", "topic_shift", "topic_shift_0.3", "session", "tokens_40"]


def chat(texts, sessions=None):
    return [
        Turn(i, "user" if i % 2 == 0 else "assistant", t, session=None if sessions is None else sessions[i])
        for i, t in enumerate(texts)
    ]


def test_fixed_cuts_every_n_turns():
    pages = segment(chat([f"turn {i}" for i in range(25)]), "fixed_10")
    assert [len(p.turns) for p in pages] == [10, 10, 5]
    assert [p.id for p in pages] == [1, 2, 3]
    assert (pages[1].first_turn, pages[1].last_turn) == (10, 19)


def test_exchange_counts_user_turns_that_open_an_exchange():
    roles = ["user", "assistant", "user", "user", "assistant", "user", "assistant", "user", "assistant"]
    turns = [Turn(i, r, f"t{i}") for i, r in enumerate(roles)]
    pages = segment(turns, "exchange_2")
    # exchanges start at 0, 2 (3 continues it), 5, 7
    assert [[t.index for t in p.turns] for p in pages] == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]


def test_topic_shift_splits_only_where_words_change():
    texts = ["we love hiking in the alps", "hiking in the alps is great", "the alps hiking trip", "quantum chromodynamics lecture notes"]
    pages = segment(chat(texts), "topic_shift")
    assert [[t.index for t in p.turns] for p in pages] == [[0, 1, 2], [3]]
    # the threshold is configurable: at 0.9 every turn shifts
    assert len(segment(chat(texts), "topic_shift_0.9")) == 4


def test_session_boundaries_follow_session_numbers():
    pages = segment(chat(["a", "b", "c", "d", "e"], sessions=[1, 1, 2, 2, 3]), "session")
    assert [[t.index for t in p.turns] for p in pages] == [[0, 1], [2, 3], [4]]


def test_token_budget_is_respected_unless_one_turn_exceeds_it():
    turns = chat(["x" * 40, "y" * 40, "z" * 200, "w" * 8])
    pages = segment(turns, "tokens_30", count_tokens=len)
    assert [[t.index for t in p.turns] for p in pages] == [[0], [1], [2], [3]]
    pages = segment(chat(["ab", "cd", "ef", "gh"]), "tokens_10", count_tokens=lambda s: len(s))
    assert all(p.tokens <= 10 or len(p.turns) == 1 for p in pages)


def test_tool_calls_stay_with_their_results():
    turns = [
        Turn(0, "user", "what is the weather"),
        Turn(1, "assistant", "", tool_calls=(ToolCall("weather", "{}", "c1"), ToolCall("temperature", "{}", "c2"))),
        Turn(2, "tool", "sunny", tool_call_id="c1"),
        Turn(3, "tool", "22C", tool_call_id="c2"),
        Turn(4, "assistant", "sunny and 22C"),
        Turn(5, "tool", "stray result", tool_call_id="c9"),
    ]
    assert [[t.index for t in a] for a in atoms(turns)] == [[0], [1, 2, 3], [4], [5]]
    for strategy in ["fixed_1", "fixed_2", "tokens_1"]:
        pages = segment(turns, strategy)
        assert any({1, 2, 3} <= {t.index for t in p.turns} for p in pages), strategy


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown segmentation strategy 'fixed'"):
        segment(chat(["a"]), "fixed")
    with pytest.raises(ValueError, match="at least 1"):
        segment(chat(["a"]), "fixed_0")
    with pytest.raises(ValueError, match="role"):
        Turn(0, "robot", "hi")


turn_lists = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "call", "tool"]), st.text("abc xyz", max_size=30), st.integers(1, 3)),
    max_size=40,
)


def build(spec):
    turns, calls = [], 0
    for role, text, session in spec:
        i = len(turns)
        if role == "call":
            calls += 1
            turns.append(Turn(i, "assistant", text, session=session, tool_calls=(ToolCall("search", "{}", f"c{calls}"),)))
        elif role == "tool":
            turns.append(Turn(i, "tool", text, session=session, tool_call_id=f"c{calls}"))
        else:
            turns.append(Turn(i, role, text, session=session))
    return turns


@settings(max_examples=150, deadline=None)
@given(turn_lists, st.sampled_from(STRATEGIES))
def test_pages_cover_every_turn_once_and_never_split_an_atom(spec, strategy):
    turns = build(spec)
    pages = segment(turns, strategy)
    assert [t for p in pages for t in p.turns] == turns
    assert all(p.turns for p in pages)
    starts = {p.first_turn for p in pages}
    for atom in atoms(turns):
        assert not any(t.index in starts for t in atom[1:])


@settings(max_examples=150, deadline=None)
@given(turn_lists, st.sampled_from(STRATEGIES), st.integers(0, 40))
def test_segmenting_a_prefix_gives_the_same_closed_pages(spec, strategy, cut):
    turns = build(spec)
    whole = segment(turns, strategy)
    prefix = segment(turns[:cut], strategy)
    closed = max(len(prefix) - 1, 0)
    assert prefix[:closed] == whole[:closed]


long_turn_lists = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "call", "tool"]), st.text("abc xyz\n", max_size=30), st.integers(1, 3), st.integers(1, 12)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(long_turn_lists, st.sampled_from(STRATEGIES))
def test_segmenting_turn_by_turn_gives_the_pages_of_the_whole(spec, strategy):
    """A Segmenter fed a conversation's paging units one at a time (tool calls, and long
    turns in parts) hands out exactly the pages of `segment` of the whole, in order,
    each as soon as it closes, never one that a later turn would change."""
    turns = build([(role, text * repeat, session) for role, text, session, repeat in spec])
    units = [u for t in turns for u in split_long(t, 40)]
    whole = segment(units, strategy)
    segmenter, closed = Segmenter(strategy), []
    for fed, unit in enumerate(units, start=1):
        closed += segmenter.add(unit)
        assert closed == whole[: len(closed)]
        assert segmenter.paged == sum(len(p.turns) for p in closed) and segmenter.fed == fed
    assert closed + segmenter.finish() == whole


def test_a_turn_too_long_for_a_page_is_paged_in_parts():
    from paged_context.pages import split_long
    from paged_context.text import approx_tokens

    call = ToolCall("read_file", '{"path": "log"}', "c1")
    text = "\n".join(f"line {i}: " + "x" * (i % 50) for i in range(300)) + "\n" + "y" * 3000  # long lines and one huge one
    long = Turn(4, "tool", text, tool_call_id="c1")
    parts = split_long(long, 100)
    assert len(parts) > 10 and "".join(p.text for p in parts) == text
    assert all(approx_tokens(p.text) <= 100 for p in parts)
    assert [p.part for p in parts] == [(k, len(parts)) for k in range(1, len(parts) + 1)]
    assert all(p.index == 4 and p.tool_call_id == "c1" for p in parts) and parts[0].content.startswith(f"[part 1 of {len(parts)}]")
    assert split_long(Turn(0, "user", "short"), 100) == [Turn(0, "user", "short")]
    speaking = split_long(Turn(5, "assistant", "z " * 400, tool_calls=(call,)), 100)
    assert speaking[-1].tool_calls == (call,) and not any(p.tool_calls for p in speaking[:-1])
    # the first part stays with the call it answers; later parts may start pages
    groups = atoms([Turn(3, "assistant", "", tool_calls=(call,))] + parts)
    assert groups[0] == [Turn(3, "assistant", "", tool_calls=(call,)), parts[0]] and groups[1:] == [[p] for p in parts[1:]]
    pages = segment([Turn(3, "assistant", "", tool_calls=(call,))] + parts, "tokens_150")
    assert len(pages) >= len(parts) // 2 and all(p.tokens <= 150 for p in pages[1:])


def test_a_token_budget_tokenizes_each_turn_once():
    """The open page is weighed again for every atom that might join it: counted from
    scratch, a history taken in at once was tokenized 8 times a turn."""
    counted = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text.split())

    turns = [Turn(i, "user" if i % 2 == 0 else "assistant", f"turn {i} " + "word " * (i % 7)) for i in range(300)]
    pages = segment(turns, "tokens_64", count)
    assert len(counted) <= len(turns) + len(pages)  # once a turn; the turn that closes a page is counted again on the next
    size = lambda ts: sum(count(t.render()) for t in ts)  # noqa: E731
    assert [t for p in pages for t in p.turns] == turns
    for page, after in zip(pages, pages[1:]):  # the rule still holds: full pages, each closed by the turn that overflows it
        assert page.tokens == size(page.turns) <= 64 and size(page.turns + after.turns[:1]) > 64
