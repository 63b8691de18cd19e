"""Turns, pages, and the boundary strategies that cut a conversation into pages.

A page is a run of whole turns. Segmentation never splits a turn, and never separates an
assistant turn that calls tools from the tool results that answer it: those form one
*atom*, and boundaries only fall between atoms. The one exception is a turn too long for
any page (a file dump of 20,000 tokens): `split_long` cuts it into parts first, each part
pages like a turn, and the store keeps the turn whole. Every strategy decides from the
past alone, so segmenting a prefix of a conversation yields the same closed pages as
segmenting the whole of it (the last page of a prefix is the open one). A growing
conversation is segmented as it grows by a `Segmenter`, whose work per turn does not
depend on how long the conversation already is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .calls import ToolCall
from .text import TokenCounter, approx_tokens, jaccard, words

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Turn:
    index: int  # position in the conversation, from 0
    role: str
    text: str
    speaker: str | None = None  # a display name, when the conversation has named speakers
    session: int | None = None  # LoCoMo session number
    dia_id: str | None = None  # LoCoMo dialogue id, "D3:7"
    tool_calls: tuple[ToolCall, ...] = ()  # on an assistant turn: the tool calls it makes
    tool_call_id: str | None = None  # on a tool turn: the call it answers
    part: tuple[int, int] | None = None  # (k, n): part k of n of a turn too long for a page
    of: str = ""  # on a part: what the whole is ("the result of read_file(...)"), so every part says

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"turn {self.index}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def tool_call_ids(self) -> tuple[str, ...]:
        return tuple(call.id for call in self.tool_calls)

    @property
    def said(self) -> str:
        """The text with the calls it makes, as a reader would want them (and keywords
        and lexical matching see it): a part also says what it is part of."""
        calls = " ".join(f"{c.name}({c.arguments})" for c in self.tool_calls)
        said = f"{self.text}\n{calls}".strip() if calls else self.text
        return f"{self.of}\n{said}" if self.of else said

    @property
    def content(self) -> str:
        """The text as a prompt shows it: a part says which part it is, of what."""
        if self.part is None:
            return self.text
        return f"[part {self.part[0]} of {self.part[1]}{' of ' + self.of if self.of else ''}]\n{self.text}"

    def render(self) -> str:
        return f"{self.speaker or self.role}: {self.said if self.part is None else self.content}"


@dataclass(frozen=True)
class Page:
    id: int
    turns: tuple[Turn, ...]
    tokens: int = field(compare=False)

    @property
    def first_turn(self) -> int:
        return self.turns[0].index

    @property
    def last_turn(self) -> int:
        return self.turns[-1].index

    @property
    def text(self) -> str:
        """What was said, without speaker labels (what keywords are drawn from)."""
        return "\n".join(t.said for t in self.turns)

    def render(self) -> str:
        return "\n".join(t.render() for t in self.turns)


def atoms(turns: Sequence[Turn]) -> list[list[Turn]]:
    """Group turns into the units a boundary may not cut: a tool-calling assistant turn
    stays with the tool results that answer its calls."""
    groups: list[list[Turn]] = []
    open_calls: frozenset[str] = frozenset()
    for turn in turns:
        joins, open_calls = _answers(turn, open_calls)
        if joins:
            groups[-1].append(turn)
        else:
            groups.append([turn])
    return groups


def _answers(turn: Turn, open_calls: frozenset[str]) -> tuple[bool, frozenset[str]]:
    """Whether the turn joins the atom before it (it answers one of its open calls), and
    the calls left open after it."""
    if turn.role == "tool" and open_calls and (turn.tool_call_id is None or turn.tool_call_id in open_calls):
        return True, open_calls - {turn.tool_call_id}
    if turn.part is not None and turn.part[0] > 1:
        return False, open_calls  # a later part of a long turn: a boundary may fall before it
    return False, frozenset(turn.tool_call_ids)


def split_long(turn: Turn, max_tokens: int, count_tokens: TokenCounter = approx_tokens, of: str = "") -> list[Turn]:
    """The turn as paging units: itself, or parts of about `max_tokens` tokens each, cut at
    line ends where lines allow. Calls stay on the last part, after the text they follow.
    `of` says what the whole is, on every part (a part far from its call still names it)."""
    if count_tokens(turn.text) <= max_tokens:
        return [turn]
    pieces, current, size = [], "", 0
    for line in _short_lines(turn.text, max_tokens, count_tokens):
        n = count_tokens(line)
        if current and size + n > max_tokens:
            pieces.append(current)
            current, size = "", 0
        current, size = current + line, size + n
    pieces.append(current)
    last = len(pieces)
    return [
        dataclasses.replace(turn, text=piece, part=(k, last), of=of, tool_calls=turn.tool_calls if k == last else ())
        for k, piece in enumerate(pieces, start=1)
    ]


def _short_lines(text: str, max_tokens: int, count_tokens: TokenCounter) -> list[str]:
    """The text's lines (ends kept), a line over `max_tokens` cut into character runs."""
    out = []
    for line in text.splitlines(keepends=True):
        n = count_tokens(line)
        if n <= max_tokens:
            out.append(line)
            continue
        step = max(1, int(len(line) * max_tokens * 0.9 / n))  # characters per piece, with room for uneven tokens
        out += [line[i : i + step] for i in range(0, len(line), step)]
    return out


# A boundary rule sees the turns of the page being filled and the next atom, and says
# whether the atom must start a new page.
Boundary = Callable[[list[Turn], list[Turn]], bool]


def fixed(n: int) -> Boundary:
    return lambda page, atom: len(page) >= n


def exchange(n: int) -> Boundary:
    """A new exchange starts at a user turn that follows a non-user turn."""

    def exchanges(turns: list[Turn]) -> int:
        return sum(1 for i, t in enumerate(turns) if t.role == "user" and (i == 0 or turns[i - 1].role != "user"))

    return lambda page, atom: atom[0].role == "user" and page[-1].role != "user" and exchanges(page) >= n


def topic_shift(threshold: float = 0.15, window: int = 5) -> Boundary:
    """Split when the new turn shares too few words with the page's last `window` turns."""

    def shifted(page: list[Turn], atom: list[Turn]) -> bool:
        recent = {w.lower() for t in page[-window:] for w in words(t.text)}
        new = {w.lower() for t in atom for w in words(t.text)}
        return jaccard(recent, new) < threshold

    return shifted


def by_session() -> Boundary:
    return lambda page, atom: atom[0].session != page[-1].session


def token_budget(n: int, count_tokens: TokenCounter) -> Boundary:
    return lambda page, atom: sum(count_tokens(t.render()) for t in page + atom) > n


_STRATEGY = re.compile(r"^(fixed|exchange|tokens)_([0-9]{1,9})$|^(topic_shift)(?:_([0-9]*\.?[0-9]+))?$|^(session)$")

STRATEGIES = ("fixed_N", "exchange_N", "tokens_N", "topic_shift[_THRESHOLD]", "session")


def boundary(strategy: str, count_tokens: TokenCounter = approx_tokens) -> Boundary:
    """The rule named by a strategy string such as 'fixed_10' or 'topic_shift_0.2'."""
    m = _STRATEGY.fullmatch(strategy) if isinstance(strategy, str) else None
    if not m:
        raise ValueError(f"unknown segmentation strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} (N: a whole number of at most 9 digits, THRESHOLD: a decimal number such as 0.2)")
    kind, n, shift, threshold, session = m.groups()
    if session:
        return by_session()
    if shift:
        return topic_shift(float(threshold) if threshold else 0.15)
    if int(n) < 1:
        raise ValueError(f"{strategy!r}: the size must be at least 1")
    if kind == "fixed":
        return fixed(int(n))
    if kind == "exchange":
        return exchange(int(n))
    return token_budget(int(n), count_tokens)


class _OpenPageCounts:
    """A token counter that remembers the open page's texts until it closes: a token
    budget weighs the open page again for every atom that might join it, and closing it
    weighs it once more, so without it a history of 4,000 turns taken in at once was
    tokenized 8 times a turn."""

    def __init__(self, count_tokens: TokenCounter):
        self.count_tokens = count_tokens
        self.known: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        if text not in self.known:
            self.known[text] = self.count_tokens(text)
        return self.known[text]

    def forget(self) -> None:
        self.known.clear()


class Segmenter:
    """`segment`, one turn at a time: `add` returns the pages a turn closes, so a growing
    conversation is never segmented again from its start.

    A boundary is decided once the atom after it is complete: when none of its calls is
    left unanswered, or when a turn comes that does not answer them. (`segment` of a
    prefix decides on a last atom still waiting for results; a topic shift may then
    close a page that the whole conversation does not close.) So every page `add`
    returns is a page of `segment` of the whole conversation, in order."""

    def __init__(self, strategy: str, count_tokens: TokenCounter = approx_tokens):
        count_tokens = _OpenPageCounts(count_tokens)
        self.starts_page = boundary(strategy, count_tokens)
        self.count_tokens = count_tokens
        self.page: list[Turn] = []  # the open page: whole atoms
        self.atom: list[Turn] = []  # the last atom, until it is complete
        self.open_calls: frozenset[str] = frozenset()
        self.fed = 0  # turns added
        self.paged = 0  # turns on the pages closed so far
        self.closed = 0  # pages closed so far

    def add(self, turn: Turn) -> list[Page]:
        """Take the next turn; returns the pages it closes (none, one or two), numbered on
        from the last."""
        joins, self.open_calls = _answers(turn, self.open_calls)
        closed = []
        if joins:
            self.atom.append(turn)
        else:
            closed += self._place()  # the atom before is complete: this turn does not answer it
            self.atom = [turn]
        if not self.open_calls:  # no later turn can join the atom
            closed += self._place()
        self.fed += 1
        return closed

    def finish(self) -> list[Page]:
        """The rest as pages, as the conversation's end: the last atom placed (even with
        calls unanswered) and the open page closed."""
        closed = self._place()
        return closed + [self._close()] if self.page else closed

    def _place(self) -> list[Page]:
        """Put the complete atom on the open page, or close that page and open the next."""
        if not self.atom:
            return []
        closed = [self._close()] if self.page and self.starts_page(self.page, self.atom) else []
        self.page += self.atom
        self.atom = []
        return closed

    def _close(self) -> Page:
        self.closed += 1
        self.paged += len(self.page)
        page = Page(id=self.closed, turns=tuple(self.page), tokens=sum(self.count_tokens(t.render()) for t in self.page))
        self.page = []
        self.count_tokens.forget()
        return page


def segment(turns: Sequence[Turn], strategy: str, count_tokens: TokenCounter = approx_tokens) -> list[Page]:
    """Cut turns into pages, numbered from 1 in conversation order."""
    segmenter = Segmenter(strategy, count_tokens)
    return [page for turn in turns for page in segmenter.add(turn)] + segmenter.finish()
