"""The OpenAPI description of the paging routes (`serve/openapi.py`): it follows the
paging options' definitions, and both apps serve it at /openapi.json; on vLLM's app it
sits beside vLLM's own routes. (tests/test_http_fuzz.py holds it against a live server.)"""

import dataclasses
import re
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from paged_context import keywords
from paged_context.pages import boundary
from paged_context.policy_registry import ONLINE
from paged_context.serve import openapi
from paged_context.serve.main import install_routes
from paged_context.serve.routes import PagingState, install_error_handlers
from paged_context.session import _INT_RANGES, PagingConfig

OURS = {"/v1/chat/completions", "/paging/sessions", "/paging/sessions/{session_id}", "/paging/sessions/{session_id}/pages/{page_id}/pin"}


def state(window: int = 1024, keys: frozenset = frozenset()) -> PagingState:
    engine = SimpleNamespace(window=window)
    return PagingState(engine, None, ["tiny", "tiny-2"], keys, 1 << 20, 16, 1.1)


def paging_options() -> dict:
    return openapi.describe(["tiny"], 1024, False)["components"]["schemas"]["PagingOptions"]


def test_paging_options_are_described_as_the_config_checks_them():
    properties = paging_options()["properties"]
    assert set(properties) == {f.name for f in dataclasses.fields(PagingConfig)}
    for field in dataclasses.fields(PagingConfig):
        assert properties[field.name]["default"] == field.default
        if field.type == "int":
            low, high = _INT_RANGES.get(field.name, (0, 1000))
            assert properties[field.name]["maximum"] == high and properties[field.name]["minimum"] in (low, 1)
    assert properties["keywords"]["enum"] == list(keywords.names()) and properties["policy"]["enum"] == list(ONLINE)  # a session refuses the offline ones


def test_a_strategy_registered_after_import_is_offered(monkeypatch):
    monkeypatch.setattr(keywords, "_REGISTRY", dict(keywords._REGISTRY))
    keywords.register("late-plugin")(lambda n=3: None)
    assert "late-plugin" in paging_options()["properties"]["keywords"]["enum"]


@pytest.mark.parametrize(
    "strategy", ["fixed_10", "exchange_2", "tokens_512", "tokens_007", "topic_shift", "topic_shift_0.2", "topic_shift_3", "session",
                 "topic_shift_.5", "fixed_999999999", "tokens_0", "tokens_000", "fixed_1234567890", "fixed_", "topic_shift_1.", "topic_shift_1.2.3",
                 "session\n", "fixed_\u0663", " session", "Tokens_5"],
)
def test_the_boundary_pattern_takes_what_the_pager_takes(strategy):
    try:
        boundary(strategy)
        taken = True
    except ValueError:
        taken = False
    assert bool(re.fullmatch(openapi.BOUNDARY.removeprefix("^").removesuffix("$"), strategy)) == taken  # $ as ECMA-262 reads it


def test_the_description_has_the_servers_numbers():
    described = openapi.describe(["tiny", "tiny-2"], 4096, True)
    request = described["components"]["schemas"]["PagedChatRequest"]["properties"]
    assert request["model"]["enum"] == ["tiny", "tiny-2", None]
    assert request["max_tokens"]["maximum"] == request["max_completion_tokens"]["maximum"] == 2048
    assert all(op["security"] == [{"PagingKey": []}] for path in described["paths"].values() for op in path.values())
    assert "security" not in openapi.describe(["tiny"], 4096, False)["paths"]["/paging/sessions"]["get"]


def test_the_hf_app_serves_it_and_answers_errors_in_the_error_shape():
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {}

    install_routes(app, state())
    install_error_handlers(app)
    client = TestClient(app)
    described = client.get("/openapi.json").json()
    assert set(described["paths"]) == OURS | {"/health"}
    assert described["paths"]["/v1/chat/completions"]["post"]["operationId"] == "paged_chat_completions"
    for method, path, status in (("GET", "/nowhere", 404), ("PATCH", "/paging/sessions/s1", 405), ("POST", "/paging/sessions/s1/pages/x/pin", 400)):
        response = client.request(method, path)
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert set(client.request("PATCH", "/paging/sessions/s1").headers["allow"].split(", ")) == {"GET", "DELETE"}


@pytest.mark.slow
def test_on_vllms_app_ours_sit_beside_vllms_own():
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.app import build_app

    from paged_context.serve.main import build_parser

    app = build_app(build_parser().parse_args(["--model", "unused"]), ("generate",), None)
    theirs = app.openapi()
    app.openapi_schema = None
    install_routes(app, state())
    described = TestClient(app).get("/openapi.json").json()
    assert OURS <= set(described["paths"]) and "/v1/completions" in described["paths"]  # vLLM's stay
    assert described["paths"]["/v1/chat/completions"]["post"]["operationId"] == "paged_chat_completions"
    ours = openapi.describe(["tiny"], 1024, False)["components"]["schemas"]
    assert not set(ours) & set(theirs["components"]["schemas"])  # no name of vLLM's is taken over
    kept = set(described["components"]["schemas"]) - set(ours)  # (those only vLLM's chat route used went with it)
    assert kept and all(described["components"]["schemas"][name] == theirs["components"]["schemas"][name] for name in kept)
    schemathesis = pytest.importorskip("schemathesis")
    assert schemathesis.openapi.from_dict(described)["/v1/chat/completions"]["POST"]  # a description schemathesis reads
