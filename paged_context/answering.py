"""One answer to a planned request, written once for every engine: the round loop.

`Answering` is sans-IO. It renders the prompt of each round (within the model's window),
says what the engine must enforce (sampling, the recall-argument constraint, stop
strings, a forced tool call's opening and JSON schema), takes the text the engine
generated, serves recall calls (and answers calls it cannot route with an error the
model reads), returns calls to the client's own tools, bounds the rounds, records the
answer and builds the report. An engine is a thin driver around it (`drive` below is the one the server uses):

    answering = Answering(session, request, template, window, sampling, tools)
    while (round_ := answering.next_round()) is not None:
        answering.take(engine.generate(round_, session))      # the only model-specific step
    reply = answering.reply()
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol

from .calls import RECALL, ToolCall, visible_end
from .messages import BadRequest, Tools
from .session import Message, PagedSession, Request
from .templates import ChatTemplate


@dataclass(frozen=True)
class Sampling:
    """How to sample, the same for every engine (OpenAI's parameters)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: Mapping[int, float] | None = None
    repetition_penalty: float = 1.1  # small models loop under greedy decoding without it


@dataclass(frozen=True)
class RecallConstraint:
    """What constrained decoding enforces once a recall call begins."""

    syntax: str  # "plain" or "hermes"
    allowed: tuple[int, ...]  # the pages a call may name
    max_ids: int
    shared: bool  # the client's tools open calls with the same marker: constrain only calls that name recall


def schema_refused(error: Exception) -> BadRequest:
    """What a client hears when the engine cannot compile a forced call's JSON schema (the
    parameters it sent): its mistake, whichever engine found it."""
    return BadRequest(f"the forced call's parameters are not a JSON schema the engine can follow: {str(error)[-300:]}")


@dataclass(frozen=True)
class Round:
    """One generation the engine runs."""

    messages: list[Message]  # the rendered prompt, for inspection (and KV segment boundaries)
    tools: Tools  # the client's tools, rendered with the messages
    prompt: list[int]  # their token ids, the forced opening included
    sampling: Sampling
    stop: tuple[str, ...]  # generation ends after the first of these, which stays in the text
    markers: tuple[str, ...]  # texts that open a call: never streamed to the client
    recall: RecallConstraint | None = None  # None: no recall call may be made this round
    forced: bool = False  # the round writes a call to a client tool (tool_choice required or named)
    opening: str = ""  # the forced call's opening, already at the end of the prompt
    schema: dict | None = None  # JSON schema the forced call's text follows, where the engine can enforce it
    bare: bool = False  # calls may also come without their marker (`calls.BARE_OPENERS`)

    def visible_end(self, text: str) -> int:
        """How much of the text generated so far a client may see."""
        return 0 if self.forced else visible_end(text, self.markers, self.bare)


@dataclass(frozen=True)
class Generated:
    """What the engine made of a round."""

    text: str
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not computed
    truncated: bool = False  # ended by max_tokens


@dataclass
class Reply:
    text: str
    paging: dict
    usage: dict
    rendered: list[Message] = field(repr=False, default_factory=list)  # the last prompt, for inspection
    tool_calls: tuple[ToolCall, ...] = ()  # calls for the client: its own tools, or recall when exposed
    finish_reason: str = "stop"  # stop, length or tool_calls


class TextStream:
    """Passes a growing answer to `on_text` as it may be shown: never a call, never the
    start of what could become one."""

    def __init__(self, on_text: Callable[[str], None] | None):
        self.on_text, self.sent = on_text, 0

    def update(self, round_: Round, text: str) -> None:
        if self.on_text is not None and (end := round_.visible_end(text)) > self.sent:
            self.on_text(text[self.sent : end])
            self.sent = end

    def flush(self, shown: str) -> None:
        """The round is over and `shown` is what it says: send what was held back."""
        if self.on_text is not None and len(shown) > self.sent:
            self.on_text(shown[self.sent :])
        self.sent = 0


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _json_prefix(text: str) -> tuple[object, str] | None:
    """The JSON value a text begins with (after spaces), and its text; None if there is none."""
    stripped = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError:
        return None
    return value, stripped[:end]


class Answering:
    def __init__(
        self,
        session: PagedSession,
        request: Request,
        template: ChatTemplate,
        window: int,
        sampling: Sampling = Sampling(),
        tools: Tools = Tools(),
        max_rounds: int = 2,
        expose_recall: bool = False,
    ):
        """`max_rounds`: calls the server answers itself (recall, and refusals) before the
        model must answer. `expose_recall`: return recall calls to the client instead."""
        self.session, self.request, self.template, self.window = session, request, template, window
        self.sampling, self.tools, self.max_rounds, self.expose_recall = sampling, tools, max_rounds, expose_recall
        self.answer = ""
        self.calls: tuple[ToolCall, ...] = ()
        self.finish_reason = "stop"
        self.done = False
        self.served = 0  # server rounds so far
        self.round: Round | None = None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "rounds": 0}
        self.started = time.perf_counter()

    # --- rounds ---------------------------------------------------------------------------

    def next_round(self) -> Round | None:
        """The next generation to run, or None when the answer is complete."""
        if self.done:
            return None
        syntax = self.template.syntax
        opening, schema = self.template.forced_opening(self.tools) if self.tools.forced else ("", None)
        extra = self.template.tokenizer(opening, add_special_tokens=False).input_ids if opening else []
        budget = self.window - self.sampling.max_tokens - len(extra)
        # recall is offered once pages are out of view, as the paging instructions are (a
        # compaction while rendering may be what starts it)
        shown = lambda: replace(self.tools, recall=self.session.config.max_recall_ids if self.session.base is not None else 0)  # noqa: E731
        encode = lambda messages: self.template.encode(messages, shown())  # noqa: E731
        try:
            messages, ids = self.session.render_within(self.request, syntax.instruction(), encode, budget)
        except ValueError as error:
            raise BadRequest(str(error)) from error
        tools = shown()
        may_call = not tools.forced and self.served < self.max_rounds
        allowed = tuple(self.session.recallable(self.request)) if may_call else ()
        shared = syntax.name == "hermes" and bool(tools.names)
        recall = RecallConstraint(syntax.name, allowed, self.session.config.max_recall_ids, shared) if allowed else None
        if recall is not None:
            stop = (syntax.tail,)  # a constrained recall call always ends with the canonical tail
        elif tools.forced or shared:
            stop = ()  # the schema ends a forced call; a shared marker may open the client's calls
        else:
            stop = (syntax.marker,)  # a recall call would not be served: end where it would begin
        bare = syntax.name == "hermes" and bool(tools.recall or tools.names)
        self.round = Round(messages, tools, list(ids) + extra, self.sampling, stop, self.template.markers(tools), recall, tools.forced, opening, schema, bare)
        return self.round

    def take(self, generated: Generated) -> str:
        """The engine's output for the current round; returns the text it shows."""
        round_, usage = self.round, self.usage
        usage["prompt_tokens"] = len(round_.prompt)
        usage["cached_tokens"] += generated.cached_tokens
        usage["completion_tokens"] += generated.completion_tokens
        usage["rounds"] += 1
        if round_.forced:
            return self._finish("", self._forced_calls(generated.text), generated.truncated)
        found = self.template.find_calls(generated.text, round_.tools)
        if found is None:
            return self._finish(generated.text, (), generated.truncated)
        shown, calls = found
        if not self.tools.parallel:
            calls = calls[:1]
        client = tuple(c for c in calls if c.name in self.tools.names)
        recalls = [c for c in calls if c.name == RECALL]
        unknown = [c for c in calls if c.name != RECALL and c.name not in self.tools.names]
        if recalls and round_.recall is not None and self.expose_recall:
            return self._finish(shown, tuple(recalls), False, store=False)
        # recall first: with the pages in view the model may call the client's tools again,
        # or no longer need to
        served = recalls if round_.recall is not None else []
        if (served or (unknown and not client)) and self.served < self.max_rounds:
            self.answer += shown
            for call in served:
                self.session.recall(self.request, self.template.syntax.wrap(call.arguments), call.arguments)
            for call in unknown:
                self.request.add_round(self.template.syntax.wrap(call.arguments, call.name or "?"), self._refusal(call))
            self.served += 1
            return shown
        return self._finish(shown, client, False)

    def _refusal(self, call: ToolCall) -> str:
        names = ", ".join([RECALL, *self.tools.names])
        if not call.name:
            return f'error: a tool call is {{"name": ..., "arguments": {{...}}}}; this one could not be read. Tools: {names}.'
        return f"error: there is no tool named {call.name!r}. Tools you can call: {names}."

    def _forced_calls(self, text: str) -> tuple[ToolCall, ...]:
        """The call a forced round wrote: its arguments (a named function), or a whole call."""
        found = _json_prefix(text)
        if self.tools.choice != "required":
            return (ToolCall(self.tools.choice, found[1] if found else text.strip()),)  # unparsed: the client sees what was written
        if found and isinstance(found[0], dict) and found[0].get("name") in self.tools.names:
            arguments = found[0].get("arguments", {})
            return (ToolCall(found[0]["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)),)
        hit = self.template.find_calls(self.round.opening + text, self.tools)
        return tuple(c for c in (hit[1] if hit else ()) if c.name in self.tools.names)

    def _finish(self, shown: str, calls: tuple[ToolCall, ...], truncated: bool, store: bool = True) -> str:
        """The answer is complete: record it (before the client hears it) with its calls."""
        self.answer = (self.answer + shown).strip()
        self.calls = tuple(c if c.id else ToolCall(c.name, c.arguments, _new_id()) for c in calls)
        self.finish_reason = "tool_calls" if self.calls else "length" if truncated else "stop"
        if store:
            self.session.finish(self.request, self.answer, self.calls)
        self.done = True
        return shown

    # --- the result -----------------------------------------------------------------------

    def reply(self) -> Reply:
        usage = {**self.usage, "seconds": time.perf_counter() - self.started}
        paging = self.session.report(self.request, usage["prompt_tokens"], self._history_tokens())
        return Reply(self.answer, paging, usage, self.round.messages if self.round else [], self.calls, self.finish_reason)

    def _history_tokens(self) -> int:
        """What the unpaged prompt (a system message, then every turn, as a client without
        paging sends it) would cost: the system message and the tools through the template,
        and each turn as the template writes it after the system message alone, counted
        once for the session. That is exact but where a template writes messages together
        (Hermes puts a run of tool results in one user message, a few tokens less);
        encoding the whole history per request cost more than the rest of the request once
        it held thousands of turns."""
        system = [Message("system", "You are a helpful assistant.", "system")]
        bare = len(self.template.encode(system))
        turn_tokens = lambda message: len(self.template.encode([*system, message])) - bare  # noqa: E731
        return len(self.template.encode(system, self.tools)) + self.session.history_tokens(turn_tokens)


class Engine(Protocol):
    """What `answer` needs of an engine: its chat template, its window, and one round."""

    template: ChatTemplate
    window: int

    async def generate(self, round_: Round, session: PagedSession, on_text: Callable[[str], None] | None = None) -> Generated:
        """Run the round; `on_text` receives the text generated so far as it grows."""


async def drive(engine: Engine, answering: Answering, on_text: Callable[[str], None] | None = None, run=asyncio.to_thread) -> Reply:
    """Run the loop's rounds on an engine; `on_text` receives the visible answer as it grows.
    The steps between generations (rendering; serving recalls and storing the answer,
    which write the store) run in a worker thread through `run(fn, *args)`, off the event
    loop serving the engine; the caller keeps other requests out of the session meanwhile."""
    stream = TextStream(on_text)
    while (round_ := await run(answering.next_round)) is not None:
        generated = await engine.generate(round_, answering.session, lambda text: stream.update(round_, text))  # noqa: B023 (used in this round only)
        stream.flush(await run(answering.take, generated))
    return await run(answering.reply)
