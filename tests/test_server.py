"""The paging server over real HTTP with the real openai client: on vLLM (CPU build) and
on the transformers engine, with a tiny random Llama whose window we set to 1,024 tokens
so a conversation outgrows it in seconds. Mechanics are asserted, not the tiny model's
words. The real default model is served in test_real_model.py."""

import contextlib
import json
import signal
import sqlite3
import threading
import time
import urllib.request

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

from serving import TINY, WINDOW, Server  # noqa: E402

FACT = "Please remember this: my locker code at the Riverside gym is 4417."


def filler(i: int) -> str:
    return f"Message {i}: today I repotted the basil, walked the dog past the river, and read about Lisbon trams and budgets for a while."


def chat(client, session, text, model="tiny", **options):
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], extra_headers={"X-Session-Id": session}, **options)
    return response, response.model_extra["paged_context"]


@pytest.fixture(scope="module")
def call_bias(tiny):
    """A logit bias that makes the tiny model open a recall call (it would not on its
    own); the server's logits processor then has to keep the call valid."""
    from transformers import AutoTokenizer

    (start,) = AutoTokenizer.from_pretrained(tiny).encode("recall(", add_special_tokens=False)
    return {str(start): 30}


@pytest.fixture(scope="module")
def vllm_server(tiny, tmp_path_factory):
    with Server(tiny, tmp_path_factory.mktemp("serve") / "pages.db") as server:
        yield server


def test_a_conversation_past_the_window_pages_recalls_and_stays_inside_it(vllm_server, call_bias):
    client = vllm_server.client()
    chat(client, "long", FACT)
    reports = [chat(client, "long", filler(i)) for i in range(24)]
    response, paging = chat(client, "long", "What is my locker code at the Riverside gym?", logit_bias=call_bias)
    assert paging["history_tokens"] > WINDOW  # the unpaged conversation no longer fits
    assert response.usage.prompt_tokens < WINDOW and paging["evicted"]
    assert paging["prompt_tokens_saved"] > 0
    view = vllm_server.get("/paging/sessions/long")
    assert view["turns"] == 52 and any(not p["resident"] for p in view["pages"])
    assert paging["recalled"] and paging["rounds"] == 3 and paging["recall_errors"] == 0  # served, twice
    # recalled pages were evicted when asked for, and are resident again now (as many as fit)
    assert not set(paging["recalled"]) & set(reports[-1][1]["resident"])
    resident = {page["id"] for page in view["pages"] if page["resident"]}
    assert set(paging["recalled"]) <= resident or resident <= set(paging["recalled"])
    assert "recall(" not in (response.choices[0].message.content or "")
    assert sum(r.usage.prompt_tokens_details.cached_tokens for r, _ in reports) > 0  # vLLM's prefix cache hits
    metrics = urllib.request.urlopen(vllm_server.url + "/metrics").read().decode()
    assert "paged_context_pages_evicted_total" in metrics and "paged_context_prompt_tokens_saved_total" in metrics


def test_recall_calls_can_go_to_the_client_and_come_back(vllm_server, call_bias):
    client = vllm_server.client()
    session = {"X-Session-Id": "exposed"}
    for i in range(12):
        _, paging = chat(client, "exposed", filler(i))
    evicted = paging["evicted"]
    assert evicted
    question = [{"role": "user", "content": "Which tram did I read about?"}]
    exposed = client.chat.completions.create(
        model="tiny", messages=question, logit_bias=call_bias, extra_headers=session, extra_body={"paged_context": {"expose_recall": True}}
    )
    choice = exposed.choices[0]
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "recall"
    assert set(json.loads(call.function.arguments)["page_ids"]) <= set(exposed.model_extra["paged_context"]["evicted"])
    assert vllm_server.get("/paging/sessions/exposed")["turns"] == 25  # the question is stored, unanswered
    back = question + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": ""},
    ]
    answered = client.chat.completions.create(model="tiny", messages=back, extra_headers=session)
    paging = answered.model_extra["paged_context"]
    assert answered.choices[0].finish_reason in ("stop", "length")  # an answer (the tiny model may run to max_tokens)
    assert set(paging["recalled"]) >= set(json.loads(call.function.arguments)["page_ids"])
    assert vllm_server.get("/paging/sessions/exposed")["turns"] == 26
    # a call the client writes itself is served the same way; a bad one becomes a tool error
    page = paging["evicted"][0]
    for arguments in (json.dumps({"page_ids": [page]}), '{"page_ids": ["p1", '):
        scripted = [
            {"role": "user", "content": "Look at that page again."},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "recall", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
        ]
        report = client.chat.completions.create(model="tiny", messages=scripted, extra_headers=session).model_extra["paged_context"]
        if arguments.endswith(", "):
            assert report["recall_errors"] == 1
        else:  # brought back by the call, even when the controller prefetched it too
            assert page in report["recalled"] and page not in report["prefetched"] and report["recall_errors"] == 0


def test_streaming_sends_the_answer_and_the_paging_block(vllm_server):
    client = vllm_server.client()
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": filler(99)}], stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Session-Id": "streamed"},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason in ("stop", "length")]
    assert len(finals) == 1 and finals[0].model_extra["paged_context"]["session"] == "streamed"
    assert chunks[-1].usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    view = vllm_server.get("/paging/sessions/streamed")
    assert view["turns"] == 2
    assert "recall(" not in streamed


def test_a_stateless_client_resending_history_is_one_session(vllm_server):
    client = vllm_server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My dog is called Biscuit."}]
    first = client.chat.completions.create(model="tiny", messages=messages)
    session = first.model_extra["paged_context"]["session"]
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "What is my dog called?"}]
    second = client.chat.completions.create(model="tiny", messages=messages)
    assert second.model_extra["paged_context"]["session"] == session
    # the next answer comes streamed, and the client resends it as it pieced it together
    chunks = list(client.chat.completions.create(model="tiny", messages=messages + [{"role": "assistant", "content": second.choices[0].message.content}, {"role": "user", "content": "Thanks!"}], stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    messages += [{"role": "assistant", "content": second.choices[0].message.content}, {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": streamed}, {"role": "user", "content": "Bye."}]
    client.chat.completions.create(model="tiny", messages=messages)
    assert vllm_server.get(f"/paging/sessions/{session}")["turns"] == 8  # nothing stored twice


# closed choices, so a random model's forced call ends within a few tokens
READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a file", "parameters": {"type": "object", "properties": {"path": {"type": "string", "enum": ["notes.txt", "todo.txt"]}}, "required": ["path"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the notes", "parameters": {"type": "object", "properties": {"query": {"type": "string", "enum": ["Lisbon", "budget"]}}, "required": ["query"]}}}


@pytest.fixture(scope="module")
def no_whitespace(tiny):
    """A logit bias against whitespace tokens: JSON allows any amount of it, and a random
    model would write nothing else."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    return {str(i): -100 for i in range(len(tok)) if not tok.decode([i]).strip()}


def file_dump(step: int) -> str:
    """A tool result of ~700 tokens: bigger than a page here, most of the window."""
    return "\n".join(f"notes/{step}.txt line {i}: the Lisbon trip budget entry {step * 100 + i} was checked" for i in range(40))


def test_an_agent_with_its_own_tools_runs_past_the_window(vllm_server, no_whitespace):
    """OpenAI function calling through the paging server: a call the model makes (forced
    with tool_choice; vLLM's structured outputs keep its arguments valid), results the
    client sends back as tool messages, parallel calls, streaming, and a trace whose
    tool results outgrow the window many times over while every prompt fits."""
    client = vllm_server.client()
    headers = {"X-Session-Id": "agent"}
    messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Find the Lisbon budget in my notes."}]
    forced = client.chat.completions.create(
        model="tiny", messages=messages, tools=[READ_FILE, SEARCH], tool_choice={"type": "function", "function": {"name": "read_file"}},
        max_tokens=48, logit_bias=no_whitespace, extra_headers=headers,
    )
    choice = forced.choices[0]
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "read_file", call
    assert isinstance(json.loads(call.function.arguments), dict), call.function.arguments
    messages += [choice.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": file_dump(0)}]
    prompts = []
    for step in range(1, 9):  # the client's own scripted calls, two at a time, with large results
        response = client.chat.completions.create(model="tiny", messages=messages, tools=[READ_FILE, SEARCH], max_tokens=8, extra_headers=headers)
        reply = response.choices[0].message
        prompts.append(response.usage.prompt_tokens)
        messages.append(reply.model_dump(exclude_none=True))
        for made in reply.tool_calls or []:  # a call the model made on its own gets a result too
            messages.append({"role": "tool", "tool_call_id": made.id, "content": "no such file"})
        calls = [{"id": f"s{step}-{k}", "type": "function", "function": {"name": "read_file", "arguments": json.dumps({"path": f"notes/{step}-{k}.txt"})}} for k in (1, 2)]
        messages += [{"role": "assistant", "content": None, "tool_calls": calls}] + [{"role": "tool", "tool_call_id": c["id"], "content": file_dump(step)} for c in calls]
    response = client.chat.completions.create(
        model="tiny", messages=messages, tools=[READ_FILE, SEARCH], max_tokens=4, extra_headers=headers, extra_body={"paged_context": {"return_prompt": True}},
    )
    shown = response.model_extra["paged_context"]["prompt"]
    assert shown[-1]["role"] == "tool" and shown[-1]["content"].endswith(file_dump(8)[-200:]) and "read_file(" in shown[0]["content"]  # tools described for a plain template
    messages += [response.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "Look up the budget."}]
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, tools=[READ_FILE, SEARCH], tool_choice="required", stream=True, max_tokens=48,
        logit_bias=no_whitespace, extra_headers=headers,
    ))
    streamed = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[-1].choices[0].finish_reason == "tool_calls" and streamed and streamed[0].function.name in ("read_file", "search")
    assert json.loads(streamed[0].function.arguments)
    paging = finals[-1].model_extra["paged_context"]
    assert paging["history_tokens"] > 4 * WINDOW and paging["evicted"] and max(prompts) < WINDOW
    view = vllm_server.get("/paging/sessions/agent")
    assert view["turns"] == len(messages) - 1 + 1  # every turn the client sent (not the system message), and the streamed call
    single = [p["first_turn"] for p in view["pages"] if p["first_turn"] == p["last_turn"]]
    assert len(single) > len(set(single))  # a tool result paged in parts: pages within one turn


def test_the_clients_tools_are_checked(vllm_server):
    client = vllm_server.client()
    import openai

    with pytest.raises(openai.BadRequestError, match="server's own tool"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "recall"}}])
    with pytest.raises(openai.BadRequestError, match="unanswered"):
        calls = [{"id": "a", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": calls}, {"role": "user", "content": "well?"}])


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, 400, "nests JSON too deeply"),
        (b"[]", 400, "JSON object"),
        (b'{"model": "tiny"}', 400, "messages"),
        (b'{"messages": []}', 400, "empty"),
        (b'{"messages": [{"role": "assistant", "content": "hi"}]}', 400, "last message"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}', 400, "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}', 400, "window"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400, "text content"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}', 404, "does not exist"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "../../etc"}', 400, "session id"),
        (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": ""}]}', 400, "tool_call_id"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "paged_context": {"expose_recall": "yes"}}', 400, "expose_recall"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "paged_context": {"pageing": {}}}', 400, "unknown paged_context field"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "paged_context": {"paging": {"policy": "oracle"}}}', 400, "unknown policy"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "paged_context": {"paging": {"resident_high": -1}}}', 400, "between 0 and 1000"),
        # found by fuzzing (tests/test_http_fuzz.py): these were 500s
        (b'{"messages": [{"role": "user", "content": "so"}], "stream": true, "stream_options": "yes"}', 400, "stream_options"),
        (b'{"messages": [{"role": "user", "content": "lb"}], "logit_bias": {"99999999": 1}}', 400, "vocabulary"),
        (b'{"messages": [{"role": "user", "content": "lb"}], "logit_bias": {"1": 1' + b"0" * 400 + b"}}", 400, "logit_bias"),
        (b'{"messages": [{"role": "user", "content": "half \\ud800"}]}', 400, "surrogates"),
        (b'{"messages": [{"role": "user", "content": "fc"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"}', 400, "JSON schema"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(vllm_server, body, status, message):
    code, payload = vllm_server.post("/v1/chat/completions", body)
    assert code == status and message in payload["error"]["message"]


def test_a_session_keeps_the_paging_options_it_was_created_with(vllm_server):
    client = vllm_server.client()
    options = {"policy": "fifo", "boundary": "fixed_4", "resident_low": 1, "resident_high": 1, "prefetch_budget": 0, "keywords": "tfidf"}
    for i in range(10):
        chat(client, "optioned", filler(i), extra_body={"paged_context": {"paging": options}})
    view = vllm_server.get("/paging/sessions/optioned")
    assert {k: view["paging"][k] for k in options} == options
    assert len(view["pages"]) >= 3 and sum(p["resident"] for p in view["pages"]) == 1
    code, payload = vllm_server.post(
        "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "paged_context": {"paging": {**options, "policy": "lru"}}}).encode(),
        {"X-Session-Id": "optioned"},
    )
    assert code == 400 and "other paging options" in payload["error"]["message"]


def test_llm_keywords_ask_the_served_model(vllm_server):
    def finished():
        text = urllib.request.urlopen(vllm_server.url + "/metrics").read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))

    before = finished()
    options = {"keywords": "llm-batch", "boundary": "fixed_2", "resident_low": 1, "resident_high": 1, "prefetch_budget": 0, "policy": "lru"}
    for i in range(8):
        chat(vllm_server.client(), "llm-keywords", filler(i), max_tokens=4, extra_body={"paged_context": {"paging": options}})
    view = vllm_server.get("/paging/sessions/llm-keywords")
    assert len(view["pages"]) >= 4 and all(p["bookmark"].startswith(f"[p{p['id']}:") and len(p["bookmark"]) > 6 for p in view["pages"])
    assert finished() - before > 8  # the 8 turns, and keyword requests to the same engine


def test_bench_locomo_runs_every_method_against_the_server(vllm_server, tmp_path):
    from locomo_sample import write

    from paged_context.bench import locomo
    from paged_context.cli import parser

    out = tmp_path / "run"
    argv = [
        "bench", "locomo", "--endpoint", vllm_server.url + "/v1", "--model", "tiny", "--data", write(tmp_path / "locomo.json"),
        "--limit", "6", "--window", str(WINDOW), "--context-tokens", "150", "--max-tokens", "8", "--resident", "1", "--concurrency", "2",
        "--out", str(out),
    ]
    result = locomo.main(parser().parse_args(argv))
    assert list(result["methods"]) == list(locomo.METHODS) and result["questions"] == 6
    for method, summary in result["methods"].items():
        assert summary["n"] == 6 and summary["errors"] == 0, method
        assert 0 < summary["prompt_tokens"] < WINDOW and 0 <= summary["f1"] <= 1
        assert 0 <= summary["cached_tokens"] < summary["prompt_tokens"]
    assert result["methods"]["controller"]["evidence_any"] >= result["methods"]["bookmark_recall"]["evidence_any"]  # prefetch adds, never removes
    records = [json.loads(line) for line in (out / "locomo.jsonl").read_text().splitlines()]
    assert len(records) == 1 + 7 * 6 and (out / "locomo_scores.png").stat().st_size and (out / "locomo_tokens.png").stat().st_size
    assert not vllm_server.get("/paging/sessions")["data"] or all(not s.startswith(("locomo-", "once-")) for s in vllm_server.get("/paging/sessions")["data"])
    # resumed: no question is asked again; the judge pass adds one verdict per answer
    again = locomo.main(parser().parse_args(argv + ["--judge"]))
    records = [json.loads(line) for line in (out / "locomo.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "answer" for r in records) == 7 * 6 and sum(r["type"] == "judge" for r in records) == 7 * 6
    assert all(r["verdict"] in (0, 1, None) for r in records if r["type"] == "judge")
    assert again["methods"]["bm25"]["f1"] == result["methods"]["bm25"]["f1"]


def stored_turns(db) -> list[tuple[str, str]]:
    """What the SQLite file holds, read beside the server (WAL allows it)."""
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT role, text FROM turns WHERE session_id = 'durable' ORDER BY idx").fetchall()


def test_kill_9_mid_conversation_loses_no_stored_turn(tiny, tmp_path):
    db = tmp_path / "pages.db"
    with Server(tiny, db) as server:
        client = server.client()
        for i in range(6):
            chat(client, "durable", filler(i))
        # kill -9 while the next request is being answered: its question is stored first
        def ask_and_lose_the_connection():
            with contextlib.suppress(Exception):  # the server dies under it
                chat(client, "durable", "a long answer, please", max_tokens=500)

        in_flight = threading.Thread(target=ask_and_lose_the_connection)
        in_flight.start()
        deadline = time.monotonic() + 60
        while len(stored_turns(db)) < 13 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = stored_turns(db)
        server.stop(signal.SIGKILL)
        in_flight.join(60)
    assert len(before) >= 13 and before[12] == ("user", "a long answer, please")
    with Server(tiny, db) as server:
        after = server.get("/paging/sessions/durable")
        assert stored_turns(db)[: len(before)] == before and after["turns"] >= len(before)
        _, paging = chat(server.client(), "durable", "and one more thing")
        assert server.get("/paging/sessions/durable")["turns"] == after["turns"] + 2 and paging["pages"] >= 1
        # pinning over the session API
        assert server.post("/paging/sessions/durable/pages/1/pin", b"") == (200, {"session": "durable", "page": 1, "pinned": True})
        assert server.get("/paging/sessions/durable")["pages"][0]["pinned"]
        _, paging = chat(server.client(), "durable", "pinned now?")
        assert paging["pinned"] == [1] and 1 not in paging["evicted"]
        code, payload = server.post("/paging/sessions/durable/pages/999/pin", b"")
        assert code == 404 and "no page 999" in payload["error"]["message"]


def test_api_keys_guard_the_server_and_scope_sessions(tiny, tmp_path):
    import openai

    with Server(tiny, tmp_path / "pages.db", engine="hf", extra=["--api-key", "alice-key", "bob-key", "--max-request-bytes", "4096"]) as server:
        with pytest.raises(openai.AuthenticationError):
            chat(server.client("wrong"), "s", "hello")
        chat(server.client("alice-key"), "alice-notes", "my secret is 12")
        assert server.get("/paging/sessions", key="alice-key")["data"] == ["alice-notes"]
        assert server.get("/paging/sessions", key="bob-key")["data"] == []
        with pytest.raises(openai.NotFoundError):
            chat(server.client("bob-key"), "alice-notes", "what is the secret?")
        status, payload = server.post("/v1/chat/completions", b"x" * 5000, {"Authorization": "Bearer bob-key"})
        assert status == 413 and "over" in payload["error"]["message"]
        # hybrid keywords on the transformers engine: heuristic ones, plus what the model adds
        options = {"keywords": "hybrid", "boundary": "fixed_2", "resident_low": 1, "resident_high": 1, "prefetch_budget": 0}
        for i in range(6):
            chat(server.client("bob-key"), "bob-hybrid", f"Lisbon trip {i} with Marta", max_tokens=4, extra_body={"paged_context": {"paging": options}})
        view = server.get("/paging/sessions/bob-hybrid", key="bob-key")
        assert len(view["pages"]) >= 2 and all("Lisbon" in p["bookmark"] for p in view["pages"])


def test_bench_serve_runs_both_servers(tiny, tmp_path):
    from paged_context.cli import main

    flags = "--max-model-len 1024 --dtype float32 --kv-cache-memory-bytes 268435456 --gpu-memory-utilization 0.2"
    assert main(["bench", "serve", "--model", str(tiny), "--turns", "3", "--sentences", "2", "--max-tokens", "8", "--engine-flags", flags, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serve.json").read_text())
    assert [r["turn"] for r in result["paged"]] == [1, 2, 3] == [r["turn"] for r in result["unpaged"]]
    assert all(r["prompt_tokens"] > 0 and r["ttft_s"] > 0 for r in result["paged"] + result["unpaged"])
    assert all(r["computed_tokens"] == r["prompt_tokens"] - r["cached_tokens"] for r in result["paged"] + result["unpaged"])
    assert result["summary"]["turns_both_answered"] == 3 and result["summary"]["fits_ttft_ratio"] > 0
    assert (tmp_path / "serve.png").stat().st_size > 0


def test_bench_agent_runs_both_servers(tiny, tmp_path):
    """A short script whose history passes the tiny window on its third step or so: the
    paging server answers every step inside the window, stock vLLM refuses from the step
    the history outgrows it."""
    from paged_context.cli import main

    flags = "--max-model-len 1024 --dtype float32 --kv-cache-memory-bytes 268435456 --gpu-memory-utilization 0.2"
    assert main([
        "bench", "agent", "--model", str(tiny), "--tool-calls", "12", "--asks", "2", "--result-tokens", "1200", "--max-tokens", "8",
        "--answer-tokens", "8", "--engine-flags", flags, "--paging-flags", "--page-tokens 128 --resident 1 2", "--out", str(tmp_path),
    ]) == 0
    result = json.loads((tmp_path / "agent.json").read_text())
    paged, unpaged = result["paged"]["rows"], result["unpaged"]["rows"]
    assert result["window"] == WINDOW and [r["step"] for r in paged] == list(range(1, result["steps"] + 1)) == [r["step"] for r in unpaged]
    assert all("error" not in r and 0 < r["prompt_tokens"] <= WINDOW for r in paged)
    assert paged[-1]["history_tokens"] > 3 * WINDOW and paged[-1]["evicted"]
    first = next(r["step"] for r in unpaged if "error" in r)
    assert 1 < first < len(unpaged) and all(r["error"].startswith("HTTP 400") for r in unpaged[first - 1 :])
    assert all(r["prompt_tokens"] <= WINDOW for r in unpaged[: first - 1]) and paged[first - 1]["history_tokens"] > WINDOW - 8
    asks = [r for r in paged if "ask" in r]
    assert len(asks) == 2 and all(isinstance(r["fact_in_prompt"], bool) and isinstance(r["answer_has_fact"], bool) for r in asks)
    assert all(r["fact_in_prompt"] == (r["fact_source"] is not None) for r in asks)
    assert all(r["fact_in_prompt"] is False for r in unpaged if "ask" in r)  # refused: nothing was sent
    acceptance = result["acceptance"]
    assert acceptance["paged_completes_every_step"] and acceptance["unpaged_fails_past_window"] and acceptance["unpaged_first_refused_step"] == first
    assert result["paged"]["summary"]["completed"] == len(paged) and result["unpaged"]["summary"]["errors"] == len(unpaged) - first + 1
    assert (tmp_path / "agent.png").stat().st_size > 0
