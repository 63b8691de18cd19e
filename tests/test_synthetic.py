"""The synthetic planted-fact generator: determinism, shape, and probe soundness."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paged_context.pages import segment
from paged_context.sim.conversations import Conversation
from paged_context.sim.synthetic import FACT_TYPES, generate, generate_many
from paged_context.text import words

SEEDS = 50
CONVERSATIONS = generate_many(SEEDS)


def fact_turns(conv: Conversation) -> set[int]:
    return {p.evidence[0] for p in conv.probes}


def filler_texts(conv: Conversation) -> list[str]:
    """Small talk only: neither a fact nor the acknowledgment right after it."""
    facts = fact_turns(conv)
    return [t.text for t in conv.turns if t.index not in facts and t.index - 1 not in facts]


def sentences(text: str) -> int:
    # Titles and initials ("Dr. Patel", "Ursula K. Le Guin") end in a period but not a sentence.
    text = re.sub(r"\b(Dr|Ms|[A-Z])\. ", r"\1 ", text)
    return len(re.findall(r"[.!?](?:\s|$)", text))


def check_invariants(conv: Conversation) -> None:
    """What every conversation promises, whatever its seed."""
    turns = conv.turns
    assert 120 <= len(turns) <= 200
    for i, turn in enumerate(turns):
        assert turn.index == i
        assert turn.role == ("user" if i % 2 == 0 else "assistant")
        assert (turn.speaker, turn.session, turn.dia_id) == (None, None, None)
        assert 1 <= sentences(turn.text) <= 3, turn.text

    facts = fact_turns(conv)
    assert 8 <= len(facts) <= 16
    end = [p for p in conv.probes if p.at == len(turns)]
    assert sorted(p.evidence for p in end) == sorted((f,) for f in facts), "one end probe per fact"
    assert {p.category for p in end} == set(FACT_TYPES)
    assert list(conv.probes) == sorted(conv.probes, key=lambda p: (p.at, p.evidence))

    for probe in conv.probes:
        (fact,) = probe.evidence
        assert turns[fact].role == "user"
        assert fact < len(turns) - 10, "facts stay out of the last 10 turns"
        assert probe.category in FACT_TYPES
        assert probe.answer and probe.answer in turns[fact].text
        assert probe.answer.lower() not in probe.question.lower()
        assert 0 < probe.at <= len(turns)
        assert probe.at > fact
        if probe.at < len(turns):
            assert probe.at >= fact + 15


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.id)
def test_invariants(conv: Conversation) -> None:
    check_invariants(conv)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**64))
def test_invariants_hold_for_any_seed(seed: int) -> None:
    check_invariants(generate(seed))


def test_same_seed_same_conversation() -> None:
    assert generate(7) == generate(7)
    assert generate_many(3, seed=10) == [generate(10), generate(11), generate(12)]


def test_different_seeds_differ() -> None:
    assert len({c.turns for c in CONVERSATIONS}) == SEEDS
    assert len({c.probes for c in CONVERSATIONS}) == SEEDS


def test_ids_name_the_seed() -> None:
    assert [c.id for c in generate_many(3, seed=5)] == ["synthetic-5", "synthetic-6", "synthetic-7"]
    assert [c.id for c in CONVERSATIONS] == [f"synthetic-{s}" for s in range(SEEDS)]


def test_generation_leaves_global_random_state_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate(3)
    assert random.random() == expected


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.id)
def test_answer_is_found_only_at_its_evidence(conv: Conversation) -> None:
    # A simulator scores a probe by whether its evidence page is resident; that is only
    # sound if nothing else in the conversation gives the answer away.
    for probe in conv.probes:
        (fact,) = probe.evidence
        holders = {t.index for t in conv.turns if probe.answer.lower() in t.text.lower()}
        assert fact in holders
        assert holders <= {fact, fact + 1}, f"{probe.answer!r} also in turns {sorted(holders - {fact, fact + 1})}"


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.id)
def test_questions_of_a_conversation_are_unambiguous(conv: Conversation) -> None:
    # Two facts of one type get different subjects, so their questions differ.
    answer_of: dict[str, str] = {}
    for probe in conv.probes:
        assert answer_of.setdefault(probe.question, probe.answer) == probe.answer


def test_interleaved_probes_cover_about_half_the_facts() -> None:
    mid = sum(sum(p.at < len(c.turns) for p in c.probes) for c in CONVERSATIONS)
    facts = sum(len(fact_turns(c)) for c in CONVERSATIONS)
    for conv in CONVERSATIONS:
        interleaved = [p for p in conv.probes if p.at < len(conv.turns)]
        assert interleaved
        assert len({p.evidence for p in interleaved}) == len(interleaved), "at most one per fact"
    assert 0.35 <= mid / facts <= 0.55


def test_every_fact_type_is_planted_and_some_twice() -> None:
    counts = [sorted(p.category for p in c.probes if p.at == len(c.turns)) for c in CONVERSATIONS]
    assert all(set(FACT_TYPES) <= set(kinds) for kinds in counts)
    assert any(len(kinds) > len(FACT_TYPES) for kinds in counts)


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.id)
def test_facts_are_spread_over_the_conversation(conv: Conversation) -> None:
    facts = sorted(fact_turns(conv))
    assert facts[0] < len(conv.turns) / 3
    assert facts[-1] > 2 * len(conv.turns) / 3


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.id)
def test_filler_is_varied(conv: Conversation) -> None:
    texts = filler_texts(conv)
    assert len({w.lower() for text in texts for w in words(text)}) >= 300
    # Threads on a recurring topic may share a turn now and then, but rarely.
    assert len(set(texts)) >= 0.9 * len(texts)


@pytest.mark.parametrize("conv", CONVERSATIONS[:10], ids=lambda c: c.id)
def test_topic_threads_are_visible_to_topic_shift(conv: Conversation) -> None:
    # Shuffling the turns destroys the threads; word-overlap segmentation should then cut
    # far more often than it does on the real order.
    shuffled = list(conv.turns)
    random.Random(0).shuffle(shuffled)
    shuffled = [dataclasses.replace(t, index=i) for i, t in enumerate(shuffled)]
    real_pages = len(segment(conv.turns, "topic_shift_0.05"))
    shuffled_pages = len(segment(shuffled, "topic_shift_0.05"))
    assert real_pages <= 0.7 * shuffled_pages
