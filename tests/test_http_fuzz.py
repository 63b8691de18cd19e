"""The HTTP surface under fuzzing: schemathesis against a real server's /openapi.json
(`--engine hf`, the tiny random model, a few tokens per answer), bounded and seeded, plus
hand-written hostile bodies. Whatever comes in: no 5xx, every 4xx in OpenAI's error
shape with a message, no request left hanging, and the schema and the handlers agree
(a request the schema rejects is refused; one it accepts is answered, unless it breaks a
rule the schema cannot state: `serve.openapi.SEMANTIC`)."""

import http.client
import json
import urllib.request

import pytest

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis's
pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.transport import STREAM_CUT_SHORT_ATTRIBUTE  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from serving import Server  # noqa: E402

from paged_context.serve.openapi import SEMANTIC  # noqa: E402

LIMIT = 256 << 10  # --max-request-bytes
ANSWER_TOKENS = 4  # what a fuzzed request may generate, at most, per round
TIMEOUT = 90  # seconds per request: a tiny model on a busy CPU answers in a few
FLAGS = [
    "--served-model-name", "tiny", "--page-tokens", "32", "--resident", "1", "2", "--default-max-tokens", str(ANSWER_TOKENS),
    "--max-request-bytes", str(LIMIT),
]


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with Server(tiny, tmp_path_factory.mktemp("fuzz") / "pages.db", engine="hf", options=FLAGS) as server:
        # sessions with pages, for the session API's examples (one of them to delete)
        for session in ("fuzz", "fuzz-doomed"):
            for i in range(4):
                body = {"messages": [{"role": "user", "content": f"Turn {i}: the Lisbon trip budget, the tram, the river walk."}]}
                assert server.post("/v1/chat/completions", json.dumps(body).encode(), {"X-Session-Id": session})[0] == 200
        assert server.get("/paging/sessions/fuzz")["pages"]
        yield server


def described(server) -> dict:
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def api(server):
    raw = described(server)
    # examples that reach a session with pages (the fuzzer's ids name none)
    for path, operations in raw["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "session_id":
                    parameter["example"] = "fuzz-doomed" if method == "delete" and "pages" not in path else "fuzz"
                elif parameter["name"] == "page_id":
                    parameter["example"] = 1
    config = schemathesis.Config()
    config.update(seed=19, max_failures=None)
    schema = schemathesis.openapi.from_dict(raw, config=config)
    schema.config.update(base_url=server.url, request_timeout=TIMEOUT)
    schema.config.max_stream_events = 1 << 16  # read a stream to its end (schemathesis stops after 20 events by default)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=40, allow_x00=False, database="none", deterministic=True,
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    return schema


schema = schemathesis.pytest.from_fixture("api")


@pytest.fixture(autouse=True)
def _node_id(request):
    """schemathesis 4.32's lazy schemas read and rename `node._nodeid`, which pytest 9
    keeps elsewhere: give them one (it only names the failing operation in reports)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def longest(server) -> int:
    """The largest max_tokens the server takes (half its window)."""
    return described(server)["components"]["schemas"]["PagedChatRequest"]["properties"]["max_tokens"]["maximum"]


def steer(case, longest: int) -> bool:
    """Keep a fuzzed chat request quick (a few tokens), and let most reach the checks
    after the messages' and the model: random messages almost never make a conversation
    (its last message a user's, every tool result answering a call), so three in four
    get one. Whether a steered body fits the schema is asked again; True when steered."""
    body = case.body
    if case.operation.path != "/v1/chat/completions" or not isinstance(body, dict):
        return False
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        # valid stays valid; 411.0 is an integer to JSON Schema, and to the server
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and ANSWER_TOKENS < value <= longest:
            body[name] = 1 + int(value) % ANSWER_TOKENS
    messages = body.get("messages")
    if not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages) and len(json.dumps(body)) % 4):
        return True
    kept = [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages if m.get("role") != "tool"]
    body["messages"] = [*kept, {"role": "user", "content": f"Question {len(json.dumps(body))}: what next?"}]
    tools = body.get("tools")
    if isinstance(tools, list):  # one tool of each name
        named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
        if len(named) == len(tools):
            body["tools"] = list({t["function"]["name"]: t for t in named}.values())
    names = [t["function"].get("name") for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str):
        choice["function"]["name"] = names[0] if names else choice["function"]["name"]
        if not names:
            body["tool_choice"] = "none"
    elif choice in ("auto", "required") and not names:
        body["tool_choice"] = "none"
    return True


def error_shape(response) -> None:
    """A 4xx is OpenAI's error object, with a message."""
    payload = response.json()
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert isinstance(error.get("message"), str) and error["message"].strip() and "type" in error and "code" in error, payload


def stream_is_whole(text: str, cut_short: bool = False) -> None:
    """Server-sent events, each a JSON chunk (no server error among them), then [DONE];
    `cut_short`: the client stopped reading at its deadline, so the end is not the server's."""
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events and (cut_short or events[-1] == "[DONE]"), text[-500:]
    for event in events[:-1] if events[-1] == "[DONE]" else events:
        chunk = json.loads(event)
        if "error" in chunk:
            assert chunk["error"]["code"] < 500 and chunk["error"]["message"], chunk


@pytest.fixture(scope="module")
def chat_request(server):
    """A validator for chat completion bodies: whether a steered body still fits."""
    return jsonschema_rs.Draft202012Validator({"$ref": "#/components/schemas/PagedChatRequest", "components": described(server)["components"]})


@schema.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), print_blob=True)
def test_the_http_surface_under_fuzzing(case, longest, chat_request):
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if steer(case, longest):  # the body changed: whether it fits the schema is asked again
        fits = chat_request.is_valid(case.body)
    else:
        fits = case.meta.generation.mode is GenerationMode.POSITIVE
        checks.append(negative_data_rejection)
    response = case.call(timeout=TIMEOUT)  # a hang fails here (requests' ReadTimeout)
    assert response.status_code < 500, response.text[:2000]
    if 400 <= response.status_code < 500:
        error_shape(response)
        message = response.json()["error"]["message"]
        if fits and response.status_code == 400:
            assert any(reason in message for reason in SEMANTIC), f"a request the schema allows was refused: {message}"
    elif not fits:
        assert case.operation.path != "/v1/chat/completions", f"a chat request the schema refuses was answered: {case.body!r:.2000}"
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        stream_is_whole(response.text, getattr(response, STREAM_CUT_SHORT_ATTRIBUTE, False))
    case.validate_response(response, checks=checks)


def test_the_schema_is_the_servers(server):
    """Our routes, with the server's own numbers, beside /health and /v1/models."""
    raw = described(server)
    assert {"/v1/chat/completions", "/paging/sessions", "/paging/sessions/{session_id}", "/paging/sessions/{session_id}/pages/{page_id}/pin"} <= set(raw["paths"])
    request = raw["components"]["schemas"]["PagedChatRequest"]["properties"]
    assert request["max_tokens"]["maximum"] == 2048 and request["model"]["enum"] == ["tiny", None]  # the tiny model's window: 4,096
    assert set(raw["paths"]["/paging/sessions/{session_id}"]) == {"get", "delete"}


HI = b'{"messages": [{"role": "user", "content": "%s"}], "max_tokens": 2}'


def limit_sized(text: bytes = b"word ") -> bytes:
    """A request exactly --max-request-bytes long: one long user message."""
    room = LIMIT - len(HI % b"")
    return HI % (text * (room // len(text)) + b"x" * (room % len(text)))


HOSTILE = [
    # (name, body, content type, statuses, a fragment of the error message)
    ("nested arrays", b"[" * 5000 + b"]" * 5000, "application/json", {400}, "nests JSON too deeply"),
    ("nested objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "application/json", {400}, "JSON"),
    ("nested in a field", b'{"messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * 3000 + b"]" * 3000 + b"}", "application/json", {400}, "nests JSON too deeply"),
    ("a message of the whole limit", limit_sized(), "application/json", {200}, ""),
    ("one byte over the limit", limit_sized() + b" ", "application/json", {413}, "over"),
    ("invalid UTF-8", HI % b"caf\xc3\x28 \xff\xfe", "application/json", {400}, "not valid JSON"),
    ("UTF-16", (HI % b"utf sixteen").decode().encode("utf-16"), "application/json", {400}, "not valid JSON"),
    ("a byte order mark", b"\xef\xbb\xbf" + HI % b"bom", "application/json", {400}, "not valid JSON"),
    ("a raw NUL byte", HI % b"nul \x00 byte", "application/json", {400}, "not valid JSON"),
    ("an escaped NUL", HI % b"nul \\u0000 escaped", "application/json", {400}, "NUL"),
    ("a NUL in a key", b'{"messages": [{"role": "user", "content": "k", "\\u0000": 1}]}', "application/json", {400}, "NUL"),
    ("an unpaired surrogate", HI % b"half \\ud800 a pair", "application/json", {400}, "surrogate"),
    ("a pair of surrogates", HI % b"an emoji \\ud83d\\ude00", "application/json", {200}, ""),
    ("an escaped backslash before u0000", HI % b"a path C:\\\\u0000", "application/json", {200}, ""),
    ("1e309", b'{"messages": [{"role": "user", "content": "big"}], "temperature": 1e309}', "application/json", {400}, "temperature"),
    ("NaN", b'{"messages": [{"role": "user", "content": "nan"}], "top_p": NaN}', "application/json", {400}, "top_p"),
    ("-Infinity", b'{"messages": [{"role": "user", "content": "inf"}], "seed": -Infinity}', "application/json", {400}, "seed"),
    ("5,000 digits", b'{"messages": [{"role": "user", "content": "n"}], "n": ' + b"1" * 5000 + b"}", "application/json", {400}, "digits"),
    ("a huge logit bias", b'{"messages": [{"role": "user", "content": "lb"}], "logit_bias": {"1": 1' + b"0" * 400 + b"}}", "application/json", {400}, "logit_bias"),
    ("a token id past the vocabulary", b'{"messages": [{"role": "user", "content": "lb"}], "logit_bias": {"999999": 1}}', "application/json", {400}, "below"),
    ("an integral float", b'{"messages": [{"role": "user", "content": "float"}], "max_tokens": 2.0}', "application/json", {200}, ""),
    ("text/plain", HI % b"plain text", "text/plain", {200}, ""),  # the body is JSON whatever its Content-Type says
    ("a form", b"messages=hi&model=tiny", "application/x-www-form-urlencoded", {400}, "not valid JSON"),
    ("no content type", HI % b"untyped", None, {200}, ""),
    ("empty", b"", "application/json", {400}, "not valid JSON"),
    ("null", b"null", "application/json", {400}, "JSON object"),
    ("stream_options a string", b'{"messages": [{"role": "user", "content": "so"}], "stream": true, "stream_options": "yes"}', "application/json", {400}, "stream_options"),
    ("tool_choice's function a string", b'{"messages": [{"role": "user", "content": "tc"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": "f"}}', "application/json", {400}, "tool_choice"),
    ("a tool_call_id list", b'{"messages": [{"role": "user", "content": "t"}, {"role": "tool", "tool_call_id": [1], "content": "r"}]}', "application/json", {400}, "tool_call_id"),
    ("tool_calls false", b'{"messages": [{"role": "assistant", "content": "a", "tool_calls": false}, {"role": "user", "content": "u"}]}', "application/json", {400}, "tool_calls"),
    ("a forced call with a broken schema", b'{"messages": [{"role": "user", "content": "fc"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"}', "application/json", {400}, "JSON schema"),
    ("paged_context false", b'{"messages": [{"role": "user", "content": "pc"}], "paged_context": false}', "application/json", {400}, "paged_context"),
    ("a boundary with a newline", b'{"messages": [{"role": "user", "content": "b"}], "paged_context": {"paging": {"boundary": "session\\n"}}}', "application/json", {400}, "segmentation"),
    ("a user id with a newline", b'{"messages": [{"role": "user", "content": "u"}], "user": "abc\\n"}', "application/json", {400}, "session id"),
]


def send(server, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict, dict]:
    """One request with exactly these headers: status, JSON payload, headers."""
    connection = http.client.HTTPConnection("127.0.0.1", server.launched.port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


@pytest.mark.parametrize("name, body, content_type, statuses, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_get_an_answer_or_a_4xx_with_a_message(server, name, body, content_type, statuses, message):
    status, payload, _ = send(server, "POST", "/v1/chat/completions", body, content_type)
    assert status in statuses, (status, payload)
    if status >= 400:
        assert message in payload["error"]["message"] and set(payload["error"]) == {"message", "type", "param", "code"}, payload


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/paging/sessions/" + "x" * 10_000, 404),
        ("GET", "/paging/sessions/a%00b", 404),
        ("GET", "/paging/sessions/..%2F..%2Fetc", 404),
        ("POST", "/paging/sessions/fuzz/pages/1e3/pin", 400),
        ("POST", "/paging/sessions/fuzz/pages/" + "9" * 40 + "/pin", 404),
        ("PATCH", "/paging/sessions/fuzz", 405),
        ("GET", "/v1/chat/completions", 405),
        ("GET", "/nowhere", 404),
    ],
)
def test_odd_paths_get_a_4xx_with_a_message(server, method, path, status):
    code, payload, headers = send(server, method, path)
    assert code == status and payload["error"]["message"], payload
    if status == 405:
        assert headers["allow"]
