"""uvicorn's HTTP protocol with the two timeouts a public-facing server needs and uvicorn lacks.

uvicorn times out idle keep-alive connections only: a client that opens a connection and sends half its headers (or
a body a byte at a time) holds that connection, and its slot under `limit_concurrency`, for ever. Here a request's
headers must arrive within `header_timeout` seconds of its first byte (or of the connection opening), and its body
within `body_timeout` seconds of the headers; otherwise the connection is answered 408 and closed. A request answered
before its body has all arrived (413 for a body over the limit) has its connection closed too, instead of uvicorn
reading and discarding the rest of a body that may never end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_BODY = b'{"error": "request sent too slowly"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def guarded_protocol(header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class to give `uvicorn.run(http=...)`."""

    class GuardedHttpProtocol(HttpToolsProtocol):
        _guard: asyncio.TimerHandle | None = None
        _in_body = False

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._guard = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None

        def _too_slow(self) -> None:
            self._guard = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # nothing answered on this request yet
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._guard is None:  # a keep-alive connection's next request
                self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._in_body = True
            self._arm(body_timeout)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_body = False
            self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_body and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpProtocol
