"""The HTTP layer in front of KServe: the limits every request passes (Host/Origin, management
endpoints, body size, time and memory, a slot on the bounded pool, the deadline), because KServe and
uvicorn have none of them. V1 and V2 predictions are answered here; connections are guarded in
`helpers.connection_guard`.

The order for a prediction: refuse what can be refused from the request line and headers (no body
is read for a refusal: the connection is closed instead); admit the body's declared size against
the memory budget; read the body within `body_timeout_s` (no pool slot is held while a slow client
sends); take a pool slot; run; answer within the deadline. The slot and the memory go back when the
work ends, even after a 504."""
import asyncio
import json
import logging
import re
import time

import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.request_pool import Refused, RequestPool
from helpers.tf_serving_json import encode_json

# Measured with scripts/benchmark_serving.py --robustness (MobileNet, 2 busy cores): one 16 MiB
# body (5 images as JSON) raised the server's peak RSS from 0.74 to 0.88 GB, and a health check
# during it waited at most 0.19 s; a 64 MiB body (the old limit, 20 images) peaked at 1.23 GB and
# held a health check up to 1.3 s (one C call, orjson.loads or np.asarray, holds the GIL that long).
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# What one byte of a JSON float body costs the server while it is parsed and converted: the peak RSS
# rise during one 16 MiB body of 5 MobileNet images (random floats written by json.dumps, about 20
# characters a number) was 0.135 GB, 8.4 bytes per body byte (scripts/benchmark_serving.py
# --robustness, "rss_bytes_per_body_byte"). Shorter numbers cost more per byte (each is a 24-byte
# Python float and an 8-byte list slot however short its text), so the figure is rounded up to 12.
BYTES_PER_BODY_BYTE = 12
# Requests are admitted while the sum of their declared sizes times BYTES_PER_BODY_BYTE stays within
# this: 3 maximum-size bodies at once (3 x 16 MiB x 12 = 576 MiB); more wait for memory. Measured: 8
# such bodies at once raised the RSS by 0.31 GB (0.80 -> 1.11 GB), all answered 200 in 4.0 s, and a
# health check meanwhile waited 134 ms at the median, 0.72 s at most (before: +2.2-3.5 GB, 504s).
MEMORY_BUDGET_BYTES = 3 * DEFAULT_MAX_REQUEST_BYTES * BYTES_PER_BODY_BYTE
BODY_TIMEOUT_S = 10.0  # a body must arrive within this after its headers (16 MiB at 13 Mbit/s)
IDLE_TIMEOUT_S = 5.0  # a kept-alive connection with no new request is closed after this

MANAGEMENT = re.compile(r"^/(metrics|docs|docs/oauth2-redirect|redoc|openapi\.json|v2|v2/repository(/.*)?)$")
# TF Serving's URL patterns (http_rest_api_util.cc), with ASCII digits: RE2's \d is ASCII only,
# Python's also matches other scripts' digits ("/versions/٢")
V1_PREDICT = re.compile(r"(?i)^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(predict|classify|regress)$")
V1_MODEL = re.compile(r"(?i)^/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?$")
V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
INT64_MAX = 2 ** 63 - 1
log = logging.getLogger("helpers.request_guard")


class MemoryBudget:
    """Admission by declared size: a request waits until its cost fits in `total` bytes beside the
    requests already admitted (one request alone is always admitted), or is refused at its deadline."""

    def __init__(self, total=MEMORY_BUDGET_BYTES):
        self.total, self.used, self._changed = total, 0, None

    async def reserve(self, cost, deadline):
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.used == 0 or self.used + cost <= self.total),
                                       max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Refused(503, f"the server is busy: the requests it holds use its memory budget of "
                                   f"{self.total:,} bytes", close=True) from None
            self.used += cost
        return cost

    async def release(self, cost):
        async with self._changed:
            self.used -= cost
            self._changed.notify_all()


class RequestGuard:
    """ASGI middleware in front of KServe's app: every request passes here.

    Refused with 403: a `Host` that is not this server's loopback address:port (DNS rebinding), an
    `Origin` that is not this server (any web page the reader visits), the management endpoints
    (`/v2/repository/...` unload/load, `/metrics`, `/docs`, `/openapi.json`, `/v2`) unless `management`.
    A POST body over `max_bytes` is refused with 413, one that does not arrive within `body_timeout_s`
    with 408, one that does not fit the memory budget before the deadline with 503. V1 predict and V2
    infer are answered here: parsing, conversion and the model call run on `pool`. Any other error
    answer of KServe's ({"detail": ...}) is rewritten as {"error": ...}."""

    def __init__(self, app, servable, port, max_bytes=DEFAULT_MAX_REQUEST_BYTES, pool=None,
                 body_timeout_s=BODY_TIMEOUT_S, management=False, budget=None):
        self.app, self.servable, self.max_bytes, self.management = app, servable, max_bytes, management
        self.pool = pool or RequestPool()
        self.budget = budget or MemoryBudget(max(MEMORY_BUDGET_BYTES, max_bytes * BYTES_PER_BODY_BYTE))
        self.body_timeout_s = body_timeout_s
        self.hosts = {f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()}
        self.origins = {b"http://" + host for host in self.hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        receive = _Tracked(receive, headers)
        try:
            self._check_caller(scope, headers)
            if scope["method"] == "POST":
                return await self._predict(scope["path"], headers, receive, send)
            if scope["method"] in ("PUT", "PATCH", "DELETE"):
                raise Refused(405, f"Method Not Allowed: {scope['method']}")
            if scope["method"] == "GET" and scope["path"].lower().startswith("/v1/"):
                return await _send_json(send, 200, encode_json(self._model_get(scope["path"])),
                                        close=not receive.done)
        except Refused as refusal:
            return await _send_json(send, refusal.status, encode_json({"error": refusal.message}),
                                    close=refusal.close or not receive.done)
        return await self.app(scope, receive, _error_envelope(send))

    def _check_caller(self, scope, headers):
        host, origin = headers.get(b"host", b""), headers.get(b"origin")
        if host not in self.hosts:
            raise Refused(403, f"Host '{host[:100].decode('latin-1')}' is not this server's address "
                               f"({sorted(self.hosts)[0].decode()}): refused (DNS rebinding guard)")
        if origin is not None and origin not in self.origins:
            raise Refused(403, f"requests from web pages of other origins are refused "
                               f"(Origin: {origin[:100].decode('latin-1')})")
        if MANAGEMENT.match(scope["path"]) and not self.management:
            raise Refused(403, f"{scope['path']} is a management endpoint, off on this server "
                               "(start it with --enable_management to turn it on)")

    def _route(self, path):
        """The work a POST to `path` asks for, or a Refused in TF Serving's words."""
        if (v1 := V1_PREDICT.match(path)):
            name, version, label, method = v1.groups()
            if version is not None and (len(version) > 19 or int(version) > INT64_MAX):
                raise Refused(400, f"Failed to convert version: {version[:40]} to numeric.")
            # the pattern ignores case, but the method is compared as written (http_rest_api_handler.cc
            # :85-96): ":PREDICT" is a malformed request there
            if method in ("classify", "regress"):
                raise Refused(501, f"this engine answers :predict only (TF Serving also answers :{method})")
            if method != "predict":
                raise Refused(400, f"Malformed request: POST {path[:200]}")
            self._check_servable(name, version, label)
            return self.servable.predict_v1_body
        if (v2 := V2_INFER.match(path)):
            name, version = v2.groups()
            if name != self.servable.name:
                raise Refused(404, f"Model with name {name[:100]} does not exist.")
            if version is not None and version != str(self.servable.version):
                raise Refused(404, f"Model {name} has no version {version[:40]}: this engine serves version "
                                   f"{self.servable.version} only")
            return self.servable.predict_v2_body
        if path.lower().startswith("/v1/"):
            raise Refused(400, f"Malformed request: POST {path[:200]}")
        raise Refused(404, "Not Found")

    def _model_get(self, path):
        """TF Serving's answer to GET /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]: the
        model's status or metadata (http_rest_api_handler.cc ProcessModelStatusRequest/...Metadata)."""
        match = V1_MODEL.match(path)
        if not match:
            raise Refused(400, f"Malformed request: GET {path[:200]}")
        name, version, label, metadata = match.groups()
        if not name:
            raise Refused(400, "Missing model name in request.")
        if version is not None and (len(version) > 19 or int(version) > INT64_MAX):
            raise Refused(400, f"Failed to convert version: {version[:40]} to numeric.")
        if metadata == "metadata":  # as written: "/METADATA" gets the status (http_rest_api_handler.cc:98)
            self._check_servable(name, version, label)
            return self.servable.metadata()
        if name != self.servable.name:
            raise Refused(404, f"Could not find any versions of model {name[:100]}")
        if label is not None:
            raise Refused(400, f"Unrecognized servable version label: {label[:100]}")
        try:
            return self.servable.status(None if version is None else int(version))
        except KeyError:
            raise Refused(404, f"Could not find version {int(version)} of model {name}") from None

    def _check_servable(self, name, version, label):
        if name != self.servable.name:
            raise Refused(404, f"Servable not found for request: Latest({name[:100]})")
        if label is not None:
            raise Refused(400, f"Unrecognized servable version label: {label[:100]}")
        if version is not None and int(version) != self.servable.version:
            raise Refused(404, f"Servable not found for request: Specific({name}, {int(version)})")

    def _declared_size(self, headers):
        declared = headers.get(b"content-length")
        if declared is None:  # chunked: counted as the largest body allowed until it has arrived
            return self.max_bytes
        if not declared.isdigit() or len(declared) > 15:
            raise Refused(400, "Content-Length is not a number", close=True)
        if int(declared) > self.max_bytes:
            raise Refused(413, f"request body of {int(declared):,} bytes is over this server's limit "
                               f"of {self.max_bytes:,} bytes", close=True)
        return int(declared)

    async def _read_body(self, receive, deadline):
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

    async def _predict(self, path, headers, receive, send):
        start = time.monotonic()
        deadline = start + self.pool.timeout_s
        work = self._route(path)
        cost = self._declared_size(headers) * BYTES_PER_BODY_BYTE
        await self.budget.reserve(cost, deadline)
        handed_over = False
        try:
            body = await self._read_body(receive, time.monotonic() + self.body_timeout_s)
            await self.pool.acquire(deadline)
            future = self.pool.executor.submit(_answer, work, body)
            del body
            loop = asyncio.get_running_loop()

            def done(_):  # on the pool's thread: give the slot and the memory back on the loop
                loop.call_soon_threadsafe(self.pool.release)
                asyncio.run_coroutine_threadsafe(self.budget.release(cost), loop)

            future.add_done_callback(done)
            handed_over = True
            try:
                status, reply = await asyncio.wait_for(
                    asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Refused(504, f"Deadline exceeded: the request did not finish within "
                                   f"{self.pool.timeout_s:g} s (--rest_api_timeout_in_ms)") from None
            await _send_json(send, status, reply)
        finally:
            if not handed_over:
                await self.budget.release(cost)


class _Tracked:
    """An ASGI `receive` that knows whether the whole request body has been read."""

    def __init__(self, receive, headers):
        self.receive = receive
        self.done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers

    async def __call__(self):
        event = await self.receive()
        self.done = self.done or event["type"] != "http.request" or not event.get("more_body", False)
        return event


def _answer(work, body):
    """(status, JSON bytes) of `work(body)`: 400 with the message for bad input, 500 for a fault.
    Client errors are not logged; a fault is logged by its type only (no request values)."""
    try:
        return 200, work(body)
    except InvalidInput as error:
        return 400, encode_json({"error": str(error.reason)})
    except tf.errors.InvalidArgumentError as error:  # the model refused the values: still the client's
        return 400, encode_json({"error": error.message.splitlines()[0][:1000]})
    except Exception as error:  # a real server fault
        log.error("prediction failed with %s", type(error).__name__)
        return 500, encode_json({"error": f"Internal: {type(error).__name__}: {str(error)[:256]}"})


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
