"""`lnmt-serve MODEL [MODEL ...] [--host 127.0.0.1] [--port 8000] [--api-key-file FILE] [--allowed-hosts ...]
[limits ...]`: an HTTP translation server, and a page at `/` that translates what is typed and draws each sentence's
attention. `lnmt-serve --help` lists every option and its default.

MODEL is a checkpoint (`TorchBackend`; several: an ensemble) or an exported CTranslate2 directory
(`lightning_nmt.ct2.CTranslate2Model`). Endpoints (the OpenNMT-py / Eole shape; `GET /openapi.json` is the schema):

    POST /translate  {"src": ["...", ...], "beam_size": 5, "nbest": 1, "attention": false}
                     and any decoding key ("strategy": "sampling", "top_p": 0.9, "seed": 1, "no_repeat_ngram_size": 3,
                     ...); length limits and max_input_len are the server's. Content-Type: application/json.
                  -> {"translations": [[{"tgt": "...", "score": -1.23}, ...nbest], ...one list per src line]}
                     with "attention": true each hypothesis also has "attention" ([output piece][source piece], rounded
                     to 4 decimals; null for a model without attention), "src_pieces" and "tgt_pieces" (their labels:
                     `</s>` included on both sides); a line longer than the model's max_input_len has a "note" (it was
                     translated in segments). An empty line gets one empty translation, score 0.
    GET /health   -> {"status": "ok"}            (also HEAD, as every GET route)
    GET /models   -> the model: name, type, backend, decoding defaults, limits
    GET /metrics  -> Prometheus text: responses by route and status, latency, batch sizes, queue, sentences, pieces
    GET /stats    -> the same counts as JSON: requests, sentences, batches, ...
    GET /         -> the page (lightning_nmt/static: plain HTML + JS, nothing fetched from elsewhere)

Any request a client can send gets a 4xx `{"error": "one line"}` when it is wrong: 400 (malformed JSON, UTF-8 or
Unicode, a value out of range, a Host not allowed), 401 (no or a wrong API key), 404, 405, 408 (headers or body too
slow), 413 (too many sentences, pieces, bytes, or an answer that could pass --max-response-bytes), 415 (not JSON),
422 (a wrong type or an unknown field, named), 431 (headers too large). A 503 with `Retry-After` comes at the
connection cap and during shutdown; a 500 only for a fault of the server, logged once with the request id it carries.

Concurrent requests are batched: their sentences wait in one queue, and a single worker task, when the model can
take a call (one at a time for a checkpoint, one per CTranslate2 worker for an exported model), takes the oldest
sentence's group (its request's decoding settings), waits up to --max-wait-ms for more of it (less when the model was
busy: the wait counts from the oldest sentence's arrival) up to --max-batch-tokens padded source pieces, and runs the
model on them in a thread; each request gets its own results back in its order. On SIGTERM (or Ctrl-C) the server
stops accepting connections, answers the requests in flight, cuts what is still running at --shutdown-timeout, and
exits with status 0.

Built on FastAPI + uvicorn (with the connection layer of `lightning_nmt.connections`) rather than LitServe: the
batching is a plain asyncio queue in the server's own event loop and the model runs in threads of the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lightning_nmt.backend_api import Backend
from lightning_nmt.backends import load_backend
from lightning_nmt.batcher import Batcher, TranslationFailed
from lightning_nmt.connections import PARSERS, ConnectionLimits, protocol
from lightning_nmt.errors import UserError
from lightning_nmt.search import SEARCHES, DecodingConfig
from lightning_nmt.search.schema import flat_decoding_keys

log = logging.getLogger("lightning_nmt.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 4 << 20
"""Largest request body read (413 beyond): ample for --max-request-tokens pieces of text."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of a request's JSON (400 beyond): a request is two levels deep."""
PIECE_BYTES = 100
"""A piece in the answer at most, JSON-escaped (the worst-case bound of --max-response-bytes)."""
WEIGHT_BYTES = 8
"""An attention weight in the answer, rounded to 4 decimals, with its separator."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "LNMT_API_KEY"


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class Settings:
    """Decoding defaults, limits and access (the command line's): a request's decoding settings default to the
    model's with `beam_size`."""

    beam_size: int = 5
    max_beam_size: int = 16  # beam_size and nbest of a request, every strategy
    max_batch_tokens: int = 4096
    max_wait_ms: float = 10.0
    max_sentences: int = 64
    max_request_tokens: int = 4096
    max_response_bytes: int = 8 << 20
    body_timeout: float = 30.0  # seconds to receive a request's body, from its headers
    header_timeout: float = 10.0  # seconds to receive a request's headers (`lightning_nmt.connections`)
    keep_alive_timeout: float = 5.0  # an idle kept-alive connection is closed after it
    max_header_bytes: int = 16 << 10
    max_connections: int = 256
    http_parser: str = "auto"  # httptools when installed, else h11 (`lightning_nmt.connections`)
    shutdown_timeout: float = 10.0  # after SIGTERM, what still runs is cut after it
    api_key: str | None = None  # POST /translate and GET /stats need `Authorization: Bearer <key>`
    metrics_auth: bool = False  # GET /metrics needs it too
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_NAMES))  # ["*"]: any
    cors_origins: list[str] = field(default_factory=list)

    def limits(self) -> dict[str, Any]:
        """The limits a client meets, as `/models` shows them."""
        return {"max_beam_size": self.max_beam_size, "max_sentences": self.max_sentences,
                "max_request_tokens": self.max_request_tokens, "max_body_bytes": MAX_BODY_BYTES,
                "max_response_bytes": self.max_response_bytes, "max_batch_tokens": self.max_batch_tokens,
                "max_wait_ms": self.max_wait_ms, "body_timeout_s": self.body_timeout,
                "header_timeout_s": self.header_timeout, "keep_alive_timeout_s": self.keep_alive_timeout,
                "max_header_bytes": self.max_header_bytes, "max_connections": self.max_connections,
                "shutdown_timeout_s": self.shutdown_timeout}


SERVER_KEYS = ("max_len_ratio", "max_len_offset", "min_len_ratio", "max_input_len", "val_beam_size")
"""Decoding keys a request may not set: the length limits are the server's."""


# ---- the request and the answer, as the OpenAPI schema says them ----------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _request_model() -> type[BaseModel]:
    """POST /translate: `src`, `attention`, and every decoding key of a registered strategy but the server's length
    limits (`SERVER_KEYS`); null or absent: the server's default. The schema states the bounds a value can have in
    any case; the server's own limits (`/models`) and the rules between keys are checked after it (400)."""
    strategies: Any = Literal[tuple(SEARCHES)]  # type: ignore[valid-type]
    bounds = {"beam_size": {"ge": 1}, "nbest": {"ge": 1}, "temperature": {"gt": 0}, "top_k": {"ge": 0},
              "top_p": {"gt": 0, "le": 1}, "epsilon": {"ge": 0, "lt": 1}, "no_repeat_ngram_size": {"ge": 0},
              "repetition_penalty": {"gt": 0}, "seed": {"ge": 0, "lt": 2**63}}
    fields: dict[str, Any] = {"src": (list[str], Field(min_length=1)), "attention": (bool, False)}
    for name, kind, _ in flat_decoding_keys():
        if name in SERVER_KEYS:
            continue
        enum = next((arg for arg in get_args(kind) if isinstance(arg, type) and issubclass(arg, Enum)), None)
        if name == "strategy":
            kind = Optional[strategies]  # noqa: UP045
        elif enum is not None:  # by value, inline in the schema
            kind = Optional[Literal[tuple(member.value for member in enum)]]  # type: ignore[valid-type]  # noqa: UP045
        fields[name] = (kind, Field(None, **bounds.get(name, {}), allow_inf_nan=False) if "float" in str(kind)
                        else Field(None, **bounds.get(name, {})))
    return create_model("TranslateRequest", __base__=_Request, **fields)


TranslateRequest = _request_model()


class Hyp(BaseModel):
    tgt: str
    score: float
    attention: Optional[list[list[float]]] = None  # noqa: UP045
    src_pieces: Optional[list[str]] = None  # noqa: UP045
    tgt_pieces: Optional[list[str]] = None  # noqa: UP045
    note: Optional[str] = None  # noqa: UP045


class TranslateResponse(BaseModel):
    translations: list[list[Hyp]]


class ErrorBody(BaseModel):
    error: str
    request_id: Optional[str] = None  # noqa: UP045 (a 500's, as in the log)


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "malformed request, value out of range, Host not allowed"), (401, "no or a wrong API key"),
    (408, "headers or body not received in time"), (413, "too large: sentences, pieces, bytes or the answer"),
    (415, "not application/json"), (422, "a wrong type or an unknown field"),
    (500, "a fault of the server (with its request id)"), (503, "at the connection cap or shutting down"))}


def _field(loc: Sequence[Any]) -> str:
    """A pydantic error location -> `src[2]`."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "request body"


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_request(body: bytes) -> BaseModel:
    """A request body -> a `TranslateRequest`, or a `RequestError` (400/422) naming what is wrong: never another
    exception, whatever the bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {err.start})") from None
    if not text.strip():
        raise RequestError(400, 'empty request body: send a JSON object {"src": ["a sentence", ...]}')
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _bracket_depth(text) > MAX_JSON_DEPTH:
        raise RequestError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (ValueError, RecursionError) as err:  # a number beyond Python's digit limit, NaN, Infinity
        raise RequestError(400, f"malformed JSON: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f'request body must be a JSON object {{"src": [...]}}, got a JSON '
                                f"{_json_type(payload)}")
    try:
        request = TranslateRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        raise RequestError(422, f"{_field(first['loc'])}: {first['msg'][0].lower()}{first['msg'][1:]}") from None
    for i, line in enumerate(request.src):
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RequestError(400, f"src[{i}] is not valid Unicode: {err.reason} at character {err.start}") from None
    return request


def _bracket_depth(text: str) -> int:
    """Deepest nesting of brackets outside strings (before parsing: a deep document would exhaust the parser)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# ---- the application ---------------------------------------------------------------------------------------------

def create_app(backend: Backend, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving `backend` (wrapped by `Guard`: Host, API key, counts, faults)."""
    settings = settings or Settings()
    defaults = backend.decoding.with_overrides(beam_size=settings.beam_size)
    batcher = Batcher(backend, settings.max_batch_tokens, settings.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        batcher.start()
        log.info("serving %s (%s, %s backend): %s, beam_size=%d, max_batch_tokens=%d, max_wait_ms=%g",
                 backend.name, backend.model_type, backend.backend, defaults.strategy, defaults.beam_size,
                 settings.max_batch_tokens, settings.max_wait_ms)
        yield
        await batcher.stop()  # uvicorn calls this once the requests in flight are answered
        log.info("stopped: %d requests, %d sentences in %d batches", _stats(batcher)["requests"],
                 _stats(batcher)["sentences"], _stats(batcher)["batches"])

    app = FastAPI(title="lightning-nmt", lifespan=lifespan, docs_url=None, redoc_url=None)  # their pages need a CDN
    app.state.batcher = batcher
    app.state.settings = settings

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error(422, f"{_field(first['loc'][1:])}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail).lower() if exc.detail else "error")

    @app.exception_handler(ClientDisconnect)
    async def _went_away(request: Request, exc: ClientDisconnect) -> Response:
        log.info("%s %s: the client went away before its request was read (request id %s)", request.method,
                 request.url.path, request.scope.get("state", {}).get("request_id", "-"))
        return Response(status_code=499)  # nginx's "client closed request": counted, never read

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "-")
        log.exception("internal error on %s %s (request id %s)", request.method, request.url.path, request_id)
        return JSONResponse({"error": f"internal error: {type(exc).__name__} (request id {request_id})",
                             "request_id": request_id}, status_code=500)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise RequestError(413, f"request body of {declared} bytes: at most {MAX_BODY_BYTES}")

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RequestError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            if sys.version_info >= (3, 11):  # a deadline on this task (wait_for makes a task per request: slower)
                async with asyncio.timeout(settings.body_timeout):
                    return await collect()
            return await asyncio.wait_for(collect(), settings.body_timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"request body not received within {settings.body_timeout:g} s",
                               {"connection": "close"}) from None

    @functools.lru_cache(maxsize=1024)
    def decoding_of(given: tuple[tuple[str, Any], ...]) -> DecodingConfig | tuple[int, str]:
        """The checked decoding settings of a request's keys (most requests repeat a few: cached), or its error."""
        try:
            return request_decoding(dict(given))
        except RequestError as err:
            return err.status, err.message

    def request_decoding(given: dict[str, Any]) -> DecodingConfig:
        """The request's decoding settings over the server's defaults, checked by the one check and the backend's:
        400 naming the key of a value out of range or options that contradict each other."""
        try:
            decoding = defaults.with_overrides(**given)
        except ValueError as err:
            raise RequestError(400, str(err).replace("decoding.", "")) from None
        for key in ("beam_size", "nbest"):
            if getattr(decoding, key) > settings.max_beam_size:
                raise RequestError(400, f"{key} must be between 1 and {settings.max_beam_size} (--max-beam-size), "
                                        f"got {getattr(decoding, key)}")
        try:
            backend.check(decoding)
        except UserError as err:
            raise RequestError(400, str(err)) from None
        return decoding

    def check_answer_size(pieces: list[int], decoding: DecodingConfig) -> None:
        """413 when the answer could pass --max-response-bytes: a bound from the request alone, before translating
        (each sentence's longest output, every piece at its longest, attention rows over its source pieces)."""
        longest = [math.ceil(n * decoding.max_len_ratio) + decoding.max_len_offset + 1 for n in pieces]  # >= ours
        per_hyp = [out * PIECE_BYTES + 64 + (decoding.attention * (out * n * WEIGHT_BYTES + (out + n) * PIECE_BYTES))
                   for out, n in zip(longest, pieces, strict=True)]
        bound = decoding.nbest * sum(per_hyp)
        if bound > settings.max_response_bytes:
            what = f"{len(pieces)} sentences x nbest {decoding.nbest} x up to {max(longest)} output pieces"
            what += f" x attention over up to {max(pieces)} source pieces" if decoding.attention else ""
            raise RequestError(413, f"the answer could reach {bound} bytes ({what}): more than "
                                    f"{settings.max_response_bytes} (--max-response-bytes); ask for fewer")

    @app.post("/translate", response_model=TranslateResponse, responses=ERRORS, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": TranslateRequest.model_json_schema()}}}})
    async def translate(request: Request) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise RequestError(415, f"Content-Type must be application/json, got {media_type or 'none'}")
        req = parse_request(await read_body(request))
        given = tuple((key, value) for key, value in req.__dict__.items() if key != "src" and value is not None)
        decoding = decoding_of(given)
        if isinstance(decoding, tuple):
            raise RequestError(*decoding)
        if len(req.src) > settings.max_sentences:
            raise RequestError(413, f"{len(req.src)} sentences in one request: at most {settings.max_sentences} "
                                    "(--max-sentences)")
        pieces = [backend.count_pieces(line) for line in req.src]
        if sum(pieces) > settings.max_request_tokens:
            raise RequestError(413, f"{sum(pieces)} source pieces in one request: at most "
                                    f"{settings.max_request_tokens} (--max-request-tokens)")
        check_answer_size(pieces, decoding)
        if batcher.closing:
            raise RequestError(503, "the server is shutting down", {"retry-after": "1"})
        try:
            results = await batcher.translate(req.src, pieces, decoding)
        except TranslationFailed as err:
            request_id = request.scope.get("state", {}).get("request_id", "-")
            return JSONResponse({"error": f"translation failed: {err} (request id {request_id})",
                                 "request_id": request_id}, status_code=500)
        limit = backend.max_input_len
        out = []
        for hyps, n in zip(results, pieces, strict=True):
            sentence = []
            for hyp in hyps:
                answer: dict[str, Any] = {"tgt": hyp.tgt, "score": hyp.score}
                if req.attention:  # labels for every row and column: </s> on both sides
                    answer.update(attention=hyp.attention, src_pieces=hyp.src_pieces,
                                  tgt_pieces=[*hyp.tgt_pieces, "</s>"] if hyp.src_pieces else [])
                if limit and n > limit:
                    answer["note"] = f"longer than max_input_len={limit} pieces ({n}): translated in segments"
                sentence.append(answer)
            out.append(sentence)
        return JSONResponse({"translations": out})

    def get(path: str, **options: Any) -> Any:
        """A GET route that also answers HEAD (health checks use either); HEAD stays out of the schema."""
        def register(endpoint: Any) -> Any:
            app.add_api_route(path, endpoint, methods=["HEAD"], **{**options, "include_in_schema": False})
            return app.get(path, **options)(endpoint)

        return register

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/models")
    async def models() -> dict[str, Any]:
        return {"models": [{
            "name": backend.name, "type": backend.model_type, "backend": backend.backend,
            "device": str(getattr(backend, "device", "")) or None,
            "decoding": defaults.to_dict(), "strategies": list(SEARCHES),
            "limits": {**settings.limits(), "max_input_len": backend.max_input_len},
            "auth": settings.api_key is not None,
        }]}

    @get("/stats", responses={401: ERRORS[401]})
    async def stats() -> dict[str, Any]:
        return _stats(batcher)

    @get("/metrics", response_class=Response)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(batcher.stats.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return Guard(app, settings, batcher)  # type: ignore[return-value]


def _stats(batcher: Batcher) -> dict[str, Any]:
    """`GET /stats`: the samples of the metrics registry, as JSON."""
    s = batcher.stats
    return {"requests": s.value("lnmt_http_responses_total", route="/translate", status="200"),
            "rejected": s.total("lnmt_http_responses_total", lambda labels: labels["status"].startswith("4")),
            "sentences": s.value("lnmt_sentences_total"), "source_pieces": s.value("lnmt_source_pieces_total"),
            "batches": s.value("lnmt_batch_sentences_count"), "largest_batch": s.largest_batch,
            "failed_batches": s.value("lnmt_failed_batches_total"), "queued": s.value("lnmt_queue_sentences"),
            "in_model": s.value("lnmt_in_model_sentences"),
            "model_seconds": round(s.value("lnmt_model_seconds_total"), 3),
            "uptime_seconds": round(time.time() - s.started, 1)}


class Guard:
    """The ASGI layer around the app: the Host check, the API key, the request id, the counts by route and status,
    and a fault (the app's 500 is answered; its exception stops here, so it is logged once)."""

    PROTECTED = {("POST", "/translate"), ("GET", "/stats"), ("HEAD", "/stats")}

    def __init__(self, app: FastAPI, settings: Settings, batcher: Batcher) -> None:
        self.app, self.settings, self.batcher = app, settings, batcher
        self.state = app.state
        self.hosts = {host.lower().strip("[]") for host in settings.allowed_hosts}
        self.key = settings.api_key.encode() if settings.api_key else None
        self.protected = set(self.PROTECTED) | ({("GET", "/metrics"), ("HEAD", "/metrics")}
                                                if settings.metrics_auth else set())
        self.prefix, self.ids = uuid.uuid4().hex[:6], itertools.count(1)  # request ids: this process's, in order
        self.counted: dict[tuple[str, int], tuple[Any, Any]] = {}  # (route, status) -> its metric children

    def __getattr__(self, name: str) -> Any:  # the FastAPI app's attributes (openapi, routes, ...)
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["request_id"] = f"{self.prefix}-{next(self.ids)}"
        route = self._route(scope["path"])
        started = time.perf_counter()
        status: list[int] = []

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                code, message, headers = refusal
                await JSONResponse({"error": message}, status_code=code, headers=headers)(scope, receive,
                                                                                          counted_send)
            else:
                await self.app(scope, receive, counted_send)
        except Exception:  # the app answered 500 (its exception handler logged it); it stops here
            if not status:
                raise
        finally:
            if status:
                key = (route, status[0])
                if key not in self.counted:
                    stats = self.batcher.stats
                    self.counted[key] = (stats.responses.labels(route, str(status[0])), stats.latency.labels(route))
                responses, latency = self.counted[key]
                responses.inc()
                latency.observe(time.perf_counter() - started)

    def _route(self, path: str) -> str:
        """The route label of a path: a known route, `/static`, else `other` (bounded label values)."""
        if path.startswith("/static/"):
            return "/static"
        return path if path in ("/translate", "/health", "/models", "/stats", "/metrics", "/", "/openapi.json") \
            else "other"

    def _refusal(self, scope: dict) -> tuple[int, str, dict[str, str] | None] | None:
        headers = dict(scope["headers"])
        if "*" not in self.hosts:
            host = headers.get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            name = name.lower().strip("[]")
            if name not in self.hosts:
                return 400, f"Host {host!r} is not allowed (--allowed-hosts)", None
        if self.key is not None and (scope["method"], scope["path"]) in self.protected:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not token:
                return 401, "this server needs an API key: Authorization: Bearer <key>", \
                    {"www-authenticate": "Bearer"}
            if not hmac.compare_digest(token.strip(), self.key):
                return 401, "wrong API key", {"www-authenticate": "Bearer"}
        return None


# ---- command line --------------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds, got {text!r}") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"expected 0 to 60000 milliseconds, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected more than 0 and at most 3600 seconds, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="lnmt-serve", description="Serve a lightning-nmt model over HTTP (POST /translate, a page at /).")
    parser.add_argument("model", metavar="MODEL", nargs="+",
                        help="a checkpoint (.ckpt), several (an ensemble: their log-probabilities averaged), or an "
                             "exported CTranslate2 directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                        "machine only; another address, e.g. 0.0.0.0 for every interface, needs --allowed-hosts)")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    access = parser.add_argument_group("access")
    access.add_argument("--api-key-file", type=Path, default=None,
                        help=f"a file holding the API key (or the environment variable {API_KEY_ENV}): POST "
                             "/translate and GET /stats then need 'Authorization: Bearer <key>'")
    access.add_argument("--metrics-auth", action="store_true", help="GET /metrics needs the key too")
    access.add_argument("--allowed-hosts", nargs="+", default=None, metavar="HOST",
                        help="Host header values accepted (default: localhost, 127.0.0.1, ::1 and --host); '*': any")
    access.add_argument("--cors-origin", nargs="+", default=[], metavar="ORIGIN",
                        help="origins whose pages may call the server (default: none, CORS off)")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--beam-size", type=_positive, default=None,
                          help="default beam size of a request (default: the checkpoint's decoding.beam_size)")
    decoding.add_argument("--max-beam-size", type=_positive, default=defaults.max_beam_size,
                          help=f"largest beam_size, and nbest of every strategy, a request may ask for (default: "
                               f"{defaults.max_beam_size})")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-batch-tokens", type=_positive, default=defaults.max_batch_tokens,
                        help="padded source pieces of one model batch: sentences x the longest "
                             f"(default: {defaults.max_batch_tokens})")
    limits.add_argument("--max-wait-ms", type=_non_negative, default=defaults.max_wait_ms,
                        help="how long a sentence may wait for others to fill its batch "
                             f"(default: {defaults.max_wait_ms:g})")
    limits.add_argument("--max-sentences", type=_positive, default=defaults.max_sentences,
                        help=f"sentences of one request (default: {defaults.max_sentences})")
    limits.add_argument("--max-request-tokens", type=_positive, default=defaults.max_request_tokens,
                        help=f"source pieces of one request (default: {defaults.max_request_tokens})")
    limits.add_argument("--max-response-bytes", type=_positive, default=defaults.max_response_bytes,
                        help="a request whose answer could be larger (a bound from its sentences, pieces, nbest and "
                             f"attention) is refused with 413 (default: {defaults.max_response_bytes})")
    limits.add_argument("--body-timeout", type=_seconds, default=defaults.body_timeout,
                        help=f"seconds to receive a request's body (default: {defaults.body_timeout:g})")
    limits.add_argument("--header-timeout", type=_seconds, default=defaults.header_timeout,
                        help=f"seconds to receive a request's headers (default: {defaults.header_timeout:g})")
    limits.add_argument("--keep-alive-timeout", type=_seconds, default=defaults.keep_alive_timeout,
                        help=f"seconds an idle connection is kept open (default: {defaults.keep_alive_timeout:g})")
    limits.add_argument("--max-header-bytes", type=_positive, default=defaults.max_header_bytes,
                        help=f"size of a request's headers (431 beyond; default: {defaults.max_header_bytes})")
    limits.add_argument("--max-connections", type=_positive, default=defaults.max_connections,
                        help="open connections; beyond, 503 with Retry-After (default: "
                             f"{defaults.max_connections})")
    limits.add_argument("--shutdown-timeout", type=_seconds, default=defaults.shutdown_timeout,
                        help="after SIGTERM, seconds the requests in flight have before they are cut (default: "
                             f"{defaults.shutdown_timeout:g})")
    limits.add_argument("--http", choices=PARSERS, default="auto",
                        help="the HTTP parser: httptools (auto, when installed: faster) or h11")
    parser.add_argument("--device", default="cpu", help="cpu, gpu/cuda or auto (default: cpu)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="CPU threads of the model calls (default: one per core). A checkpoint: torch's threads of "
                             "each call; on a shared or busy machine, or for a small model, fewer are faster. An "
                             "exported directory: CTranslate2 workers of one thread each, searching batches side "
                             "by side")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log, in the "
                        "server's log format)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_settings(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The API key (from --api-key-file or $LNMT_API_KEY) and the allowed hosts; a `UserError` for an unreadable or
    empty key file, or a non-loopback --host without --allowed-hosts."""
    key = None
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --api-key-file {args.api_key_file}: {err}") from None
        if not key:
            raise UserError(f"--api-key-file {args.api_key_file} is empty")
    elif os.environ.get(API_KEY_ENV, "").strip():
        key = os.environ[API_KEY_ENV].strip()
    if args.allowed_hosts is None:
        if not _loopback(args.host):
            raise UserError(f"--host {args.host} is reachable from other machines: say which Host names clients use "
                            "with --allowed-hosts NAME ... (or '*' for any, which lets any web page a user opens "
                            "call the server by DNS rebinding)")
        hosts = [*LOOPBACK_NAMES, args.host]
    else:
        hosts = list(args.allowed_hosts)
    return key, hosts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key, hosts = access_settings(args)
        backend = load_backend(args.model, args.device, args.threads)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    beam_size = args.beam_size or backend.decoding.beam_size or Settings.beam_size
    if beam_size > args.max_beam_size:
        print(f"error: --beam-size {beam_size} is larger than --max-beam-size {args.max_beam_size}", file=sys.stderr)
        return 2
    if "*" in hosts:
        log.warning("--allowed-hosts '*': any Host is accepted; a web page a user opens can reach this server "
                    "by DNS rebinding%s", "" if key else ", and there is no API key")
    settings = Settings(beam_size=beam_size, max_beam_size=args.max_beam_size,
                        max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                        max_sentences=args.max_sentences, max_request_tokens=args.max_request_tokens,
                        max_response_bytes=args.max_response_bytes, body_timeout=args.body_timeout,
                        header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                        max_header_bytes=args.max_header_bytes, max_connections=args.max_connections,
                        shutdown_timeout=args.shutdown_timeout, http_parser=args.http, api_key=key,
                        metrics_auth=args.metrics_auth,
                        allowed_hosts=hosts, cors_origins=args.cors_origin)
    server = make_server(create_app(backend, settings), settings, args.host, args.port, args.log_level,
                         args.access_log)
    # uvicorn stops gracefully on SIGTERM/SIGINT (no new connections, requests in flight answered, what runs past
    # --shutdown-timeout cut, then the lifespan shutdown drains the batcher), then raises the signal again for the
    # handler that was there before it: this one, so that a requested stop exits with status 0.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    server.run()
    if stopped:
        log.info("stopped by %s", signal.Signals(stopped[0]).name)
    return 0 if server.started or stopped else 1


def make_server(app: Any, settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                access_log: bool = False) -> Any:
    """The uvicorn server of `app` with `settings`' connection limits (`lightning_nmt.connections`); its log records
    go through the root logger, in one format."""
    import uvicorn

    limits = ConnectionLimits(header_timeout=settings.header_timeout, max_header_bytes=settings.max_header_bytes,
                              max_connections=settings.max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
                            http=protocol(limits, settings.http_parser), log_config=None,
                            timeout_keep_alive=settings.keep_alive_timeout,
                            h11_max_incomplete_event_size=settings.max_header_bytes,
                            timeout_graceful_shutdown=settings.shutdown_timeout)
    batcher = getattr(app, "batcher", None)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if batcher is not None:  # the queued sentences go now, not after --max-wait-ms
                batcher.drain_soon()

    return Server(config)


if __name__ == "__main__":
    sys.exit(main())
