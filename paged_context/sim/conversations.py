"""Conversations with probes: the input of the simulators and evaluations.

A probe is a question asked at some point of a conversation, with the turns that hold
the evidence for its answer. LoCoMo files are read from a path the user gives (the data
is CC BY-NC and is never shipped with this project).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..pages import Turn

LOCOMO_DEV = Path("shared", "data", "locomo", "locomo_dev.json")


@dataclass(frozen=True)
class Probe:
    at: int  # asked after this many turns of the conversation
    question: str
    answer: str
    evidence: tuple[int, ...]  # indices of the turns that hold the answer
    category: str  # LoCoMo category number as text, or the synthetic fact type
    number: int = -1  # position among the sample's questions (LoCoMo), a stable id


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[Turn, ...]
    probes: tuple[Probe, ...]
    dates: dict[int, str] = field(default_factory=dict, compare=False)  # session number -> when it took place


def default_locomo_path() -> Path | None:
    """$PAGED_CONTEXT_LOCOMO, else the dev split in a `shared/` folder beside the checkout
    (or beside the working directory or one of its parents), when present."""
    env = os.environ.get("PAGED_CONTEXT_LOCOMO")
    if env:
        return Path(env)  # a wrong path should fail loudly where it is read, not be ignored
    checkout = Path(__file__).resolve().parents[2]
    for base in (checkout.parent, Path.cwd().resolve(), *Path.cwd().resolve().parents):
        if (base / LOCOMO_DEV).exists():
            return base / LOCOMO_DEV
    return None


_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"D(\d+):(\d+)")


def load_locomo(path: str | os.PathLike) -> list[Conversation]:
    """Read a LoCoMo-format file (a list of samples with `conversation` and `qa`).

    Speaker A plays the user and speaker B the assistant. Image turns keep their caption
    as text. Evidence ids are parsed leniently ('D8:6; D9:17' names two turns); a question
    whose evidence names no turn of the conversation gets no probe.
    """
    with open(path, encoding="utf-8") as f:
        samples = json.load(f)
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "conversation" in s for s in samples):
        raise ValueError(f"{path}: not a LoCoMo file (expected a list of samples with a 'conversation')")
    return [_conversation(sample, i) for i, sample in enumerate(samples)]


def _conversation(sample: dict, position: int) -> Conversation:
    conv = sample["conversation"]
    roles = {conv.get("speaker_a"): "user", conv.get("speaker_b"): "assistant"}
    sessions = sorted((int(m.group(1)), key) for key in conv if (m := _SESSION_KEY.match(key)))
    turns: list[Turn] = []
    for number, key in sessions:
        for raw in conv[key]:
            text = raw.get("text", "")
            if raw.get("blip_caption"):
                text = f"{text} [shares {raw['blip_caption']}]".strip()
            turns.append(
                Turn(
                    index=len(turns),
                    role=roles.get(raw.get("speaker"), "user"),
                    text=text,
                    speaker=raw.get("speaker"),
                    session=number,
                    dia_id=raw.get("dia_id"),
                )
            )
    by_dia = {t.dia_id: t.index for t in turns}
    probes = []
    for number, qa in enumerate(sample.get("qa", [])):
        ids = _DIA_ID.findall(" ".join(str(e) for e in qa.get("evidence", [])))
        evidence = tuple(sorted({by_dia[f"D{s}:{n}"] for s, n in ids if f"D{s}:{n}" in by_dia}))
        if not evidence:
            continue
        answer = qa.get("answer", qa.get("adversarial_answer", ""))
        probes.append(Probe(len(turns), qa["question"], str(answer), evidence, str(qa.get("category", "")), number))
    dates = {number: str(conv[f"{key}_date_time"]) for number, key in sessions if conv.get(f"{key}_date_time")}
    return Conversation(str(sample.get("sample_id", f"conv-{position}")), tuple(turns), tuple(probes), dates)
