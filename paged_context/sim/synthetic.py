"""Synthetic planted-fact conversations: a license-free, reproducible paging benchmark.

The paging simulators need conversations whose probes say exactly which turns must still
be reachable to answer them. LoCoMo has that but cannot ship with the project, so this
module grows its own: long user/assistant small talk, organised in topic threads, with a
handful of personal facts (an allergy, a budget, a phone number...) each planted in one
user turn, and questions about those facts asked mid-conversation and at the end.

The shape is chosen to exercise the segmentation and bookmark strategies fairly:
- filler comes in threads of a few exchanges on one topic, so word overlap drops where a
  thread ends and `topic_shift` has real boundaries to find;
- a fact interrupts whatever thread it lands in, as people do, rather than getting a
  page of its own;
- fact values are distinctive (a dose, a date, a phone number) and appear nowhere else,
  so a probe is answerable exactly when its evidence turn (or the acknowledgment right
  after it) is in context;
- questions name the fact's subject ("the kitchen renovation", "Dr. Patel") but never
  the value, so recall has something to search for and nothing to copy.

The words (fact statements, questions and their value pools, topics and their
exchanges) are package data, `data/facts.json` and `data/filler.json`; this module is the
generator. Everything is drawn from `random.Random(seed)`, so the same seed gives the same
conversation on every machine running the same Python version (`random` promises only its
`random()` sequence across versions, not `choice` or `sample`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Mapping, Sequence

from ..pages import Turn
from .conversations import Conversation, Probe

# A conversation is a whole number of user/assistant exchanges, 120 to 200 turns.
_EXCHANGES = (60, 100)
_FACTS = (8, 16)
# Facts stay out of the last exchanges so that every fact has some conversation after it.
_QUIET_END_EXCHANGES = 5
# An interleaved probe comes at least this many turns after its fact, so the fact has
# left any small window of recent turns and the probe tests paging, not recency.
_MIN_PROBE_DISTANCE = 15
_THREAD_EXCHANGES = (2, 6)  # 4 to 12 turns
# A topic does not come back until this many other topics have had a thread.
_TOPIC_MEMORY = 4
# How often a turn gets a short topic-neutral second sentence: this breaks verbatim
# repeats between threads on the same topic without blurring the topics themselves.
_TAG_RATE = 0.3


def _table(name: str) -> dict:
    """One of the generator's word tables, from the package data."""
    return json.loads((resources.files("paged_context.sim") / "data" / name).read_text(encoding="utf-8"))


# --- planted facts ---------------------------------------------------------------------


@dataclass(frozen=True)
class _FactSpec:
    subjects: Mapping[str, Sequence[str]]  # what a question names -> the values it can take
    statements: Sequence[str]  # the user's turn; each holds {value} verbatim
    questions: Sequence[str]  # name {subject}, never {value}
    acks: Sequence[str]  # the assistant's reply; some repeat {value}, some do not


@dataclass(frozen=True)
class _Fact:
    kind: str
    value: str
    statement: str
    ack: str
    questions: tuple[str, ...]


_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CLOCK = ("7am", "7:30am", "8am", "9am", "10am", "12pm", "5pm", "5:30pm", "6pm", "6:30pm", "7pm", "7:30pm", "8pm")

# Value pools too regular to list: a fact type in facts.json names one as its "values",
# and all its subjects draw from it.
_GENERATED_VALUES: dict[str, Sequence[str]] = {
    "dollar amounts": tuple(f"${amount:,}" for amount in range(800, 15001, 50)),
    # 555-0100 to 555-0199 are the numbers reserved for fiction.
    "phone numbers": tuple(f"555-01{n:02d}" for n in range(100)),
    # Two-digit days only: "March 1" would be a substring of "March 14".
    "dates": tuple(f"{month} {day}" for month in _MONTHS for day in range(10, 29)),
    # Above every dose in the medical pool, so no answer hides inside another.
    "numbers": tuple(str(n) for n in range(2000, 10000)),
    "weekly times": tuple(f"{day}s at {clock}" for day in _WEEKDAYS for clock in _CLOCK),
}


def _fact_spec(table: dict) -> _FactSpec:
    subjects = table["subjects"]
    if "values" in table:
        subjects = dict.fromkeys(subjects, _GENERATED_VALUES[table["values"]])
    return _FactSpec(subjects, table["statements"], table["questions"], table["acks"])


# A type whose subjects have pools of their own keeps them disjoint, so two preferences
# (say) never share an answer.
_FACT_SPECS: dict[str, _FactSpec] = {kind: _fact_spec(table) for kind, table in _table("facts.json").items()}
# In the data file's order: the draws depend on it.
FACT_TYPES = tuple(_FACT_SPECS)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _draw_facts(rng: random.Random) -> list[_Fact]:
    """Every type once, then up to one more of each, in random order."""
    kinds = list(FACT_TYPES) + rng.sample(FACT_TYPES, rng.randint(*_FACTS) - len(FACT_TYPES))
    rng.shuffle(kinds)
    used_subjects: set[tuple[str, str]] = set()
    used_values: set[str] = set()
    facts = []
    for kind in kinds:
        spec = _FACT_SPECS[kind]
        # A second fact of a type needs its own subject, or its question would be ambiguous.
        subject = rng.choice([s for s in spec.subjects if (kind, s) not in used_subjects])
        value = rng.choice([v for v in spec.subjects[subject] if v not in used_values])
        used_subjects.add((kind, subject))
        used_values.add(value)  # so no two probes of a conversation share an answer
        slots = {"subject": subject, "value": value}
        facts.append(
            _Fact(
                kind=kind,
                value=value,
                statement=_capitalized(rng.choice(spec.statements).format(**slots)),
                ack=_capitalized(rng.choice(spec.acks).format(**slots)),
                questions=tuple(q.format(**slots) for q in spec.questions),
            )
        )
    return facts


def _spread(rng: random.Random, k: int, limit: int) -> list[int]:
    """k distinct positions in [0, limit), one in each of k equal strata, so facts cover
    the whole conversation instead of clustering."""
    return [rng.randrange(i * limit // k, (i + 1) * limit // k) for i in range(k)]


# --- filler ----------------------------------------------------------------------------

# A user turn and the assistant reply that answers it.
_Exchange = tuple[str, str]


@dataclass(frozen=True)
class _Topic:
    slots: Mapping[str, Sequence[str]]  # drawn once per thread, so a thread keeps its subject
    openers: Sequence[_Exchange]  # how a thread on this topic starts
    follow_ups: Sequence[_Exchange]  # at least _THREAD_EXCHANGES[1] - 1 of them


def _topic(table: dict) -> _Topic:
    # JSON has no tuples: an exchange is stored as a [user, reply] list
    return _Topic(
        slots=table["slots"],
        openers=[(user, reply) for user, reply in table["openers"]],
        follow_ups=[(user, reply) for user, reply in table["follow_ups"]],
    )


_FILLER = _table("filler.json")
# Names and times any topic may use. Filler pools share no value with the fact pools, so
# an answer never turns up in small talk.
_SHARED_SLOTS: Mapping[str, Sequence[str]] = _FILLER["shared_slots"]
_USER_TAGS: Sequence[str] = _FILLER["user_tags"]
_ASSISTANT_TAGS: Sequence[str] = _FILLER["assistant_tags"]
_TOPICS: dict[str, _Topic] = {name: _topic(table) for name, table in _FILLER["topics"].items()}


def _say(rng: random.Random, template: str, slots: Mapping[str, str], tags: Sequence[str]) -> str:
    text = _capitalized(template.format(**slots))
    return f"{text} {rng.choice(tags)}" if rng.random() < _TAG_RATE else text


def _thread(rng: random.Random, topic: _Topic, exchanges: int) -> list[_Exchange]:
    slots = {name: rng.choice(pool) for name, pool in {**_SHARED_SLOTS, **topic.slots}.items()}
    # Sampling without replacement: no exchange repeats within a thread.
    chosen = [rng.choice(topic.openers), *rng.sample(topic.follow_ups, exchanges - 1)]
    return [(_say(rng, user, slots, _USER_TAGS), _say(rng, reply, slots, _ASSISTANT_TAGS)) for user, reply in chosen]


def _filler(rng: random.Random, exchanges: int) -> list[_Exchange]:
    out: list[_Exchange] = []
    recent: list[str] = []
    while len(out) < exchanges:
        name = rng.choice([t for t in _TOPICS if t not in recent])
        recent = [*recent, name][-_TOPIC_MEMORY:]
        out.extend(_thread(rng, _TOPICS[name], rng.randint(*_THREAD_EXCHANGES)))
    return out[:exchanges]


# --- probes and assembly ---------------------------------------------------------------


def _probes(rng: random.Random, facts: Sequence[_Fact], fact_turns: Sequence[int], n_turns: int) -> list[Probe]:
    probes = [
        Probe(n_turns, rng.choice(fact.questions), fact.value, (turn,), fact.kind)
        for fact, turn in zip(facts, fact_turns)
    ]
    # Mid-conversation probes land after an assistant turn (an even count of turns), as a
    # user's question would.
    first_at = [turn + _MIN_PROBE_DISTANCE + (turn + _MIN_PROBE_DISTANCE) % 2 for turn in fact_turns]
    eligible = [i for i, at in enumerate(first_at) if at < n_turns]
    for i in rng.sample(eligible, min(len(eligible), len(facts) // 2)):
        at = rng.randrange(first_at[i], n_turns, 2)
        probes.append(Probe(at, rng.choice(facts[i].questions), facts[i].value, (fact_turns[i],), facts[i].kind))
    return sorted(probes, key=lambda p: (p.at, p.evidence))


def generate(seed: int) -> Conversation:
    """One conversation, fully determined by `seed`.

    Use non-negative seeds: CPython seeds `Random` with abs(seed), so -n would repeat the
    conversation of n under another id.
    """
    rng = random.Random(seed)
    n_exchanges = rng.randint(*_EXCHANGES)
    facts = _draw_facts(rng)
    fact_at = dict(zip(_spread(rng, len(facts), n_exchanges - _QUIET_END_EXCHANGES), facts))
    filler = iter(_filler(rng, n_exchanges - len(facts)))
    exchanges = [(fact_at[i].statement, fact_at[i].ack) if i in fact_at else next(filler) for i in range(n_exchanges)]
    turns = tuple(
        Turn(index=2 * i + j, role=role, text=text)
        for i, pair in enumerate(exchanges)
        for j, (role, text) in enumerate(zip(("user", "assistant"), pair))
    )
    fact_turns = [2 * i for i in fact_at]
    probes = _probes(rng, list(fact_at.values()), fact_turns, len(turns))
    return Conversation(id=f"synthetic-{seed}", turns=turns, probes=tuple(probes))


def generate_many(n: int, seed: int = 0) -> list[Conversation]:
    """Conversations for seeds seed, seed + 1, ..., seed + n - 1."""
    return [generate(s) for s in range(seed, seed + n)]
