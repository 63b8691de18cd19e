"""How a model writes tool calls, finding them in generated text, and the grammar that
constrained decoding enforces once a recall call has begun.

Two syntaxes: a chat template with native tools gets the Hermes form its model was
trained on (`<tool_call>{"name": "recall", "arguments": {...}}</tool_call>`); a template
without tools (SmolLM2's) gets a plain-text form, `recall({"page_ids": [3]})`, taught by
the system prompt, and the same form for the client's own tools (`read_file({...})`).
Finding calls is lenient (whatever follows a marker becomes the arguments, so a
malformed call reaches validation and earns the model a readable error); constrained
decoding is strict (only the canonical recall form naming recallable pages).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Collection, Sequence

RECALL = "recall"
# what reading JSON text raises: malformed text, nesting too deep for the parser, or an
# integer too long to convert (ValueError)
UNREADABLE = (ValueError, RecursionError)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or a client sent): to `recall`, served by the paging layer,
    or to one of the client's tools, returned to the client."""

    name: str
    arguments: str  # JSON text as written; may be malformed, validation decides
    id: str = ""

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


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

    def wrap(self, arguments: str, tool: str = RECALL) -> str:
        """A call with the given arguments text, as the model would have written it."""
        if self.name == "plain":
            return f"{tool}({arguments})"
        try:
            json.loads(arguments)
        except UNREADABLE:
            arguments = json.dumps(arguments)  # keeps the block parseable; the text survives as a string
        return f'<tool_call>\n{{"name": {json.dumps(tool)}, "arguments": {arguments}}}\n</tool_call>'

    def markers(self, tools: Collection[str]) -> tuple[str, ...]:
        """The texts that open a call to any of `tools` (recall included)."""
        return (self.marker,) if self.name == "hermes" else tuple(f"{t}(" for t in sorted({RECALL, *tools}))

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
        except UNREADABLE:
            return body.strip()
        if not isinstance(payload, dict) or payload.get("name") != "recall":
            return json.dumps({"unexpected": "a tool call that is not recall"})
        arguments = payload.get("arguments", {})
        return arguments if isinstance(arguments, str) else json.dumps(arguments)


def find_calls(syntax: CallSyntax, text: str, tools: Collection[str] = (), bare: Collection[str] = ()) -> tuple[int, list[ToolCall]] | None:
    """Every call in `text`, to recall or to one of `tools`, in order (parallel calls), and
    where the first begins; None when there is none. Lenient: a call cut short or with
    malformed arguments is still a call (its name is "" when it cannot be read). `bare`:
    the tools a Hermes model was shown, whose calls it may write without the tags."""
    calls, first, at = [], None, 0
    while (hit := _next_call(syntax, text, at, tools)) is not None:
        start, end, call = hit
        first = start if first is None else first
        calls.append(call)
        at = end
    if first is None and syntax.name == "hermes" and (call := _bare_call(text, bare)) is not None:
        return len(text) - len(text.lstrip()), [call]
    return None if first is None else (first, calls)


# How a model of the Hermes family begins a call it writes without the tags: Qwen2.5-Coder
# answers with the call's JSON alone, or in a json code block.
BARE_OPENERS = ("{", "```")
_FENCE = re.compile(r"```[A-Za-z]*\s*")


def _bare_call(text: str, tools: Collection[str]) -> ToolCall | None:
    """The call an answer opens with, when it begins with `{"name": ..., "arguments": ...}`
    (in a code block or not) naming one of `tools`; None otherwise, so an answer
    that merely contains JSON stays an answer. What follows the call is not shown, as
    after a tagged call."""
    body = text.lstrip()
    if (fence := _FENCE.match(body)) is not None:
        body = body[fence.end() :]
    try:
        payload, _ = _JSON.raw_decode(body)
    except UNREADABLE:
        return None
    if not isinstance(payload, dict) or set(payload) != {"name", "arguments"} or not isinstance(payload["name"], str) or payload["name"] not in tools:
        return None
    arguments = payload["arguments"]
    return ToolCall(payload["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGUMENTS = re.compile(r'"arguments"\s*:')
_JSON = json.JSONDecoder()


def _next_call(syntax: CallSyntax, text: str, at: int, tools: Collection[str]) -> tuple[int, int, ToolCall] | None:
    """The first call at or after `at`: (start, end, call)."""
    if syntax.name == "hermes":
        start = text.find(syntax.marker, at)
        if start < 0:
            return None
        body_start = start + len(syntax.marker)
        close = text.find(syntax.close, body_start)
        end = len(text) if close < 0 else close + len(syntax.close)
        body = text[body_start : len(text) if close < 0 else close].strip()
        try:
            payload = json.loads(body)
        except UNREADABLE:
            named, given = _NAME.search(body), _ARGUMENTS.search(body)
            return start, end, ToolCall(named.group(1) if named else "", _loose_arguments(body[given.end() :]) if given else body)
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return start, end, ToolCall("", body)
        arguments = payload.get("arguments", {})
        return start, end, ToolCall(payload["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))
    hits = [(m.start(), m.end(), m.group(1)) for m in (_plain_marker(tools).search(text, at),) if m]
    if not hits:
        return None
    start, body_start, name = hits[0]
    rest = text[body_start:]
    stripped = rest.lstrip()
    try:
        _, length = _JSON.raw_decode(stripped)
    except UNREADABLE:
        close = rest.find(")")
        arguments = rest if close < 0 else rest[:close]
        end = len(text) if close < 0 else body_start + close + 1
        return start, end, ToolCall(name, arguments.strip())
    offset = len(rest) - len(stripped)
    arguments = stripped[:length]
    after = body_start + offset + length
    tail = text[after:]
    end = after + (len(tail) - len(tail.lstrip()) + 1 if tail.lstrip().startswith(")") else 0)
    return start, end, ToolCall(name, arguments)


def _loose_arguments(rest: str) -> str:
    """The arguments of a Hermes block whose JSON does not parse: what follows
    `"arguments":`, without the wrapper's closing brace when that makes it valid."""
    rest = rest.strip()
    unwrapped = rest.removesuffix("}").strip()
    for candidate in (unwrapped, rest):
        try:
            json.loads(candidate)
            return candidate
        except UNREADABLE:
            pass
    return rest


def _plain_marker(tools: Collection[str]) -> re.Pattern:
    names = sorted({RECALL, *tools}, key=len, reverse=True)  # the longest name wins at a position
    return _plain_pattern(tuple(names))


@functools.lru_cache(maxsize=64)
def _plain_pattern(names: tuple[str, ...]) -> re.Pattern:
    # a name glued to a longer word ("myrecall(") is not a call
    return re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, names)) + r")\(")


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

    def partial(self, generated: str, shared: bool = False) -> str | None:
        """The text of an open recall call in `generated` (after its marker), or None when
        no call has begun or the call is already complete. `shared`: the client's tools
        open calls with the same marker, so a call is only constrained once it names recall."""
        start = generated.find(self.syntax.marker)
        if start < 0:
            return None
        partial = generated[start + len(self.syntax.marker) :]
        if shared:
            naming = self.syntax.head[: self.syntax.head.find(RECALL) + len(RECALL) + 1]
            if not (partial.startswith(naming) or (len(partial) < len(naming) and naming.startswith(partial))):
                return None  # another tool's call, or one that may still become recall: free
            if len(partial) < len(naming):
                return None
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


def visible_end(text: str, markers: Sequence[str], bare: bool = False) -> int:
    """How much of generated `text` a client may see while it is still growing: all of it
    before the first call marker, less a tail that could still become one, less half a
    multi-byte character. `bare`: calls may come without a marker (`BARE_OPENERS`), so an
    answer that begins like one is held until it is complete."""
    begun = text.lstrip()
    if bare and any(begun.startswith(o) or o.startswith(begun) for o in BARE_OPENERS):
        return 0
    starts = [i for i in (text.find(m) for m in markers) if i >= 0]
    if starts:
        return min(starts)
    return len(text) - max(held_back(text, m) for m in markers) - text.endswith("\ufffd")
