import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paged_context.pages import Turn, atoms, segment

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
        Turn(1, "assistant", "", tool_call_ids=("c1", "c2")),
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
            turns.append(Turn(i, "assistant", text, session=session, tool_call_ids=(f"c{calls}",)))
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
