"""What every connection passes before it is a request: a header timeout and a connection cap,
in uvicorn's HTTP protocol (uvicorn has neither)."""
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0  # a client must send its request line and headers within this
MAX_CONNECTIONS = 256  # connections over this are closed at once (the usual fd limit is 1024)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a header timeout and a connection cap (uvicorn has neither): a
    connection whose request line and headers are not complete within `header_timeout_s` is closed
    (idle ones, slow senders); over `max_connections`, the oldest connection that is not in a
    request is closed (so idle sockets cannot lock clients out), or the new one if all are busy."""

    header_timeout_s, max_connections = HEADER_TIMEOUT_S, MAX_CONNECTIONS

    def connection_made(self, transport):
        super().connection_made(transport)
        self._header_timer, self._opened = None, time.monotonic()
        if len(self.connections) > self.max_connections:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedHttp)
                    and not c.transport.is_closing() and (c.cycle is None or c.cycle.response_complete)]
            victim = min(idle, key=lambda c: c._opened, default=self)
            victim.transport.close()
            if victim is self:
                return
        self._arm()

    def _arm(self):
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _too_slow(self):
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm(self):
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data):
        if self.cycle is None or self.cycle.response_complete:
            self._arm()  # a new request begins: its headers must come in time
        super().data_received(data)

    def on_headers_complete(self):
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)
