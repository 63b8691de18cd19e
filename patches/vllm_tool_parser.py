"""The recall tool-call parser, as a vLLM plugin.

Registered under the name `paged_recall`; works in our server and in stock vLLM:

    vllm serve MODEL --enable-auto-tool-choice --tool-call-parser paged_recall \\
        --tool-parser-plugin paged_context.patches.vllm_tool_parser

It finds recall calls in both syntaxes of `paged_context.calls` (Hermes `<tool_call>`
JSON, and the plain `recall({...})` a template without tools is taught), returns them
as OpenAI `tool_calls` named `recall`, and never lets a call's text leak into `content`.
Arguments are passed on as written, malformed ones included: validating them is the
recall tool's job, and its error is what the model should read.

`family_parser` goes the other way: inside the paging server, vLLM's own parser for the
served model's family (`hermes`, `llama3_json`, `mistral`, ...) reads the calls the model
makes to the client's tools and to recall alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tool_parsers import ToolParser, ToolParserManager

from paged_context import calls
from paged_context.calls import HERMES, PLAIN, CallSyntax, visible_end
from paged_context.messages import Tools
from paged_context.recall import recall_tool
from paged_context.templates import CallParser

NAME = "paged_recall"
SYNTAXES = (HERMES, PLAIN)


def first_call(text: str) -> tuple[CallSyntax, int, str, str, bool] | None:
    """The earliest recall call in `text` in either syntax: (syntax, start, call text,
    arguments, closed)."""
    found = []
    for syntax in SYNTAXES:
        hit = syntax.find(text)
        if hit is not None:
            start, call, arguments = hit
            found.append((start, syntax, call, arguments))
    if not found:
        return None
    start, syntax, call, arguments = min(found, key=lambda f: f[0])
    return syntax, start, call, arguments, call.endswith(syntax.close)


@ToolParserManager.register_module(NAME)
class PagedRecallToolParser(ToolParser):
    def __init__(self, tokenizer, tools=None):
        super().__init__(tokenizer, tools)
        self._sent_content = 0

    def adjust_request(self, request):
        request = super().adjust_request(request)
        if request.tools and request.tool_choice != "none":
            request.skip_special_tokens = False  # <tool_call> is a special token in some vocabularies
        return request

    def extract_tool_calls(self, model_output: str, request) -> ExtractedToolCallInformation:
        hit = first_call(model_output)
        if hit is None:
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
        _, start, _, arguments, _ = hit
        call = ToolCall(type="function", function=FunctionCall(name="recall", arguments=arguments))
        return ExtractedToolCallInformation(tools_called=True, tool_calls=[call], content=model_output[:start] or None)

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request,
    ) -> DeltaMessage | None:
        end = visible_end(current_text, [s.marker for s in SYNTAXES])
        content = current_text[self._sent_content : end] if end > self._sent_content else None
        self._sent_content = max(self._sent_content, end)
        deltas: list[DeltaToolCall] = []
        hit = first_call(current_text)
        if hit is not None:
            syntax, _, _, arguments, closed = hit
            if not self.prev_tool_call_arr:  # the name goes out as soon as a call begins
                self.prev_tool_call_arr.append({"name": "recall", "arguments": ""})
                self.streamed_args_for_tool.append("")
                deltas.append(DeltaToolCall(index=0, type="function", id=make_tool_call_id(), function=DeltaFunctionCall(name="recall")))
            # Hermes arguments are only known once the wrapping JSON closes; plain ones grow
            # as written. Either way the stream end flushes whatever is left.
            self.prev_tool_call_arr[0]["arguments"] = arguments
            sent = self.streamed_args_for_tool[0]
            if (closed or syntax is PLAIN) and arguments.startswith(sent) and len(arguments) > len(sent):
                deltas.append(DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=arguments[len(sent) :])))
                self.streamed_args_for_tool[0] = arguments
        if content or deltas:
            return DeltaMessage(content=content, tool_calls=deltas)
        return None


def family_parser(name: str, tokenizer) -> CallParser:
    """Calls in the model family's own format, read by vLLM's tool parser `name`."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    parser_class = ToolParserManager.get_tool_parser(name)

    def parse(text: str, tools: Tools) -> tuple[str, list[calls.ToolCall]] | None:
        offered = [recall_tool(), *({"type": "function", "function": f} for f in tools.offered)]
        request = ChatCompletionRequest(model="paged-context", messages=[{"role": "user", "content": ""}], tools=offered)
        result = parser_class(tokenizer, request.tools).extract_tool_calls(text, request)  # parsers keep state: one per text
        if not result.tools_called:
            return None
        return result.content or "", [calls.ToolCall(c.function.name, c.function.arguments, c.id) for c in result.tool_calls]

    return parse
