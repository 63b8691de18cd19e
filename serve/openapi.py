"""The OpenAPI description of the paging server's own routes, served at `/openapi.json`.

Written once, as data: the handlers in `routes.py` keep their own checks (whose messages
say what to fix), and this describes what they accept, so neither rejects what the other
allows where JSON Schema can say it. What it cannot say is listed in `SEMANTIC`: a request
that fits the schema may still get a 400 for one of those reasons. Numbers that depend on
the server (the served model names, the largest `max_tokens` its window allows) are filled
in by `describe`.

On vLLM's app the description is merged into vLLM's own: its routes stay described, ours
replace its `/v1/chat/completions` (`install`). Our component names start with `Paged`
(or `Paging`), so none collides with vLLM's.
"""

from __future__ import annotations

import copy
import dataclasses

from paged_context import keywords
from paged_context.messages import MAX_TOOLS, ROLES
from paged_context.policy_registry import ONLINE as SESSION_POLICIES
from paged_context.session import _INT_RANGES, PagingConfig

SESSION_ID = "^[A-Za-z0-9._:@-]{1,128}$"  # sessions.SESSION_ID, as ECMA-262 reads it
BOUNDARY = "^((fixed|exchange|tokens)_(?!0+$)[0-9]{1,9}|topic_shift(_[0-9]*\\.?[0-9]+)?|session)$"  # pages._STRATEGY, N at least 1
INT64 = 1 << 63

# Reasons for a 400 that a request fitting the schema may still get: how its parts refer
# to each other, or to what the session already holds. Fragments of the handlers' messages.
SEMANTIC = (
    "the last message must come from the user",  # the last turn, after system messages and recall rounds
    "the last user message is empty",
    "tool result for no open tool call",  # tool_call_id names a call of the assistant message before
    "every tool call needs a tool message",
    "two calls with one id",
    "tool_choice names no tool of this request",
    "needs tools",  # tool_choice auto/required without tools
    "two tools are named",
    "logit_bias token ids must be below",  # the tokenizer's vocabulary
    "other paging options",  # an existing session keeps the options it was created with
    "need 1 <= ",  # resident_low <= resident_high, window_low <= window_high, the server's defaults counted
    "not a JSON schema the engine can follow",  # a forced call's parameters (xgrammar / vLLM's structured outputs)
    "strings in the request must not contain",  # NUL and unpaired surrogates
    "a session id is",  # `user` names the session only without X-Session-Id, and then has its pattern
)

_NULLABLE_NUMBER = {"type": ["number", "null"]}


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PagingError"}}}}


ERRORS = {
    "400": _error_response("A malformed request; `error.message` says what to fix"),
    "401": _error_response("The server has API keys and the request gave none of them (`Authorization: Bearer KEY`)"),
    "404": _error_response("No such model, or no such session (or page) for this API key"),
    "413": _error_response("The body is over `--max-request-bytes`"),
    "503": _error_response("The session is being answered by another replica (see `Retry-After`), or the store is unavailable"),
}


def _paging_options() -> dict:
    properties = {}
    for field in dataclasses.fields(PagingConfig):
        if field.type == "int":
            low, high = _INT_RANGES.get(field.name, (0, 1000))
            if field.name in ("resident_low", "resident_high", "window_low"):
                low = 1  # PagingConfig: 1 <= low <= high
            properties[field.name] = {"type": "integer", "minimum": low, "maximum": high}
        elif field.name == "boundary":
            properties[field.name] = {"type": "string", "pattern": BOUNDARY, "description": "fixed_N, exchange_N, tokens_N, topic_shift[_THRESHOLD] or session"}
        elif field.name == "keywords":
            properties[field.name] = {"type": "string", "enum": list(keywords.names())}
        elif field.name == "policy":
            properties[field.name] = {"type": "string", "enum": list(SESSION_POLICIES)}
        else:  # a string option added to PagingConfig: described loosely until it is here
            properties[field.name] = {"type": "string"}
        properties[field.name]["default"] = field.default
    return {
        "type": "object",
        "description": "Overrides of the server's paging options, for the request that creates a session (it keeps them)",
        "properties": properties,
        "additionalProperties": False,
    }


def _message(role: str, required: tuple[str, ...] = (), **extra) -> dict:
    content = {
        "anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {"$ref": "#/components/schemas/PagedTextPart"}}],
        "description": "a string, or text parts (joined with newlines)",
    }
    return {
        "type": "object",
        "required": ["role", *required],
        "properties": {"role": {"const": role}, "content": content, **extra},
        "additionalProperties": True,  # other fields (name, ...) are accepted and not used
    }


_SCHEMAS = {
    "PagingError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["integer", "string", "null"]},
                },
            }
        },
    },
    "PagedTextPart": {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    },
    "PagedToolCall": {
        "type": "object",
        "required": ["id", "function"],
        "properties": {
            "id": {"type": "string"},
            "type": {"description": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "arguments": {"description": "the arguments as a JSON string (any other JSON value is written as JSON)"}},
            },
        },
    },
    "PagedChatMessage": {
        "description": "A chat message: system and developer messages are instructions (not paged), the others turns",
        "anyOf": [
            _message("system"),
            _message("developer"),
            _message("user"),
            _message("assistant", tool_calls={"type": ["array", "null"], "items": {"$ref": "#/components/schemas/PagedToolCall"}}),
            _message("tool", ("tool_call_id",), tool_call_id={"type": "string", "description": "the id of a call in the assistant message before"}),
        ],
    },
    "PagedTool": {
        "type": "object",
        "required": ["type", "function"],
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "not": {"const": "recall"}, "description": "recall is the server's own tool"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object", "description": "a JSON schema"},
                },
            },
        },
    },
    "PagedToolChoice": {
        "anyOf": [
            {"type": "null"},
            {"enum": ["auto", "none", "required"]},
            {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                },
            },
        ]
    },
    "PagedContextOptions": {
        "type": "object",
        "description": "paged-context's extension of the request",
        "properties": {
            "paging": {"anyOf": [{"$ref": "#/components/schemas/PagingOptions"}, {"type": "null"}]},
            "expose_recall": {"type": "boolean", "default": False, "description": "recall calls go to the client as tool_calls"},
            "return_prompt": {"type": "boolean", "default": False, "description": "the response's paged_context block holds the prompt of the last round"},
        },
        "additionalProperties": False,
    },
    "PagedChatRequest": {
        "type": "object",
        "required": ["messages"],
        "description": "OpenAI's chat completion request, as far as the server follows it; other fields are accepted and not used",
        "properties": {
            "model": {"description": "a served model's name (default: the first)"},  # filled in by describe
            "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/PagedChatMessage"}},
            "tools": {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": {"$ref": "#/components/schemas/PagedTool"}},
            "tool_choice": {"$ref": "#/components/schemas/PagedToolChoice"},
            "parallel_tool_calls": {"type": ["boolean", "null"]},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1},  # maximum: describe
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "description": "max_tokens, when both are given"},
            "temperature": {**_NULLABLE_NUMBER, "minimum": 0, "maximum": 2, "default": 0},
            "top_p": {**_NULLABLE_NUMBER, "minimum": 1e-6, "maximum": 1, "default": 1},
            "seed": {"type": ["integer", "null"], "minimum": -INT64, "maximum": INT64 - 1},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
            "stream": {"type": ["boolean", "null"], "default": False},
            "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": ["boolean", "null"]}}},
            "logit_bias": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                "description": "token id -> amount added to its logit",
            },
            "repetition_penalty": {**_NULLABLE_NUMBER, "minimum": 0.5, "maximum": 2, "description": "default: the server's --default-repetition-penalty"},
            "user": {
                "type": ["string", "null"],
                "description": "names the session when there is no X-Session-Id: then 1-128 letters, digits and . _ : @ - (or empty: not used)",
            },
            "paged_context": {"anyOf": [{"$ref": "#/components/schemas/PagedContextOptions"}, {"type": "null"}]},
        },
        "additionalProperties": True,
    },
    "PagedContextReport": {
        "type": "object",
        "description": "What paging did for this request",
        "required": ["session", "pages", "resident", "evicted", "prompt_tokens", "history_tokens", "prompt_tokens_saved", "cached_prompt_tokens", "rounds"],
        "properties": {
            "session": {"type": "string"},
            "pages": {"type": "integer"},
            "resident": {"type": "array", "items": {"type": "integer"}},
            "pinned": {"type": "array", "items": {"type": "integer"}},
            "evicted": {"type": "array", "items": {"type": "integer"}},
            "evicted_now": {"type": "array", "items": {"type": "integer"}},
            "prefetched": {"type": "array", "items": {"type": "integer"}},
            "prefetched_in_part": {
                "type": "array",
                "description": "prefetched pages shown only in part (their turns that match the question best), to fit the window",
                "items": {
                    "type": "object",
                    "required": ["page", "first_turn", "last_turn"],
                    "properties": {"page": {"type": "integer"}, "first_turn": {"type": "integer"}, "last_turn": {"type": "integer"}},
                },
            },
            "recalled": {"type": "array", "items": {"type": "integer"}},
            "recall_errors": {"type": "integer"},
            "prompt_tokens": {"type": "integer"},
            "history_tokens": {"type": "integer"},
            "prompt_tokens_saved": {"type": "integer"},
            "cached_prompt_tokens": {"type": "integer"},
            "rounds": {"type": "integer"},
            "stored_answer": {"type": "boolean", "description": "the answer given before to this resent question; nothing generated"},
            "prompt": {"type": "array", "items": {"type": "object"}, "description": "with return_prompt"},
        },
    },
    "PagedChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage", "paged_context"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "tool_calls": {"type": "array", "items": {"$ref": "#/components/schemas/PagedToolCall"}},
                            },
                        },
                        "finish_reason": {"enum": ["stop", "length", "tool_calls"]},
                    },
                },
            },
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                    "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
                },
            },
            "paged_context": {"$ref": "#/components/schemas/PagedContextReport"},
        },
    },
    "PagedStreamEvent": {
        "type": "object",
        "description": "One server-sent event of a streamed answer",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "description": "a chat.completion.chunk as JSON (the last with finish_reason and the paged_context block; then usage, "
                "with stream_options.include_usage), or {\"error\": {...}} when the answer failed; then [DONE]",
            }
        },
    },
    "PagedSessionList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "string"}, "description": "session ids of this API key"}},
    },
    "PagedSession": {
        "type": "object",
        "required": ["id", "turns", "paging", "pages"],
        "properties": {
            "id": {"type": "string"},
            "turns": {"type": "integer"},
            "paging": {"type": "object", "description": "the session's paging options (PagingOptions, all of them)"},
            "pages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "bookmark", "resident", "pinned", "first_turn", "last_turn", "tokens"],
                    "properties": {
                        "id": {"type": "integer"},
                        "bookmark": {"type": "string"},
                        "resident": {"type": "boolean"},
                        "pinned": {"type": "boolean"},
                        "first_turn": {"type": "integer"},
                        "last_turn": {"type": "integer"},
                        "tokens": {"type": "integer"},
                    },
                },
            },
        },
    },
    "PagedSessionDeleted": {"type": "object", "required": ["id", "deleted"], "properties": {"id": {"type": "string"}, "deleted": {"const": True}}},
    "PagedPin": {
        "type": "object",
        "required": ["session", "page", "pinned"],
        "properties": {"session": {"type": "string"}, "page": {"type": "integer"}, "pinned": {"type": "boolean"}},
    },
}


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _errors(*codes: str) -> dict:
    return {code: ERRORS[code] for code in codes}


SESSION = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": SESSION_ID}}
PAGE = {"name": "page_id", "in": "path", "required": True, "schema": {"type": "integer"}}
SESSION_HEADER = {
    "name": "X-Session-Id", "in": "header", "required": False, "schema": {"type": "string", "pattern": SESSION_ID},
    "description": "the session; without it, the `user` field, else a hash of the opening messages",
}
TAGS = ["paged-context"]

_PATHS = {
    "/v1/chat/completions": {
        "post": {
            "tags": TAGS,
            "summary": "Chat completion, paged",
            "description": "OpenAI's chat completions, answered in a paged session. The body is read as JSON whatever its Content-Type.",
            "operationId": "paged_chat_completions",
            "parameters": [SESSION_HEADER],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PagedChatRequest"}}}},
            "responses": {
                "200": {
                    "description": "The answer; with `stream`, server-sent events (chat.completion.chunk, the paged_context block in the last one, then `[DONE]`)",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/PagedChatCompletion"}},
                        "text/event-stream": {"schema": {"$ref": "#/components/schemas/PagedStreamEvent"}},
                    },
                },
                **_errors("400", "401", "404", "413", "503"),
            },
        }
    },
    "/paging/sessions": {
        "get": {
            "tags": TAGS, "summary": "The API key's sessions", "operationId": "paged_list_sessions",
            "responses": {"200": _ok("PagedSessionList", "Session ids"), **_errors("401", "503")},
        }
    },
    "/paging/sessions/{session_id}": {
        "get": {
            "tags": TAGS, "summary": "A session: its options, pages, bookmarks and residency (without waiting for an answer this replica is giving in it)",
            "operationId": "paged_get_session",
            "parameters": [SESSION],
            "responses": {"200": _ok("PagedSession", "The session"), **_errors("401", "404", "503")},
        },
        "delete": {
            "tags": TAGS, "summary": "Delete a session (and the engine's state for it)", "operationId": "paged_delete_session",
            "parameters": [SESSION],
            "responses": {"200": _ok("PagedSessionDeleted", "Deleted"), **_errors("401", "404", "503")},
        },
    },
    "/paging/sessions/{session_id}/pages/{page_id}/pin": {
        "post": {
            "tags": TAGS, "summary": "Pin a page: it stays in view whatever the policy evicts", "operationId": "paged_pin_page",
            "parameters": [SESSION, PAGE],
            "responses": {"200": _ok("PagedPin", "Pinned"), **_errors("400", "401", "404", "503")},
        },
        "delete": {
            "tags": TAGS, "summary": "Unpin a page", "operationId": "paged_unpin_page",
            "parameters": [SESSION, PAGE],
            "responses": {"200": _ok("PagedPin", "Unpinned"), **_errors("400", "401", "404", "503")},
        },
    },
}

SECURITY_SCHEME = {"PagingKey": {"type": "http", "scheme": "bearer", "description": "with --api-key: one of the server's keys"}}


def describe(models: list[str], window: int, api_keys: bool) -> dict:
    """Our paths and components for a server serving `models` with a `window`-token
    context; `api_keys`: whether the routes require a key."""
    paths, schemas = copy.deepcopy(_PATHS), copy.deepcopy(_SCHEMAS)
    schemas["PagingOptions"] = _paging_options()  # now: a keyword strategy may have been registered since import
    request = schemas["PagedChatRequest"]["properties"]
    request["model"] = {"enum": [*models, None], "description": "a served model (default: the first); another gets a 404"}
    for name in ("max_tokens", "max_completion_tokens"):
        request[name]["maximum"] = window // 2
    if api_keys:
        for operations in paths.values():
            for operation in operations.values():
                operation["security"] = [{"PagingKey": []}]
    return {"paths": paths, "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEME}}


def merge(base: dict, ours: dict) -> dict:
    """`base` (the app's own description) with our paths and components in; our paths
    replace any of the same name."""
    merged = {**base, "paths": {**base.get("paths", {}), **ours["paths"]}}
    components = dict(merged.get("components", {}))
    for kind, entries in ours["components"].items():
        components[kind] = {**components.get(kind, {}), **entries}
    merged["components"] = components
    return merged


def install(app, state) -> None:
    """`app.openapi()` (what `/openapi.json` serves) describes our routes beside the app's."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = merge(generate(), describe(state.model_names, state.engine.window, bool(state.api_keys)))
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi
