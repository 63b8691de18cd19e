"""The model's chat template: paged messages and tools become prompt text and tokens, and
tool calls are found in what the model writes.

A template that renders `tools` gets them natively (recall beside the client's), with
calls in the history as `tool_calls`; a template without tools (SmolLM2's) gets the
client's tools described in the system message and calls written out in the plain
syntax, `read_file({"path": "a.txt"})`. The tokenizer is used, never imported: the core
stays free of transformers.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

from .calls import HERMES, PLAIN, RECALL, CallSyntax, ToolCall, find_calls
from .messages import Tools
from .recall import recall_tool

# an engine's own parser for the model family's calls (vLLM's): (text, the request's tools)
# -> (the text before the calls, the calls), or None when it finds none
CallParser = Callable[[str, Tools], "tuple[str, list[ToolCall]] | None"]


def call_syntax(tokenizer) -> CallSyntax:
    """A template that renders `tools` knows a native tool-call format (Hermes for the
    families that ship one); otherwise the system prompt teaches the plain form."""
    return HERMES if "tools" in (tokenizer.chat_template or "") else PLAIN


def _arguments_value(arguments: str):
    """Arguments as templates want them (an object), the text itself when it is not JSON."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def _signature(function: dict) -> str:
    properties = (function.get("parameters") or {}).get("properties") or {}
    shown = ", ".join(f'"{name}": {spec.get("type", "value") if isinstance(spec, dict) else "value"}' for name, spec in properties.items())
    line = f"{function['name']}({{{shown}}})"
    return f"{line} - {function['description']}" if function.get("description") else line


def describe_tools(functions: Sequence[dict]) -> str:
    """The client's tools for a model whose template has no tools: what the system message says."""
    example = functions[0]["name"]
    return (
        f"You can call these tools. To call one, reply with only the call, written as {example}({{...arguments as JSON...}}):\n"
        + "\n".join(_signature(f) for f in functions)
    )


class ChatTemplate:
    def __init__(self, tokenizer, parse_calls: CallParser | None = None):
        """`parse_calls`: the engine's parser for this model family's tool calls (vLLM's,
        where one exists); calls it does not find are looked for in our own syntax."""
        self.tokenizer = tokenizer
        self.syntax = call_syntax(tokenizer)
        self.parse_calls = parse_calls

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def chat(self, messages, tools: Tools = Tools()) -> list[dict]:
        """The messages as the template takes them."""
        native = self.syntax is HERMES
        chat = []
        for m in messages:
            entry = {"role": m.role, "content": m.content}
            if m.tool_calls and native:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments_value(c.arguments)}} for c in m.tool_calls
                ]
            elif m.tool_calls:
                entry["content"] = "\n".join([m.content] * bool(m.content) + [self.syntax.wrap(c.arguments, c.name) for c in m.tool_calls])
            if m.tool_call_id is not None and native:
                entry["tool_call_id"] = m.tool_call_id
            chat.append(entry)
        if tools.offered and not native:
            system = chat[0] if chat and chat[0]["role"] == "system" else None
            description = describe_tools(tools.offered)
            if system is None:
                chat.insert(0, {"role": "system", "content": description})
            else:
                system["content"] = f"{system['content']}\n\n{description}"
        return chat

    def text(self, messages, tools: Tools = Tools(), generation_prompt: bool = True) -> str:
        """The prompt text of paged messages, through the model's own chat template."""
        schemas = [*([recall_tool(tools.recall)] if tools.recall else []), *({"type": "function", "function": f} for f in tools.offered)]
        schemas = schemas if self.syntax is HERMES and schemas else None  # no tools: the template's plain system prompt
        return self.tokenizer.apply_chat_template(self.chat(messages, tools), tools=schemas, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(self, messages, tools: Tools = Tools()) -> list[int]:
        return self.tokenizer(self.text(messages, tools), add_special_tokens=False).input_ids

    def markers(self, tools: Tools = Tools()) -> tuple[str, ...]:
        """The texts that open a call: a stream holds back what could become one."""
        return self.syntax.markers(tools.names)

    def find_calls(self, text: str, tools: Tools = Tools()) -> tuple[str, list[ToolCall]] | None:
        """The text before the calls in `text`, and the calls (recall's and the client's) in
        order; None when there are none. The engine's parser reads the model family's own
        format; when it finds nothing (or fails on a malformed call), ours looks, so a
        malformed recall call still reaches validation."""
        theirs = self.parse_calls(text, tools) if self.parse_calls is not None else None
        if theirs:
            return theirs
        shown = (*([RECALL] if tools.recall else []), *tools.names)
        found = find_calls(self.syntax, text, tools.names, bare=shown)
        return None if found is None else (text[: found[0]], found[1])

    def forced_opening(self, tools: Tools) -> tuple[str, dict]:
        """For a request that must call a tool: the text that opens the call (it ends the
        prompt, so the model writes only what follows), and the JSON schema of what it
        writes: the named function's arguments, or one call of any offered function."""
        if tools.choice != "required":
            name = tools.choice
            opening = f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": ' if self.syntax is HERMES else f"{name}("
            return opening, tools.parameters(name)
        schema = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": f["name"]}, "arguments": tools.parameters(f["name"])},
                    "required": ["name", "arguments"],
                }
                for f in tools.offered
            ]
        }
        return ("<tool_call>\n" if self.syntax is HERMES else ""), schema
