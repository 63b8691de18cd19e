"""The paging server's HTTP surface: `/v1/chat/completions` (streaming and not) with
paging, and the session API under `/paging/sessions`. Everything else (`/v1/models`,
`/health`, `/metrics`, ...) is vLLM's own, or, with `--engine hf`, the minimal set in
`hf_app`.

Errors use OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`; the
routes are described in `openapi.py` (served at `/openapi.json`)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Histogram

from paged_context.answering import Answering, Reply, Sampling, drive
from paged_context.calls import RECALL
from paged_context.messages import BadRequest, Exchange, Tools, parse_tools, split_messages
from paged_context.pages import Turn
from paged_context.session import Request as PagingRequest
from paged_context.store import SessionBusy, StoreUnavailable

from .sessions import SESSION_ID, Forbidden, SessionRegistry, TooLarge, answered, session_id_for

router = APIRouter(include_in_schema=False)  # described in openapi.py
log = logging.getLogger(__name__)
FLAGS = ("expose_recall", "return_prompt")  # the request's paged_context switches

PAGES_EVICTED = Counter("paged_context_pages_evicted", "Pages evicted by the controller")
PAGES_PREFETCHED = Counter("paged_context_pages_prefetched", "Evicted pages brought back by prefetch")
RECALLS = Counter("paged_context_recall_calls", "Recall calls served (errors included)")
RECALL_ERRORS = Counter("paged_context_recall_errors", "Recall calls answered with a tool error")
PAGES_RECALLED = Counter("paged_context_pages_recalled", "Pages brought back by recall calls")
TOKENS_SAVED = Counter("paged_context_prompt_tokens_saved", "Prompt tokens saved against sending the whole history")
PROMPT_TOKENS = Counter("paged_context_prompt_tokens", "Prompt tokens sent to the engine (last round of each request)")
CACHED_TOKENS = Counter("paged_context_cached_prompt_tokens", "Prompt tokens served from the prefix/KV cache")
TURN_SECONDS = Histogram("paged_context_request_seconds", "Time to answer a paged request")


@dataclass
class PagingState:
    engine: object  # VLLMEngine or AsyncHFEngine (paged_context.answering.Engine)
    sessions: SessionRegistry
    model_names: list[str]
    api_keys: frozenset[str]
    max_request_bytes: int
    default_max_tokens: int
    default_repetition_penalty: float
    max_rounds: int = 2  # recall rounds per request


def error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status)


def unauthorized() -> JSONResponse:
    return error(401, "a valid API key is required (Authorization: Bearer KEY)", "AuthenticationError")


def owner_of(raw: Request, state: PagingState) -> str | None:
    """The hashed API key that scopes sessions (None when the server has no keys)."""
    if not state.api_keys:
        return None
    header = raw.headers.get("authorization", "")
    key = header[7:] if header.lower().startswith("bearer ") else None
    if key not in state.api_keys:
        raise PermissionError
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def install_error_handlers(app) -> None:
    """Errors raised outside our handlers (an unknown path, a wrong method, a path
    parameter FastAPI checks, a bug) in the same JSON shape: for `--engine hf`'s app
    (vLLM's app has its own handlers, in this shape too)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(raw: Request, e: HTTPException):
        response = error(e.status_code, str(e.detail) or "error", "NotFoundError" if e.status_code == 404 else "BadRequestError")
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(raw: Request, e: RequestValidationError):
        return error(400, "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in e.errors()[:5]) or "invalid request")

    @app.exception_handler(Exception)
    async def crashed(raw: Request, e: Exception):
        log.error("%s %s failed", raw.method, raw.url.path, exc_info=e)
        return error(500, f"internal error: {type(e).__name__}", "InternalServerError")


def _number(body: dict, name: str, default, low, high, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if integer and isinstance(value, float) and value.is_integer() and low <= value <= high:
        value = int(value)  # 16.0 is the integer 16 in JSON
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise BadRequest(f"{name} must be {'an integer' if integer else 'a number'} between {low} and {high}, got {value!r}")
    return value


def parse_logit_bias(bias, vocab: int) -> dict[int, float] | None:
    """OpenAI's logit_bias: token ids (as strings, JSON's keys) -> amounts in [-100, 100]."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise BadRequest("logit_bias must map token ids to numbers")
    out = {}
    for token, value in bias.items():
        if not (token.isascii() and token.isdigit()) or isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise BadRequest(f"logit_bias must map token ids to numbers between -100 and 100, got {token[:40]!r}: {str(value)[:40]}")
        if len(token) > 9 or int(token) >= vocab:
            raise BadRequest(f"logit_bias token ids must be below {vocab} (the tokenizer's vocabulary), got {token[:40]}")
        out[int(token)] = float(value)
    return out or None


def parse_sampling(body: dict, default_max_tokens: int, default_repetition_penalty: float, vocab: int, window: int) -> Sampling:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest("n must be 1")
    # max_completion_tokens is OpenAI's newer name; both are checked, it wins when both are given
    longest = default_max_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        asked = _number(body, name, None, 1, 1 << 20, integer=True)
        longest = longest if asked is None else asked
        if asked is not None and asked > window // 2:
            raise BadRequest(f"{name}={asked} leaves too little of the model's window ({window} tokens) for the conversation; at most {window // 2}")
    if longest > window // 2:  # the server's --default-max-tokens
        raise BadRequest(f"max_tokens={longest} leaves too little of the model's window ({window} tokens) for the conversation; at most {window // 2}")
    return Sampling(
        max_tokens=longest,
        temperature=float(_number(body, "temperature", 0.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 1e-6, 1.0)),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True),
        logit_bias=parse_logit_bias(body.get("logit_bias"), vocab),
        repetition_penalty=float(_number(body, "repetition_penalty", default_repetition_penalty, 0.5, 2.0)),
    )


async def read_body(raw: Request, state: PagingState) -> dict:
    size = raw.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > state.max_request_bytes:
        raise TooLarge(f"request body over {state.max_request_bytes} bytes")
    data = await raw.body()
    if len(data) > state.max_request_bytes:
        raise TooLarge(f"request body over {state.max_request_bytes} bytes")
    try:
        text = data.decode()  # JSON is UTF-8 (RFC 8259); json.loads would guess UTF-16 or 32 too
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # thousands of nested arrays: Python's parser gives up
        raise BadRequest("the request body nests JSON too deeply") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if ESCAPES.search(text) and _bad_string(body):
        raise BadRequest("strings in the request must not contain NUL characters (\\u0000) or unpaired surrogates (\\ud800-\\udfff): they cannot be stored")
    return body


ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # how JSON writes what `_bad_string` looks for
BAD_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def _bad_string(value) -> bool:
    """Whether a NUL or an unpaired surrogate is in a string of `value` (a key, too):
    PostgreSQL's text has no NUL, UTF-8 no surrogates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if BAD_CHARACTERS.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@router.post("/v1/chat/completions")
async def chat_completions(raw: Request):
    state: PagingState = raw.app.state.paging
    try:
        owner = owner_of(raw, state)
        body = await read_body(raw, state)
        model = body.get("model")
        if model is not None and model not in state.model_names:
            return error(404, f"The model `{model}` does not exist; this server serves {', '.join(state.model_names)}", "NotFoundError")
        exchange = split_messages(body.get("messages"))
        tools = parse_tools(body)
        sampling = parse_sampling(body, state.default_max_tokens, state.default_repetition_penalty, len(state.engine.template.tokenizer), state.engine.window)
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise BadRequest("user must be a string")
        session_id = session_id_for(raw.headers.get("x-session-id"), user, exchange, owner)
        stream = body.get("stream")
        if not isinstance(stream, (bool, type(None))):
            raise BadRequest("stream must be true or false")
        stream_options = body.get("stream_options")
        if stream_options is None:
            stream_options = {}
        if not isinstance(stream_options, dict) or not isinstance(stream_options.get("include_usage"), (bool, type(None))):
            raise BadRequest("stream_options must be an object, its include_usage true or false")
        include_usage = bool(stream and stream_options.get("include_usage"))
        options = body.get("paged_context")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise BadRequest("paged_context must be an object")
        unknown = sorted(set(options) - {*FLAGS, "paging"})
        if unknown:
            raise BadRequest(f"unknown paged_context field(s) {', '.join(unknown)}; known: {', '.join(FLAGS)}, paging")
        for flag in FLAGS:
            if not isinstance(options.get(flag, False), bool):
                raise BadRequest(f"paged_context.{flag} must be true or false")
    except BadRequest as e:
        return error(e.status, str(e), "RequestTooLarge" if e.status == 413 else "BadRequestError")
    except PermissionError:
        return unauthorized()
    name = model or state.model_names[0]
    job = Job(state, session_id, owner, options.get("paging"), exchange, sampling, tools, options.get("expose_recall", False))

    def block(reply) -> dict:
        """The response's paged_context block (with the prompt, when asked for)."""
        shown = {**{k: v for k, v in reply.paging.items() if k != "kv"}, "cached_prompt_tokens": reply.usage["cached_tokens"], "rounds": reply.usage["rounds"]}
        if options.get("return_prompt"):
            shown["prompt"] = state.engine.template.chat(reply.rendered, tools)
        return shown

    if stream:
        # the stream begins once the request is planned (its turns stored): a session
        # that is busy or not the caller's is answered with an HTTP error, not a stream
        queue: asyncio.Queue = asyncio.Queue()
        planned = asyncio.get_running_loop().create_future()
        work = asyncio.create_task(_answer(job, queue.put_nowait, planned))
        work.add_done_callback(lambda _: queue.put_nowait(None))
        await asyncio.wait([planned, work], return_when=asyncio.FIRST_COMPLETED)
        if not planned.done() and (refused := _refusal(work.exception(), state)) is not None:
            return refused
        return StreamingResponse(_stream(work, queue, block, name, include_usage), media_type="text/event-stream")
    try:
        reply = await _answer(job)
    except (BadRequest, Forbidden, SessionBusy, StoreUnavailable) as e:
        return _refusal(e, state)
    return JSONResponse(_completion(reply, block, name))


@dataclass(frozen=True)
class Job:
    """A chat request, checked, to answer in its session."""

    state: PagingState
    session_id: str
    owner: str | None
    paging: dict | None  # paging options for a new session
    exchange: Exchange
    sampling: Sampling
    tools: Tools
    expose: bool  # recall calls go to the client


def _refusal(e: BaseException | None, state: PagingState) -> JSONResponse | None:
    """The HTTP error for what stopped a request before it was planned (None: not ours)."""
    if isinstance(e, (SessionBusy, StoreUnavailable)):  # the answer was not stored: a retry asks again
        retry = max(1, math.ceil(state.sessions.wait))
        busy = f"session {e.session_id!r} is being answered by another replica" if isinstance(e, SessionBusy) else str(e)
        response = error(503, f"{busy}; retry in {retry} s", "ServiceUnavailableError")
        response.headers["Retry-After"] = str(retry)
        return response
    if isinstance(e, Forbidden):
        return error(404, f"no session {e.args[0]!r} for this API key", "NotFoundError")
    if isinstance(e, BadRequest):
        return error(400, str(e))
    return None


async def _answer(job: Job, on_text=None, planned: asyncio.Future | None = None):
    """Answer the request in its session, held for the whole turn (plan, generate, store
    the answer). `planned` is set once the request's turns are stored."""
    state = job.state
    async with state.sessions.writing(job.session_id, job.owner, options=job.paging) as held:
        session = held.session
        request = await held.run(_plan, state.sessions, session, job.exchange, state.engine.template.syntax)  # stored before anything can fail
        if planned is not None:
            planned.set_result(None)
        if isinstance(request, Turn):  # answered already: the client did not hear it
            if on_text is not None and request.text:
                on_text(request.text)
            return _stored(session, request)
        started = time.perf_counter()
        answering = Answering(session, request, state.engine.template, state.engine.window, job.sampling, job.tools, state.max_rounds, job.expose)
        reply = await drive(state.engine, answering, on_text, held.run)
        if any(call.name == RECALL for call in reply.tool_calls):
            state.sessions.pending[session.id] = request  # answered when the client hands the call back
        TURN_SECONDS.observe(time.perf_counter() - started)
        _count(reply)
        return reply


def _plan(sessions: SessionRegistry, session, exchange: Exchange, syntax) -> PagingRequest | Turn:
    """Store what is new and plan the request; or the stored answer, when the request
    resends the history up to a question already answered."""
    stored = answered(session, exchange)
    return stored if stored is not None else sessions.request_for(session, exchange, syntax)


def _stored(session, answer: Turn) -> Reply:
    """The reply for an answer given before: nothing generated, nothing stored."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "rounds": 0}
    paging = {**session.report(PagingRequest("", (), ()), 0, 0), "stored_answer": True}
    return Reply(answer.text, paging, usage, [], tuple(answer.tool_calls), "tool_calls" if answer.tool_calls else "stop")


def _count(reply) -> None:
    paging, usage = reply.paging, reply.usage
    PAGES_EVICTED.inc(len(paging["evicted_now"]))
    PAGES_PREFETCHED.inc(len(paging["prefetched"]))
    PAGES_RECALLED.inc(len(paging["recalled"]))
    RECALLS.inc(max(usage.get("rounds", 1) - 1, 0))
    RECALL_ERRORS.inc(paging["recall_errors"])
    TOKENS_SAVED.inc(paging["prompt_tokens_saved"])
    PROMPT_TOKENS.inc(usage["prompt_tokens"])
    CACHED_TOKENS.inc(usage["cached_tokens"])


def _usage(reply) -> dict:
    u = reply.usage
    return {
        "prompt_tokens": u["prompt_tokens"],
        "completion_tokens": u["completion_tokens"],
        "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
    }


def _message(reply) -> dict:
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.text}
    return {"role": "assistant", "content": reply.text or None, "tool_calls": [call.to_openai() for call in reply.tool_calls]}


def _completion(reply, block, model: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": _message(reply), "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": _usage(reply),
        "paged_context": block(reply),
    }


async def _stream(work: asyncio.Task, queue: asyncio.Queue, block, model: str, include_usage: bool):
    """The answer `work` writes to `queue` (None: done), as server-sent events."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None else []
        return "data: " + json.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices, **extra}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        while (text := await queue.get()) is not None:
            if text:
                yield chunk({"content": text})
        reply = work.result()
    except BadRequest as e:
        yield _error_event(400, str(e), "BadRequestError")
        return
    except StoreUnavailable as e:  # the answer was not stored: a retry asks again
        yield _error_event(503, str(e), "ServiceUnavailableError")
        return
    except Exception as e:  # noqa: BLE001 (the engine failed mid-answer: the stream ends with an error, not a broken connection)
        log.error("a streamed answer failed", exc_info=e)
        yield _error_event(500, f"internal error: {type(e).__name__}", "InternalServerError")
        return
    finally:
        if not work.done():  # the client went away: finish the turn anyway, it is stored
            await asyncio.shield(work)
    if reply.tool_calls:
        calls = [{"index": i, **call.to_openai()} for i, call in enumerate(reply.tool_calls)]
        yield chunk({"tool_calls": calls}, "tool_calls", paged_context=block(reply))
    else:
        yield chunk({}, reply.finish_reason, paged_context=block(reply))
    if include_usage:
        yield chunk(None, usage=_usage(reply))
    yield "data: [DONE]\n\n"


def _error_event(status: int, message: str, kind: str) -> str:
    return "data: " + json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}) + "\n\ndata: [DONE]\n\n"


# --- session API ---------------------------------------------------------------------


def _session_view(session) -> dict:
    return {
        "id": session.id,
        "turns": len(session.turns),
        "paging": dataclasses.asdict(session.config),
        "pages": [
            {
                "id": page_id,
                "bookmark": session.bookmarks[page_id].render(),
                "resident": page_id in session.resident,
                "pinned": page_id in session.pinned,
                "first_turn": page.first_turn,
                "last_turn": page.last_turn,
                "tokens": page.tokens,
            }
            for page_id, page in sorted(session.pages.items())
        ],
    }


@router.get("/paging/sessions")
async def list_sessions(raw: Request):
    state: PagingState = raw.app.state.paging
    try:
        owner = owner_of(raw, state)
        return {"object": "list", "data": await asyncio.to_thread(state.sessions.list, owner)}
    except PermissionError:
        return unauthorized()
    except StoreUnavailable as e:
        return _refusal(e, state)


async def _on_session(raw: Request, session_id: str, action, reads: bool = False):
    """Run `action(registry, session)` on a session held for it, in the request's worker
    thread (opening a session writes its pages), with the API key check. An action that
    `reads` only does not wait for an answer being given in the session (`SessionRegistry.read`)."""
    state: PagingState = raw.app.state.paging
    try:
        owner = owner_of(raw, state)
        if not SESSION_ID.fullmatch(session_id):  # no such session can exist: the store is not asked
            raise Forbidden(session_id)
        if reads:
            return await state.sessions.read(session_id, owner, lambda session: action(state.sessions, session))
        async with state.sessions.writing(session_id, owner, create=False) as held:
            return await held.run(action, state.sessions, held.session)
    except PermissionError:
        return unauthorized()
    except (Forbidden, SessionBusy, StoreUnavailable) as e:
        return _refusal(e, state)
    except KeyError as missing:  # a page the session does not have
        return error(404, missing.args[0], "NotFoundError")


# one route per path, so that a 405 lists in `Allow` every method the path has
@router.api_route("/paging/sessions/{session_id}", methods=["GET", "DELETE"])
async def session_route(session_id: str, raw: Request):
    return await (get_session if raw.method == "GET" else delete_session)(session_id, raw)


@router.api_route("/paging/sessions/{session_id}/pages/{page_id}/pin", methods=["POST", "DELETE"])
async def pin_route(session_id: str, page_id: int, raw: Request):
    return await (pin_page if raw.method == "POST" else unpin_page)(session_id, page_id, raw)


async def get_session(session_id: str, raw: Request):
    return await _on_session(raw, session_id, lambda sessions, session: _session_view(session), reads=True)


async def delete_session(session_id: str, raw: Request):
    def delete(sessions, session):
        sessions.drop(session.id, session.owner)
        return {"id": session_id, "deleted": True}

    done = await _on_session(raw, session_id, delete)
    forget = raw.app.state.paging.sessions.forget
    if isinstance(done, dict) and forget is not None:
        forget(session_id)  # the engine's state lives on the event loop
    return done


async def pin_page(session_id: str, page_id: int, raw: Request):
    return await _on_session(raw, session_id, lambda sessions, session: _pin(session, page_id, True))


async def unpin_page(session_id: str, page_id: int, raw: Request):
    return await _on_session(raw, session_id, lambda sessions, session: _pin(session, page_id, False))


def _pin(session, page_id: int, pinned: bool) -> dict:
    session.pin(page_id, pinned)  # KeyError for an unknown page: 404
    return {"session": session.id, "page": page_id, "pinned": pinned}
