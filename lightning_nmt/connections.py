"""The connection layer of `lnmt-serve`: what a slow or greedy client meets before a request reaches the app.

uvicorn's h11 protocol, with:
- a header timeout: a connection must complete a request's headers within `header_timeout` seconds of its first
  byte (or of its opening); else it gets a 408 and is closed. A request reaches the app only with its headers, so
  this cannot live in the app (the body timeout does: `lightning_nmt.serve`);
- a connection cap: beyond `max_connections` open connections, a new one gets a 503 with `Retry-After` and is
  closed before it is read (uvicorn's own `limit_concurrency` answers in plain text, without `Retry-After`);
- JSON bodies for the errors of this layer (a malformed request, headers over h11's size limit, which uvicorn
  answers in plain text).
The keep-alive timeout, the header size limit (h11's `max_incomplete_event_size`, which holds for h11 only: the server
runs h11, not httptools) and the shutdown deadline are uvicorn's own settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("lightning_nmt.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0  # seconds to receive a request's headers
    max_connections: int = 256  # open connections; beyond: 503 with Retry-After
    retry_after: int = 1  # seconds, in the 503's Retry-After


def raw_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response `{"error": message}` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
            **(headers or {})}
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap of `limits` (see the module docstring).
    `protocol(limits)` makes the class uvicorn takes as `http=`."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._error_status = 400  # h11's hint for the request it could not parse (431: headers too large)
        next_event = self.conn.next_event
        limit = self.config.h11_max_incomplete_event_size

        def next_event_noting_errors() -> Any:
            try:
                event = next_event()
            except h11.RemoteProtocolError as err:
                self._error_status = err.error_status_hint
                raise
            # h11 bounds only headers that arrive in pieces: a request line and headers read at once are counted here
            if isinstance(event, h11.Request) and limit is not None and \
                    len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > limit:
                self._error_status = 431
                raise h11.RemoteProtocolError("request headers too large", error_status_hint=431)
            return event

        self.conn.next_event = next_event_noting_errors  # type: ignore[method-assign]

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
        """A request h11 cannot parse: 400, or 431 for headers over the size limit, in JSON."""
        if self._error_status == 431:
            limit = self.config.h11_max_incomplete_event_size
            self._close_with(431, "Request Header Fields Too Large", f"request headers larger than {limit} bytes")
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


def protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """The protocol class uvicorn's `http=` takes, with `limits`."""
    return type("LnmtProtocol", (GuardedProtocol,), {"limits": limits})
