"""What a chat request says, checked: the conversation's turns, the client's instructions,
its tools and tool choice, and the recall calls it hands back to be served.

Everything here is the OpenAI chat format taken apart; every mistake is a `BadRequest`
whose message says what to fix (the server answers it with HTTP 400).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .calls import RECALL, ToolCall

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


class BadRequest(ValueError):
    """The client's mistake: answered with HTTP 400 (or `status`) and this message."""

    status = 400


@dataclass(frozen=True)
class ChatTurn:
    """A conversation turn as a request gives it (the session numbers it when stored)."""

    role: str  # user, assistant or tool
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Exchange:
    turns: tuple[ChatTurn, ...]  # oldest first; the last is a user message or a tool result
    instructions: tuple[str, ...] = ()  # the client's system/developer messages
    recall_calls: tuple[str, ...] = ()  # arguments of recall calls after the last turn, to serve first

    @property
    def last_user_text(self) -> str:
        return next((t.text for t in reversed(self.turns) if t.role == "user"), "")


@dataclass(frozen=True)
class Tools:
    """The client's own tools for one request (OpenAI function calling), and whether the
    server's recall tool is shown beside them."""

    functions: tuple[dict, ...] = ()  # the `function` objects as sent: name, description, parameters
    choice: str = "none"  # "auto", "none", "required", or the name of the one function to call
    parallel: bool = True
    recall: int = 0  # the most pages a recall call may name, once the session has pages out of view (0: none are; a
    # template with native tools lists recall otherwise)

    @property
    def offered(self) -> tuple[dict, ...]:
        """The functions the model is shown: none when the client chose `none`."""
        return () if self.choice == "none" else self.functions

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.offered)

    @property
    def forced(self) -> bool:
        """The model must call a tool now (`required`, or a named function)."""
        return self.choice not in ("auto", "none")

    def parameters(self, name: str) -> dict:
        return next(f for f in self.functions if f["name"] == name).get("parameters") or {"type": "object"}


def text_of(content: Any, where: str = "content") -> str:
    """A message's text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text content parts are supported (type 'text')")
            parts.append(part["text"])
        return "\n".join(parts)
    raise BadRequest(f"{where} must be a string or a list of text parts")


def _calls(message: dict, i: int) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls")
    if calls is None:
        calls = []
    if not isinstance(calls, list):
        raise BadRequest(f"messages[{i}].tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not isinstance(call.get("id"), str):
            raise BadRequest(f"{where} must be {{'id': str, 'type': 'function', 'function': {{'name': str, 'arguments': str}}}}")
        arguments = function.get("arguments", "")
        out.append(ToolCall(function["name"], arguments if isinstance(arguments, str) else json.dumps(arguments), call["id"]))
    return tuple(out)


def split_messages(messages: list[dict]) -> Exchange:
    """The conversation turns, the client's instructions, and the recall calls it hands
    back. System and developer messages are instructions, not turns: they are not paged.
    Recall calls and their tool messages are paging mechanics, not conversation; recall
    calls after the last turn are served before the model answers."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be a list of message objects")
    if not messages:
        raise BadRequest("messages must not be empty")
    turns: list[ChatTurn] = []
    instructions: list[str] = []
    open_calls: dict[str, str] = {}  # id -> tool name, for calls not yet answered
    recall_ids: set[str] = set()
    trailing_recalls: list[str] = []  # recall calls made after the last conversation turn
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        text = text_of(message.get("content"), f"messages[{i}].content")
        if role in ("system", "developer"):
            instructions.append(text)
            continue
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_calls:
                raise BadRequest(f"messages[{i}] is a tool result for no open tool call (tool_call_id {call_id!r})")
            if open_calls.pop(call_id) != RECALL:  # a recall result's content is the server's to fill
                turns.append(ChatTurn("tool", text, tool_call_id=call_id))
                trailing_recalls = []
            continue
        if open_calls:
            raise BadRequest(f"every tool call needs a tool message with its tool_call_id before messages[{i}] (unanswered: {', '.join(sorted(open_calls))})")
        calls = _calls(message, i) if role == "assistant" else ()
        if len({c.id for c in calls}) < len(calls):
            raise BadRequest(f"messages[{i}].tool_calls has two calls with one id")
        open_calls = {c.id: c.name for c in calls}
        recalls = [c for c in calls if c.name == RECALL]
        recall_ids |= {c.id for c in recalls}
        client_calls = tuple(c for c in calls if c.name != RECALL)
        if recalls and not client_calls and not text.strip():
            trailing_recalls += [c.arguments for c in recalls]
            continue
        turns.append(ChatTurn(role, text, client_calls))
        trailing_recalls = []
    if open_calls:
        raise BadRequest(f"every tool call needs a tool message with its tool_call_id (unanswered: {', '.join(sorted(open_calls))})")
    if not turns or turns[-1].role not in ("user", "tool"):
        raise BadRequest("the last message must come from the user, or answer a tool call with a tool message")
    if turns[-1].role == "user" and not turns[-1].text.strip():
        raise BadRequest("the last user message is empty")
    return Exchange(tuple(turns), tuple(instructions), tuple(trailing_recalls))


def parse_tools(body: dict) -> Tools:
    """The request's `tools`, `tool_choice` and `parallel_tool_calls`, checked."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise BadRequest(f"tools must be a list of at most {MAX_TOOLS} tools")
    functions, names = [], set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': {{...}}}}}}")
        name = function["name"]
        if not TOOL_NAME.fullmatch(name):
            raise BadRequest(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -, got {name!r}")
        if name == RECALL:
            raise BadRequest("recall is the paging server's own tool (it brings back evicted pages): give your tool another name")
        if name in names:
            raise BadRequest(f"two tools are named {name!r}")
        if not isinstance(function.get("parameters", {}), dict) or not isinstance(function.get("description", ""), str):
            raise BadRequest(f"tools[{i}].function: parameters must be a JSON schema object, description a string")
        names.add(name)
        functions.append({k: function[k] for k in ("name", "description", "parameters") if k in function})
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto" if functions else "none"
    elif isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else None
        named = function.get("name") if isinstance(function, dict) else None
        if not isinstance(named, str) or named not in names:
            raise BadRequest(f"tool_choice names no tool of this request: {named!r}")
        choice = named
    elif choice not in ("auto", "none", "required"):
        raise BadRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}")
    if choice in ("auto", "required") and not functions:
        raise BadRequest(f"tool_choice {choice!r} needs tools")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("parallel_tool_calls must be true or false")
    return Tools(tuple(functions), choice, parallel is not False)
