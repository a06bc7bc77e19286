"""The connection layer of `lnmt-serve`: what a slow or greedy client meets before a request reaches the app.

uvicorn's HTTP protocol (httptools, the faster parser, when it is installed; else h11), with:
- a header timeout: a connection must complete a request's headers within `header_timeout` seconds of its first
  byte (or of its opening); else it gets a 408 and is closed. A request reaches the app only with its headers, so
  this cannot live in the app (the body timeout does: `lightning_nmt.serve`);
- a connection cap: beyond `max_connections` open connections, a new one gets a 503 with `Retry-After` and is
  closed before it is read (uvicorn's own `limit_concurrency` answers in plain text, without `Retry-After`);
- a header size limit, counted here on either parser (uvicorn's holds for h11 only, and only for headers that
  arrive in pieces): beyond `max_header_bytes`, a 431;
- JSON bodies for the errors of this layer (uvicorn answers them in plain text).
The keep-alive timeout and the shutdown deadline are uvicorn's own settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11 only
    HttpToolsProtocol = None

log = logging.getLogger("lightning_nmt.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0  # seconds to receive a request's headers
    max_header_bytes: int = 16 << 10  # request line and headers
    max_connections: int = 256  # open connections; beyond: 503 with Retry-After
    retry_after: int = 1  # seconds, in the 503's Retry-After


def raw_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response `{"error": message}` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
            **(headers or {})}
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Guarded:
    """The header timeout, the header size limit and the connection cap of `limits` (see the module docstring), over
    one of uvicorn's HTTP protocols (`H11Guarded`, `HttpToolsGuarded`). `protocol(limits)` makes the class uvicorn
    takes as `http=`."""

    limits = ConnectionLimits()
    _header_timer: asyncio.TimerHandle | None = None
    _error_status = 400  # the status of a request the parser refused (431: headers too large)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection refused: %d open connections, at most %d (--max-connections)",
                        len(self.connections) - 1, self.limits.max_connections)
            message = f"too many connections: at most {self.limits.max_connections}; retry later"
            self._close_with(503, "Service Unavailable", message, {"retry-after": str(self.limits.retry_after)})
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before and self.cycle is not None:  # a request's headers are complete
            self._disarm_header_timer()
        elif waiting and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()  # the next request of a kept-alive connection has begun

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request the parser refused: 400, or 431 for headers over the size limit, in JSON."""
        if self._error_status == 431:
            self._close_with(431, "Request Header Fields Too Large",
                             f"request headers larger than {self.limits.max_header_bytes} bytes")
        else:
            self._close_with(400, "Bad Request", "invalid HTTP request")

    # ---- internals ---------------------------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        message = f"request headers not received within {self.limits.header_timeout:g} s"
        log.info("%s: %s: closed", _client(self.client), message)
        self._close_with(408, "Request Timeout", message)

    def _close_with(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.write(raw_response(status, reason, message, headers))
            self.transport.close()


def _client(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "a client"


class H11Guarded(Guarded, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        next_event, limit = self.conn.next_event, self.limits.max_header_bytes

        def next_event_noting_errors() -> Any:
            try:
                event = next_event()
            except h11.RemoteProtocolError as err:
                self._error_status = err.error_status_hint
                raise
            # h11 bounds only headers that arrive in pieces: a request line and headers read at once are counted here
            if isinstance(event, h11.Request) and \
                    len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > limit:
                self._error_status = 431
                raise h11.RemoteProtocolError("request headers too large", error_status_hint=431)
            return event

        self.conn.next_event = next_event_noting_errors  # type: ignore[method-assign]


class HttpToolsGuarded(Guarded, *((HttpToolsProtocol,) if HttpToolsProtocol else ())):  # type: ignore[misc]
    _header_bytes = 0

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        """Raised from a parser callback, an error stops the parser (uvicorn answers it with `send_400_response`)."""
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._error_status = 431
            raise ValueError("request headers too large")


PARSERS = ("auto", "httptools", "h11")


def protocol(limits: ConnectionLimits, parser: str = "auto") -> type[Guarded]:
    """The protocol class uvicorn's `http=` takes, with `limits`: httptools (`auto` when it is installed) or h11."""
    if parser not in PARSERS:
        raise ValueError(f"unknown HTTP parser {parser!r}; valid values: {', '.join(PARSERS)}")
    if parser == "httptools" and HttpToolsProtocol is None:
        raise ValueError("the httptools parser is not installed (pip install httptools)")
    base = HttpToolsGuarded if parser != "h11" and HttpToolsProtocol is not None else H11Guarded
    return type(f"Lnmt{base.__name__}", (base,), {"limits": limits})
