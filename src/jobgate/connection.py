"""jobgate's HTTP connections: uvicorn's h11 protocol with a request timeout, and a handle
on the connection for the code that answers it.

- *Request timeout* (`[server] request_timeout`): a request's line and headers must all
  arrive within the timeout of its first byte (or of the connection opening), and its
  body may pause for no longer than that between two reads. A client that sends half a
  request and stalls is answered 408 and closed instead of holding a connection (and a
  socket, and memory) forever. A slow upload that keeps going is not cut, and nothing is
  timed once the request is in: a long event stream runs as long as it runs. Idle
  keep-alive connections are uvicorn's `timeout_keep_alive`.
- *The connection*: `current_transport()` is, inside a request's handler, the transport
  of the connection it came on, so an event stream that drops a client too slow to read
  can abort the socket: a plain close would wait for the unread bytes to drain first,
  which for such a client is never.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TRANSPORT: contextvars.ContextVar[asyncio.Transport | None] = contextvars.ContextVar(
    "jobgate_transport", default=None)
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: 20\r\nconnection: close\r\n\r\nrequest timed out.\r\n")


def current_transport() -> asyncio.Transport | None:
    """The transport of the connection the running request came on (None outside one)."""
    return _TRANSPORT.get()


def protocol_class(request_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `request_timeout_s` on reading each request."""

    class TimedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._reading_body = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # the first request's headers are due from now

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # Inside this call the request's task is made: it inherits the variable.
            _TRANSPORT.set(self.transport)
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()  # a pipelined request may already be waiting

        def _follow(self) -> None:
            """Time what the connection is reading now: headers from their first byte,
            a body between reads, nothing once the request is in or upgraded."""
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._disarm()  # the body may take its time as long as it keeps coming
                self._arm()
                self._reading_body = True
            elif state is h11.IDLE and self.conn.trailing_data[0]:
                if self._deadline is None or self._reading_body:
                    self._disarm()
                    self._arm()  # the next request's headers started: due from now
                self._reading_body = False
            else:
                self._disarm()  # in, or nothing started: keep-alive is uvicorn's
                self._reading_body = False

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE and self.conn.our_state is h11.IDLE:
                self.transport.write(_TIMED_OUT)  # nothing was answered yet: say why
                self.transport.close()
            elif state is h11.SEND_BODY:
                self.transport.abort()  # the handler sees the client gone

    return TimedH11Protocol
