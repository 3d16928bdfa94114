"""What every connection passes before it is a request: a header timeout, a limit on the header's
size and count, a write timeout, and a connection cap, in uvicorn's HTTP protocol (which has none
of them with httptools)."""
import time

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0  # a client must send its request line and headers within this
MAX_CONNECTIONS = 256  # connections over this are closed at once (the usual fd limit is 1024)
# The request line and headers together: nginx's default is 4 buffers of 8 KiB
# (large_client_header_buffers), h11's 16 KiB (h11_max_incomplete_event_size); 100 headers is
# Python's http.client limit (_MAXHEADERS). A browser sends about 20 headers and 1-2 KiB.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
# A client that does not read its reply: once the reply fills the transport's buffer, the client
# must take some of it within this, or the connection is dropped (a 3 MB reply takes ~2 ms here).
WRITE_TIMEOUT_S = 10.0


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the limits uvicorn lacks: a connection whose request line and
    headers are not complete within `header_timeout_s`, or grow past `max_header_bytes` or
    `max_headers`, is answered 431 and closed; one whose reply waits unread in its buffer for
    `write_timeout_s` is dropped. Over `max_connections`, the oldest connection that is not running
    a request (idle, stalled writing, or still sending its body) is dropped, or the new one if every
    connection is running a request."""

    header_timeout_s, max_connections = HEADER_TIMEOUT_S, MAX_CONNECTIONS
    max_header_bytes, max_headers, write_timeout_s = MAX_HEADER_BYTES, MAX_HEADERS, WRITE_TIMEOUT_S

    def connection_made(self, transport):
        super().connection_made(transport)
        self._header_timer = self._write_timer = None
        self._opened, self._header_bytes, self._header_count, self._dropped = time.monotonic(), 0, 0, False
        held = [c for c in self.connections if isinstance(c, GuardedHttp) and c._holds_socket()]
        if len(held) > self.max_connections:
            spare = [c for c in held if c is not self and c._spare()]
            victim = min(spare, key=lambda c: c._opened, default=self)
            victim._drop()
            if victim is self:
                return
        self._arm()

    def _drop(self):
        self._dropped = True
        self.transport.abort()

    def _holds_socket(self):
        """Open, or closing with a reply its client does not read (close() waits for that forever)."""
        return not self._dropped and (not self.transport.is_closing() or self._write_timer is not None)

    def _spare(self):
        """True if dropping this connection loses no work: no request, a reply that is complete or
        stuck in the buffer, or a request whose body is still arriving."""
        if self._write_timer is not None:
            return True
        cycle = self.cycle
        return cycle is None or cycle.response_complete or (cycle.more_body and not cycle.response_started)

    def _arm(self):
        if self._header_timer is None:
            self._header_bytes = self._header_count = 0
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _too_slow(self):
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm(self):
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_large(self):
        self._disarm()
        body = (b'{"error":"the request line and headers are over this server\'s limit of '
                + f'{self.max_header_bytes:,} bytes or {self.max_headers} headers"}}'.encode())
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()

    def data_received(self, data):
        """uvicorn's, with the header limits, and without a log line per malformed request."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self._arm()  # a new request begins: its headers must come in time and within the limits
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _TooManyHeaders):
                return self._too_large()
            return self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            return self.send_400_response("Unsupported upgrade request.")
        except httptools.HttpParserError:
            return self.send_400_response("Invalid HTTP request received.")
        if self._header_timer is not None and not self.transport.is_closing():  # headers still incomplete
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._too_large()

    def on_header(self, name, value):
        self._header_count += 1
        if self._header_count > self.max_headers:
            raise _TooManyHeaders()  # stops the parser: the header is not stored
        super().on_header(name, value)

    def on_headers_complete(self):
        self._disarm()
        super().on_headers_complete()

    def pause_writing(self):
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._drop)

    def resume_writing(self):
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def connection_lost(self, exc):
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)


class _TooManyHeaders(Exception):
    """Raised in the parser's callback to stop it at the header over the limit."""
