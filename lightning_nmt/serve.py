"""`lnmt-serve MODEL [MODEL ...] [--host 127.0.0.1] [--port 8000] [--beam-size N] [--max-batch-tokens N] [--max-wait-ms
N] [--max-sentences N] [--max-request-tokens N] [--device cpu]`: an HTTP translation server, and a page at `/` that
translates what is typed and draws each sentence's attention.

MODEL is a checkpoint (`TorchBackend`; several: an ensemble) or an exported CTranslate2 directory
(`lightning_nmt.ct2.CTranslate2Model`). Endpoints (the OpenNMT-py / Eole shape):

    POST /translate  {"src": ["...", ...], "beam_size": 5, "nbest": 1, "attention": false}
                     and any decoding key (`DECODING_FIELDS`: "strategy": "sampling", "top_p": 0.9, "seed": 1,
                     "no_repeat_ngram_size": 3, ...); length limits and max_input_len are the server's
                  -> {"translations": [[{"tgt": "...", "score": -1.23}, ...nbest], ...one list per src line]}
                     with "attention": true each hypothesis also has "attention" ([output piece][source piece];
                     null for a model without attention), "src_pieces" and "tgt_pieces" (their labels: `</s>`
                     included on both sides); a line longer than the model's max_input_len has a "note" (it was
                     translated in segments). An empty line gets one empty translation, score 0.
    GET /health   -> {"status": "ok"}
    GET /models   -> the model: name, type, backend, decoding defaults, limits
    GET /stats    -> counters: requests, sentences, batches (batches < requests: requests were batched together)
    GET /         -> the page (lightning_nmt/static: plain HTML + JS, nothing fetched from elsewhere)

Bad input is a 4xx answer `{"error": "one line"}` (400 malformed JSON or UTF-8, an empty list, a value out of range;
422 a wrong type or an unknown field, named; 413 too many sentences, pieces or bytes); the server keeps serving.

Concurrent requests are batched: their sentences wait in one queue, and a single worker task, when the model can
take a call (one at a time for a checkpoint, one per CTranslate2 worker for an exported model), takes the oldest
sentence's group (its request's decoding settings), waits up to --max-wait-ms for more of it (less when the model was
busy: the wait counts from the oldest sentence's arrival) up to --max-batch-tokens padded source pieces, and runs the
model on them in a thread; each request gets its own results back in its order. On SIGTERM (or Ctrl-C) the server
stops accepting connections, answers the requests in flight, then exits with status 0.

Built on FastAPI + uvicorn rather than LitServe: the batching is a plain asyncio queue in the server's own event loop
and the model runs in threads of the same process, with no extra worker-process model to configure or ship.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from lightning_nmt.backend_api import Backend
from lightning_nmt.backends import load_backend
from lightning_nmt.batcher import Batcher, TranslationFailed
from lightning_nmt.errors import UserError
from lightning_nmt.search import SEARCHES, DecodingConfig
from lightning_nmt.search.schema import flat_decoding_keys

log = logging.getLogger("lightning_nmt.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 4 << 20
"""Largest request body read (413 beyond): ample for --max-request-tokens pieces of text."""


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


SERVER_KEYS = ("max_len_ratio", "max_len_offset", "min_len_ratio", "max_input_len", "val_beam_size")
"""Decoding keys a request may not set: the length limits are the server's."""


@dataclass
class Settings:
    """Decoding defaults and limits (the command line's): a request's decoding settings default to the model's with
    `beam_size`."""

    beam_size: int = 5
    max_beam_size: int = 16  # beam_size and nbest of a request, every strategy
    max_batch_tokens: int = 4096
    max_wait_ms: float = 10.0
    max_sentences: int = 64
    max_request_tokens: int = 4096


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _request_model() -> type[BaseModel]:
    """POST /translate: `src`, `attention`, and every decoding key of a registered strategy but the server's length
    limits (`SERVER_KEYS`); null or absent: the server's default."""
    strategies: Any = Literal[tuple(SEARCHES)]  # type: ignore[valid-type]
    fields: dict[str, Any] = {"src": (list[str], ...), "attention": (bool, False)}
    for name, kind, _ in flat_decoding_keys():
        if name not in SERVER_KEYS:
            fields[name] = (Optional[strategies] if name == "strategy" else kind, None)  # noqa: UP045
    return create_model("TranslateRequest", __base__=_Request, **fields)


TranslateRequest = _request_model()


def _field(loc: Sequence[Any]) -> str:
    """A pydantic error location -> `src[2]`."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "request body"


def create_app(backend: Backend, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving `backend`."""
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
        log.info("stopped: %d requests, %d sentences in %d batches", batcher.stats.requests,
                 batcher.stats.sentences, batcher.stats.batches)

    app = FastAPI(title="lightning-nmt", lifespan=lifespan, docs_url=None, redoc_url=None)  # their pages need a CDN
    app.state.batcher = batcher
    app.state.settings = settings

    def error(status: int, message: str) -> JSONResponse:
        if 400 <= status < 500:
            batcher.stats.rejected += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error(422, f"{_field(first['loc'][1:])}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail).lower() if exc.detail else "error")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise RequestError(413, f"request body of {declared} bytes: at most {MAX_BODY_BYTES}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise RequestError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(body: bytes) -> Any:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(400, f"request body is not valid UTF-8 (byte {err.start})") from None
        if not text.strip():
            raise RequestError(400, 'empty request body: send a JSON object {"src": ["a sentence", ...]}')
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as err:
            raise RequestError(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
        if not isinstance(payload, dict):
            raise RequestError(422, f'request body must be a JSON object {{"src": [...]}}, got a JSON '
                                    f"{_json_type(payload)}")
        try:
            return TranslateRequest.model_validate(payload)
        except ValidationError as err:
            first = err.errors()[0]
            raise RequestError(422, f"{_field(first['loc'])}: {first['msg'][0].lower()}{first['msg'][1:]}") from None

    def request_decoding(req: BaseModel) -> DecodingConfig:
        """The request's decoding settings over the server's defaults, checked by the one check and the backend's:
        400 naming the key of a value out of range or options that contradict each other."""
        given = {key: value for key, value in req.model_dump().items() if key != "src"}
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

    @app.post("/translate", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": TranslateRequest.model_json_schema()}}}})
    async def translate(request: Request) -> JSONResponse:
        req = parse(await read_body(request))
        decoding = request_decoding(req)
        if not req.src:
            raise RequestError(400, "src is empty: give at least one sentence")
        if len(req.src) > settings.max_sentences:
            raise RequestError(413, f"{len(req.src)} sentences in one request: at most {settings.max_sentences} "
                                    "(--max-sentences)")
        pieces = [backend.count_pieces(line) for line in req.src]
        if sum(pieces) > settings.max_request_tokens:
            raise RequestError(413, f"{sum(pieces)} source pieces in one request: at most "
                                    f"{settings.max_request_tokens} (--max-request-tokens)")
        if batcher.closing:
            raise RequestError(503, "the server is shutting down")
        try:
            results = await batcher.translate(req.src, pieces, decoding)
        except TranslationFailed as err:
            return error(500, f"translation failed: {err}")
        batcher.stats.requests += 1
        limit = backend.max_input_len
        out = []
        for hyps, n in zip(results, pieces):
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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/models")
    async def models() -> dict[str, Any]:
        return {"models": [{
            "name": backend.name, "type": backend.model_type, "backend": backend.backend,
            "device": str(getattr(backend, "device", "")) or None,
            "decoding": defaults.to_dict(), "strategies": list(SEARCHES),
            "limits": {"max_beam_size": settings.max_beam_size, "max_sentences": settings.max_sentences,
                       "max_request_tokens": settings.max_request_tokens, "max_input_len": backend.max_input_len,
                       "max_batch_tokens": settings.max_batch_tokens, "max_wait_ms": settings.max_wait_ms,
                       "max_body_bytes": MAX_BODY_BYTES},
        }]}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = batcher.stats
        return {"requests": s.requests, "sentences": s.sentences, "batches": s.batches,
                "largest_batch": s.largest_batch, "rejected": s.rejected, "failed_batches": s.failed,
                "queued": sum(not item.job.future.done() for item in batcher.pending), "in_model": batcher.busy,
                "model_seconds": round(s.model_seconds, 3), "uptime_seconds": round(time.time() - s.started, 1)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="lnmt-serve", description="Serve a lightning-nmt model over HTTP (POST /translate, a page at /).")
    parser.add_argument("model", metavar="MODEL", nargs="+",
                        help="a checkpoint (.ckpt), several (an ensemble: their log-probabilities averaged), or an "
                             "exported CTranslate2 directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                        "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    parser.add_argument("--beam-size", type=_positive, default=None,
                        help="default beam size of a request (default: the checkpoint's decoding.beam_size)")
    parser.add_argument("--max-beam-size", type=_positive, default=defaults.max_beam_size,
                        help=f"largest beam_size, and nbest of every strategy, a request may ask for (default: "
                             f"{defaults.max_beam_size})")
    parser.add_argument("--max-batch-tokens", type=_positive, default=defaults.max_batch_tokens,
                        help="padded source pieces of one model batch: sentences x the longest "
                             f"(default: {defaults.max_batch_tokens})")
    parser.add_argument("--max-wait-ms", type=_non_negative, default=defaults.max_wait_ms,
                        help="how long a sentence may wait for others to fill its batch "
                             f"(default: {defaults.max_wait_ms:g})")
    parser.add_argument("--max-sentences", type=_positive, default=defaults.max_sentences,
                        help=f"sentences of one request (default: {defaults.max_sentences})")
    parser.add_argument("--max-request-tokens", type=_positive, default=defaults.max_request_tokens,
                        help=f"source pieces of one request (default: {defaults.max_request_tokens})")
    parser.add_argument("--device", default="cpu", help="cpu, gpu/cuda or auto (default: cpu)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="CPU threads of the model calls (default: one per core). A checkpoint: torch's threads of "
                             "each call; on a shared or busy machine, or for a small model, fewer are faster. An "
                             "exported directory: CTranslate2 workers of one thread each, searching batches side "
                             "by side")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        backend = load_backend(args.model, args.device, args.threads)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    beam_size = args.beam_size or backend.decoding.beam_size or Settings.beam_size
    if beam_size > args.max_beam_size:
        print(f"error: --beam-size {beam_size} is larger than --max-beam-size {args.max_beam_size}", file=sys.stderr)
        return 2
    settings = Settings(beam_size=beam_size, max_beam_size=args.max_beam_size,
                        max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                        max_sentences=args.max_sentences, max_request_tokens=args.max_request_tokens)

    import uvicorn

    config = uvicorn.Config(create_app(backend, settings), host=args.host, port=args.port,
                            log_level=args.log_level, access_log=args.access_log, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGTERM/SIGINT (no new connections, requests in flight answered, then the
    # lifespan shutdown drains the batcher), then raises the signal again for the handler that was there before
    # it: this one, so that a requested stop exits with status 0 instead of dying of the signal.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    server.run()
    if stopped:
        log.info("stopped by %s", signal.Signals(stopped[0]).name)
    return 0 if server.started or stopped else 1


if __name__ == "__main__":
    sys.exit(main())
