"""The HTTP layer in front of KServe: the limits every request passes (Host/Origin, management
endpoints, body size and time, a slot on the bounded pool, the deadline), because KServe and
uvicorn have none of them. Connections are guarded in `helpers.connection_guard`."""
import asyncio
import json
import re
import time

import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.request_pool import Refused, RequestPool
from helpers.tf_serving_json import encode_json

# Measured with scripts/benchmark_serving.py --robustness (MobileNet, 2 busy cores): one 16 MiB
# body (5 images as JSON) raised the server's peak RSS from 0.74 to 0.88 GB, and a health check
# during it waited at most 0.19 s; a 64 MiB body (the old limit, 20 images) peaked at 1.23 GB and
# held a health check up to 1.3 s (one C call, orjson.loads or np.asarray, holds the GIL that
# long). With REST_THREADS requests at once the worst case is REST_THREADS times the extra.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 30.0  # ... and its body within this, after the headers (headers: connection_guard)
IDLE_TIMEOUT_S = 5.0  # a kept-alive connection with no new request is closed after this


MANAGEMENT = re.compile(r"^/(metrics|docs|docs/oauth2-redirect|redoc|openapi\.json|v2/repository(/.*)?)$")
V1_PREDICT = re.compile(r"(?i)^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:predict$")


class RequestGuard:
    """ASGI middleware in front of KServe's app: every request passes here.

    Refused with 403: a `Host` that is not this server's loopback address:port (DNS rebinding), an
    `Origin` that is not this server (any web page the reader visits), the management endpoints
    (`/v2/repository/...` unload/load, `/metrics`, `/docs`, `/openapi.json`) unless `management`.
    A POST body over `max_bytes` is refused with 413, one that does not arrive within `body_timeout_s`
    with 408. V1 predict is answered here: parsing, conversion and the model call run on `pool`.
    Any other error answer of KServe's ({"detail": ...}) is rewritten as {"error": ...}."""

    def __init__(self, app, servable, port, max_bytes=DEFAULT_MAX_REQUEST_BYTES, pool=None,
                 body_timeout_s=BODY_TIMEOUT_S, management=False):
        self.app, self.servable, self.max_bytes, self.management = app, servable, max_bytes, management
        self.pool = pool or RequestPool()
        self.body_timeout_s = body_timeout_s
        self.hosts = {f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()}
        self.origins = {b"http://" + host for host in self.hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        receive = _Tracked(receive)
        try:
            self._check_caller(scope, headers)
            v1 = V1_PREDICT.match(scope["path"]) if scope["method"] == "POST" else None
            if v1:
                return await self._predict_v1(v1, headers, receive, send)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                return await self._pass_body(scope, headers, receive, send)
        except Refused as refusal:
            return await self._refuse(refusal, headers, receive, send)
        return await self.app(scope, receive, _error_envelope(send))

    def _check_caller(self, scope, headers):
        host, origin = headers.get(b"host", b""), headers.get(b"origin")
        if host not in self.hosts:
            raise Refused(403, f"Host '{host.decode('latin-1')}' is not this server's address "
                               f"({sorted(self.hosts)[0].decode()}): refused (DNS rebinding guard)")
        if origin is not None and origin not in self.origins:
            raise Refused(403, f"requests from web pages of other origins are refused "
                               f"(Origin: {origin.decode('latin-1')})")
        if MANAGEMENT.match(scope["path"]) and not self.management:
            raise Refused(403, f"{scope['path']} is a management endpoint, off on this server "
                               "(start it with --enable_management to turn it on)")

    async def _read_body(self, headers, receive, deadline):
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > self.max_bytes:
            raise Refused(413, f"request body of {int(declared):,} bytes is over this server's limit "
                               f"of {self.max_bytes:,} bytes", close=True)
        chunks, size = [], 0
        while True:
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Refused(408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                              close=True) from None
            if event["type"] == "http.disconnect":
                raise Refused(400, "the client disconnected", close=True)
            chunks.append(event.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise Refused(413, f"request body over this server's limit of {self.max_bytes:,} bytes",
                              close=True)
            if not event.get("more_body", False):
                return b"".join(chunks)

    async def _predict_v1(self, match, headers, receive, send):
        name, version, label = match.groups()
        start = time.monotonic()
        await self.pool.acquire(start + self.pool.timeout_s)
        released = False
        try:
            body = await self._read_body(headers, receive, time.monotonic() + self.body_timeout_s)
            if name != self.servable.name:
                raise Refused(404, f"Servable not found for request: Latest({name})")
            if label is not None:
                raise Refused(400, f"Unrecognized servable version label: {label}")
            if version is not None and int(version) != self.servable.version:
                raise Refused(404, f"Servable not found for request: Specific({name}, {version})")
            future = self.pool.executor.submit(_answer, self.servable.predict_v1_body, body)
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(self.pool.release))
            released = True  # the slot is freed when the work ends, even after a timeout
            try:
                status, reply = await asyncio.wait_for(
                    asyncio.wrap_future(future), max(0.0, start + self.pool.timeout_s - time.monotonic()))
            except asyncio.TimeoutError:
                raise Refused(504, f"Deadline exceeded: the request did not finish within "
                                   f"{self.pool.timeout_s:g} s (--rest_api_timeout_in_ms)") from None
            await _send_json(send, status, reply)
        finally:
            if not released:
                self.pool.release()

    async def _pass_body(self, scope, headers, receive, send):
        """Other POSTs (V2 infer) go to KServe's app, with the same slot, size and time limits."""
        await self.pool.acquire(time.monotonic() + self.pool.timeout_s)
        try:
            body = await self._read_body(headers, receive, time.monotonic() + self.body_timeout_s)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, _error_envelope(send))
        finally:
            self.pool.release()

    async def _refuse(self, refusal, headers, receive, send):
        if not refusal.close and not receive.done and headers.get(b"content-length", b"0") != b"0":
            try:  # read the body of a refused request so the connection stays usable
                await self._read_body(headers, receive, time.monotonic() + self.body_timeout_s)
            except Refused:
                refusal.close = True
        await _send_json(send, refusal.status, encode_json({"error": refusal.message}), close=refusal.close)


class _Tracked:
    """An ASGI `receive` that knows whether the whole request body has been read."""

    def __init__(self, receive):
        self.receive, self.done = receive, False

    async def __call__(self):
        event = await self.receive()
        self.done = self.done or event["type"] != "http.request" or not event.get("more_body", False)
        return event


def _answer(work, body):
    """(status, JSON bytes) of `work(body)`: 400 with the message for bad input, 500 for a fault."""
    try:
        return 200, work(body)
    except InvalidInput as error:
        return 400, encode_json({"error": str(error.reason)})
    except tf.errors.InvalidArgumentError as error:  # the model refused the values: still the client's
        return 400, encode_json({"error": error.message.splitlines()[0]})
    except Exception as error:  # a real server fault
        return 500, encode_json({"error": f"Internal: {type(error).__name__}: {error}"})


async def _send_json(send, status, body, close=False):
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_envelope(send):
    """`send` that rewrites an error answer's {"detail": ...} (FastAPI's) as {"error": ...}."""
    held = {}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"] = message
            return
        if "start" in held and message["type"] == "http.response.body":
            held["body"] = held.get("body", b"") + message.get("body", b"")
            if message.get("more_body"):
                return
            body = held.pop("body")
            try:
                decoded = json.loads(body)
                if isinstance(decoded, dict) and "detail" in decoded and "error" not in decoded:
                    body = encode_json({"error": str(decoded["detail"])})
            except ValueError:
                pass
            start = held.pop("start")
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        return await send(message)

    return wrapped
