"""How a model writes a recall call, finding one in generated text, and the grammar that
constrained decoding enforces once a call has begun.

Two syntaxes: a chat template with native tools gets the Hermes form its model was
trained on (`<tool_call>{"name": "recall", "arguments": {...}}</tool_call>`); a template
without tools (SmolLM2's) gets a plain-text form, `recall({"page_ids": [3]})`, taught by
the system prompt. Finding a call is lenient (whatever follows the marker becomes the
arguments, so a malformed call reaches validation and earns the model a readable error);
constrained decoding is strict (only the canonical form naming recallable pages).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Collection, Sequence


@dataclass(frozen=True)
class CallSyntax:
    name: str
    marker: str  # the text that opens a call
    head: str  # canonical text between the marker and the page ids
    tail: str  # canonical text after the ids, closing the call
    close: str  # what ends a (lenient) call

    def render(self, page_ids: Collection[int]) -> str:
        return f"{self.marker}{self.head}{', '.join(map(str, page_ids))}{self.tail}"

    def instruction(self) -> str | None:
        """The example call the system prompt shows; None for Hermes, whose chat template
        already shows the model how to call tools."""
        return None if self.name == "hermes" else self.render(["N"])

    def wrap(self, arguments: str) -> str:
        """A call with the given arguments text, as the model would have written it."""
        if self.name == "plain":
            return f"{self.marker}{arguments}{self.close}"
        return f'{self.marker}\n{{"name": "recall", "arguments": {arguments}}}\n{self.close}'

    def find(self, text: str) -> tuple[int, str, str] | None:
        """The first call in `text`: (where it starts, the call's text, its arguments as
        text), or None. A call cut short (no closing text) still counts."""
        start = text.find(self.marker)
        if start < 0:
            return None
        body_start = start + len(self.marker)
        end = text.find(self.close, body_start)
        body = text[body_start:] if end < 0 else text[body_start:end]
        call = text[start:] if end < 0 else text[start : end + len(self.close)]
        return start, call, self._arguments(body)

    def _arguments(self, body: str) -> str:
        if self.name == "plain":
            return body.strip()
        try:  # Hermes wraps the arguments in {"name": ..., "arguments": ...}
            payload = json.loads(body)
        except json.JSONDecodeError:
            return body.strip()
        if not isinstance(payload, dict) or payload.get("name") != "recall":
            return json.dumps({"unexpected": "a tool call that is not recall"})
        arguments = payload.get("arguments", {})
        return arguments if isinstance(arguments, str) else json.dumps(arguments)


PLAIN = CallSyntax("plain", "recall(", '{"page_ids": [', "]})", ")")
HERMES = CallSyntax("hermes", "<tool_call>", '\n{"name": "recall", "arguments": {"page_ids": [', "]}}\n</tool_call>", "</tool_call>")
_NUMBER = re.compile(r"\d+")


def viable(syntax: CallSyntax, partial: str, allowed: Collection[int], max_ids: int) -> bool:
    """Whether `partial` (the text after the marker) can still grow into a canonical call
    naming distinct allowed pages, at most `max_ids` of them."""
    if not allowed or max_ids < 1:
        return False  # no page can be named: the call is over before it starts
    head = syntax.head
    if len(partial) <= len(head):
        return head.startswith(partial)
    if not partial.startswith(head):
        return False
    names = {str(i) for i in allowed}
    rest, chosen = partial[len(head) :], []
    while True:
        m = _NUMBER.match(rest)
        if not m:
            return rest == "" and len(chosen) < max_ids and bool(names - set(chosen))
        number, rest = m.group(), rest[m.end() :]
        if not rest:  # a number still being written
            return len(chosen) < max_ids and any(n.startswith(number) for n in names - set(chosen))
        if number not in names or number in chosen:
            return False
        chosen.append(number)
        if rest.startswith(", "):
            if len(chosen) >= max_ids:
                return False
            rest = rest[2:]
            continue
        if ", ".startswith(rest) and len(chosen) < max_ids and names - set(chosen):
            return True
        return syntax.tail.startswith(rest)


def complete(syntax: CallSyntax, partial: str) -> bool:
    """Whether `partial` (the text after the marker) is a finished canonical call."""
    return partial.startswith(syntax.head) and partial.endswith(syntax.tail) and len(partial) > len(syntax.head) + len(syntax.tail)


class CallGrammar:
    """Which vocabulary entries may come next inside a recall call. Built once per
    tokenizer from every token's text, shared by the transformers and vLLM engines."""

    def __init__(self, syntax: CallSyntax, token_texts: Sequence[str]):
        self.syntax = syntax
        alphabet = set(syntax.head + syntax.tail + "0123456789, ")
        # only tokens made of the call's characters can ever continue it
        self.candidates = [(i, t) for i, t in enumerate(token_texts) if t and set(t) <= alphabet]

    def partial(self, generated: str) -> str | None:
        """The text of an open call in `generated` (after its marker), or None when no
        call has begun or the call is already complete."""
        start = generated.find(self.syntax.marker)
        if start < 0:
            return None
        partial = generated[start + len(self.syntax.marker) :]
        return None if complete(self.syntax, partial) else partial

    def next_tokens(self, partial: str, allowed: Collection[int], max_ids: int) -> list[int]:
        """Token ids that keep `partial` viable; empty when nothing can (no recallable page
        is left to name), and the engine should then end the turn."""
        return [i for i, t in self.candidates if viable(self.syntax, partial + t, allowed, max_ids)]


def held_back(text: str, marker: str) -> int:
    """How many trailing characters of `text` could be the start of `marker`: a streamer
    holds them until it knows whether a call begins."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def visible_end(text: str, syntaxes: Sequence[CallSyntax]) -> int:
    """How much of generated `text` a client may see while it is still growing: all of it
    before the first call in any of `syntaxes`, less a tail that could still become a
    call marker, less half a multi-byte character."""
    starts = [hit[0] for hit in (s.find(text) for s in syntaxes) if hit is not None]
    if starts:
        return min(starts)
    return len(text) - max(held_back(text, s.marker) for s in syntaxes) - text.endswith("\ufffd")
