"""The book's stand-in for `tensorflow_model_server`: TF Serving's REST API on KServe's Python server.

Used where the real C++ server is not installed (it is not on PyPI or Debian). It takes the real
server's flags and serves the newest version folder of a model base path:

    python -m helpers.kserve_engine --model_name=mobilenet --model_base_path=models/mobilenet --rest_api_port=8501

Read top to bottom: `SavedModelServable` (the model: TF Serving's V1 predict, and V2, on one
SavedModel), `RequestGuard` (what every request passes: Host/Origin check, management endpoints
off, body size and time limits, V1 predict run on a bounded thread pool with a timeout),
`GuardedHttp` (connection limits: header and idle timeouts, a connection cap), and `serve()`,
which binds KServe's REST server to the loopback address. Signatures must have one input and one output (every model of
the book does); the real server has no such limit.
"""
import os

_PARENT_PID = os.getppid()  # read first: a parent that dies while TensorFlow imports is noticed too

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import binascii  # noqa: E402
import concurrent.futures  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import kserve  # noqa: E402  (reads sys.argv with parse_known_args: it stores our flags and ignores them)
import kserve.model_server  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import tensorflow as tf  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402
from kserve.utils.utils import generate_uuid  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402

# TF Serving's defaults (model_servers/server.h): REST runs on 4 threads per CPU, each request
# times out after 30 s (--rest_api_timeout_in_ms=30000).
REST_THREADS = 4 * (os.cpu_count() or 1)
REQUEST_TIMEOUT_S = 30.0
# Measured with scripts/benchmark_serving.py --robustness (MobileNet, 2 busy cores): one 16 MiB
# body (5 images as JSON) raised the server's peak RSS from 0.74 to 0.88 GB, and a health check
# during it waited at most 0.19 s; a 64 MiB body (the old limit, 20 images) peaked at 1.23 GB and
# held a health check up to 1.3 s (one C call, orjson.loads or np.asarray, holds the GIL that
# long). With REST_THREADS requests at once the worst case is REST_THREADS times the extra.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
HEADER_TIMEOUT_S = 10.0  # a client must send its request line and headers within this
BODY_TIMEOUT_S = 30.0  # ... and its body within this, after the headers
IDLE_TIMEOUT_S = 5.0  # a kept-alive connection with no new request is closed after this
MAX_CONNECTIONS = 256  # connections over this are closed at once (the usual fd limit is 1024)
V2_TYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64",
            tf.uint8: "UINT8", tf.string: "BYTES", tf.bool: "BOOL"}
# TF Serving's names of dtypes in its messages (DataTypeString): float32 is "float".
TFS_TYPE_NAMES = {tf.float32: "float", tf.float64: "double"}


def latest_version(base_path, model_name):
    """The highest integer-named folder under `base_path`, as TF Serving picks it: (version, path)."""
    base = Path(base_path)
    versions = sorted((int(p.name), p) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) \
        if base.is_dir() else []
    if not versions:
        # TF Serving's own words, so the error reads the same with either engine.
        raise FileNotFoundError(
            f"No versions of servable {model_name} found under base path {base_path}. "
            "The base path must be the parent of integer-named version folders (e.g. models/m/1/).")
    return versions[-1]


def shortest_floats(array):
    """float32 values as their shortest decimal form (0.001, not 0.0010000000474974513), as TF
    Serving prints them; `str(np.float32)` is that form."""
    if array.dtype == np.float32:
        return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    if array.dtype == object:  # tf.string outputs: text, or {"b64": ...} where not UTF-8
        return np.array([_text_or_b64(v) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _text_or_b64(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def decode_json(body):
    """The request body as JSON, with TF Serving's parse errors; like TF Serving (rapidjson with
    kParseNanAndInfFlag) it accepts the non-standard `NaN`, `Infinity` and `-Infinity`."""
    if not body.strip():
        raise InvalidInput("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)  # fast; refuses NaN/Infinity, which the standard library accepts
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidInput(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise InvalidInput(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None


def encode_json(result):
    """JSON as TF Serving writes it: NaN and infinities as `NaN`, `Infinity`, `-Infinity` (not null)."""
    return json.dumps(result, allow_nan=True, separators=(",", ":")).encode()


def _json_type(value):
    """rapidjson's type names, which TF Serving's messages quote."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _fits(dtype):
    """A test that a decoded JSON leaf is a value of `dtype` that TF Serving takes without loss."""
    if dtype.is_floating:
        return lambda v: type(v) in (int, float)
    if dtype.is_integer:
        low, high = int(dtype.min), int(dtype.max)
        return lambda v: type(v) is int and low <= v <= high
    if dtype == tf.bool:
        return lambda v: type(v) is bool
    return lambda v: False


class SavedModelServable(kserve.Model):
    """Every signature of the newest SavedModel version under `base_path`, as a KServe model."""

    def __init__(self, name, base_path, pool=None):
        super().__init__(name)
        self.base_path = base_path
        self.version, self.signatures, self.inputs = None, {}, {}
        self.pool = pool  # where V2 requests run (the RequestGuard runs V1 ones); None: in the caller

    def load(self, warmup=False):
        """Load the newest version. `warmup=True` also calls every signature once on zeros: that RUNS
        the model at start-up, before any request (off by default: a hostile SavedModel would act
        then; TF Serving warms up only from recorded requests in assets.extra/)."""
        self.version, path = latest_version(self.base_path, self.name)
        self._loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self._loaded.signatures)
        for key, fn in self.signatures.items():
            specs = fn.structured_input_signature[1]
            if len(specs) != 1 or len(fn.structured_outputs) != 1:
                raise ValueError(f"signature '{key}' has {len(specs)} inputs and {len(fn.structured_outputs)} "
                                 "outputs; this engine serves one of each (tensorflow_model_server serves any)")
            (name, spec), = specs.items()
            self.inputs[key] = name, spec
            if warmup:
                fn(**{name: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)})
        # Keep the loaded objects out of the cyclic garbage collector: otherwise every full
        # collection scans TensorFlow's ~300k objects and adds ~140 ms to some requests.
        gc.collect()
        gc.freeze()
        self.ready = True
        return self.ready

    def _tensor(self, value, spec, where, scan=True):
        """`value` as a tensor of `spec`, refusing what TF Serving refuses (null, true/false, lossy
        or overflowing ints, strings or {"b64": ...} for numbers, numbers for strings).

        `scan=False` skips the value-by-value check when numpy's own conversion cannot hide a bad
        value (the caller knows the body holds no `true`/`false`)."""
        dtype = spec.dtype
        if dtype == tf.string:
            array = np.array([self._string(v, where) for v in _leaves(value)], dtype=object)
            try:
                array = array.reshape(np.shape(value))
            except ValueError:
                raise InvalidInput(f"{where}: ragged lists, not a tensor") from None
        else:
            try:
                guess = np.asarray(value)
            except ValueError as error:  # ragged lists
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: {error}") from None
            fits = _fits(dtype)
            kind = guess.dtype.kind
            out_of_range = dtype.is_integer and kind == "i" and guess.size and \
                (guess.min() < dtype.min or guess.max() > dtype.max)
            if scan or kind not in "fi" or dtype == tf.bool or (dtype.is_integer and kind == "f") or out_of_range:
                bad = next((v for v in _leaves(value) if not fits(v)), fits)
                if bad is not fits:
                    raise InvalidInput(f"{where}: JSON Value: {json.dumps(bad)} Type: {_json_type(bad)} "
                                       f"is not of expected type: {TFS_TYPE_NAMES.get(dtype, dtype.name)}")
            try:
                array = np.asarray(guess, dtype=dtype.as_numpy_dtype)
            except (ValueError, TypeError) as error:
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: {error}") from None
        if array.size == 0:
            raise InvalidInput(f"{where}: empty input")
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape]
            raise InvalidInput(f"{where}: shape {list(array.shape)} does not match the signature's {expected}")
        return tf.constant(array)

    @staticmethod
    def _string(value, where):
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except binascii.Error:
                raise InvalidInput(f"{where}: Unable to base64 decode") from None
        raise InvalidInput(f"{where}: JSON Value: {json.dumps(value)} Type: {_json_type(value)} "
                           "is not of expected type: string")

    def predict_v1(self, payload, scan=True):
        """TF Serving's V1 predict: a decoded JSON body in, the reply's dict out (raises InvalidInput)."""
        if not isinstance(payload, dict):
            raise InvalidInput("JSON Value: the request body is not an object")
        keys = {"instances", "inputs"} & set(payload)
        if len(keys) == 2:
            raise InvalidInput("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
        if not keys:
            raise InvalidInput("Missing 'inputs' or 'instances' key")
        (key,) = keys
        name = payload.get("signature_name", "serving_default")
        if not isinstance(name, str):
            raise InvalidInput("'signature_name' key must be a string value.")
        if name not in self.signatures:
            raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
        input_name, spec = self.inputs[name]
        data = payload[key]
        if key == "instances":
            if not isinstance(data, list) or not data:
                raise InvalidInput("'instances' must be a non-empty list")
            if isinstance(data[0], dict) and list(data[0]) != ["b64"]:  # rows by name: [{"x": ...}, ...]
                for i, row in enumerate(data):  # json_tensor.cc FillTensorMapFromInstancesList's checks
                    if not isinstance(row, dict):
                        raise InvalidInput(f"Expecting object but got list at item {i} of input list")
                    for row_key in row:
                        if row_key != input_name:
                            raise InvalidInput(f"Failed to process element: {i} key: {row_key} of 'instances' "
                                               f"list. Error: JSON object: does not have named input: {row_key}")
                    if set(row) != {input_name}:
                        raise InvalidInput(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                           f"{json.dumps(row)[:200]} keys must be equal to: {input_name}")
                data = [row[input_name] for row in data]
        elif isinstance(data, dict) and list(data) != ["b64"]:  # columnar by name: {"inputs": {"image": ...}}
            if input_name not in data:
                raise InvalidInput(f"Missing named input: {input_name} in 'inputs' object.")
            data = data[input_name]
        (output,) = self.signatures[name](**{input_name: self._tensor(data, spec, key, scan)}).values()
        return {"predictions" if key == "instances" else "outputs": shortest_floats(output.numpy())}

    def predict_v1_body(self, body):
        """The raw V1 request body in, the reply's JSON bytes out: what the RequestGuard runs on its pool."""
        payload = decode_json(body)
        # numpy turns true/false into 1/0 silently; only a body that holds them needs the full scan
        return encode_json(self.predict_v1(payload, scan=b"true" in body or b"false" in body))

    async def predict(self, payload, headers=None):
        """What KServe's data plane calls: a V2 `InferRequest` (the RequestGuard answers V1 bodies)."""
        if isinstance(payload, dict):
            work = lambda: self.predict_v1(payload)  # noqa: E731
        else:
            work = lambda: self._predict_v2(payload)  # noqa: E731
        if self.pool is None:
            return work()
        return await self.pool.run(work)

    def _predict_v2(self, request):
        input_name, spec = self.inputs["serving_default"]
        if [item.name for item in request.inputs] != [input_name]:
            raise InvalidInput(f"expected one input named '{input_name}', got "
                               f"{[item.name for item in request.inputs]}")
        try:
            value = request.inputs[0].as_numpy()
        except Exception as error:  # shape and data disagree, unknown datatype ...
            raise InvalidInput(f"input '{input_name}': {error}") from None
        if value.dtype != spec.dtype.as_numpy_dtype:
            raise InvalidInput(f"input '{input_name}': datatype {request.inputs[0].datatype} is not the "
                               f"signature's {V2_TYPES.get(spec.dtype, spec.dtype.name)}")
        (output_name, output), = self.signatures["serving_default"](
            **{input_name: self._tensor(value, spec, f"input '{input_name}'", scan=False)}).items()
        outputs = [kserve.InferOutput(name=output_name, shape=list(output.shape),
                                      datatype=V2_TYPES.get(output.dtype, "FP32"),
                                      data=output.numpy().ravel().tolist())]
        return kserve.InferResponse(response_id=request.id or generate_uuid(), model_name=self.name,
                                    infer_outputs=outputs, model_version=str(self.version))

    @staticmethod
    def _types(specs):
        return [{"name": k, "datatype": V2_TYPES.get(s.dtype, "FP32"),
                 "shape": [-1 if d is None else d for d in s.shape]} for k, s in specs.items()]

    def get_input_types(self):  # V2 metadata: GET /v2/models/<name>
        return self._types(self.signatures["serving_default"].structured_input_signature[1])

    def get_output_types(self):
        return self._types(self.signatures["serving_default"].structured_outputs)


class Refused(Exception):
    """A request answered with `status` and {"error": message}; `close` drops the connection after."""

    def __init__(self, status, message, close=False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class RequestPool:
    """A bounded thread pool (TF Serving's size) with a per-request timeout, and slots: at most
    `threads` requests hold a body in memory or run at a time; the others wait for a slot."""

    def __init__(self, threads=REST_THREADS, timeout_s=REQUEST_TIMEOUT_S):
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rest")
        self.threads, self.timeout_s = threads, timeout_s
        self._slots = None

    async def acquire(self, deadline):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Refused(503, f"the server is busy: {self.threads} requests are running and none finished "
                               f"within {self.timeout_s:g} s") from None

    def release(self):
        self._slots.release()

    async def run(self, fn, *args, deadline=None):
        """`fn(*args)` on the pool; 504 if it is not done by `deadline` (it keeps its thread until done)."""
        deadline = deadline or time.monotonic() + self.timeout_s
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Refused(504, f"Deadline exceeded: the request did not finish within {self.timeout_s:g} s "
                               "(--rest_api_timeout_in_ms)") from None


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


def serve(model, port, host="127.0.0.1", max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, threads=REST_THREADS,
          timeout_s=REQUEST_TIMEOUT_S, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
          idle_timeout_s=IDLE_TIMEOUT_S, max_connections=MAX_CONNECTIONS, management=False):
    """Serve `model` over REST on host:port (this machine only by default) until SIGTERM.

    KServe 0.21 binds 0.0.0.0, runs a synchronous predict on its event loop and has no body, time
    or connection limits; its server builds the class `kserve.model_server.RESTServer`, so we put
    in its place a subclass that binds `host`, uses `GuardedHttp` and adds the `RequestGuard`."""
    pool = RequestPool(threads, timeout_s)
    model.pool = pool
    protocol = type("GuardedHttp", (GuardedHttp,), {"header_timeout_s": header_timeout_s,
                                                    "max_connections": max_connections})

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self.config.http = protocol
            self.config.timeout_keep_alive = idle_timeout_s
            # asyncio accepts up to `backlog` queued connections in one go, before any is capped:
            # uvicorn's 2048 ran a server with the usual 1024 open files out of descriptors
            self.config.backlog = 128
            self._server = type(self._server)(self.config)

        def create_application(self):
            super().create_application()
            kserve.model_server.app.add_middleware(
                RequestGuard, servable=model, port=port, max_bytes=max_request_bytes, pool=pool,
                body_timeout_s=body_timeout_s, management=management)

    kserve.model_server.RESTServer = LoopbackRESTServer
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def exit_with_parent(parent_pid=_PARENT_PID, interval_s=0.5):
    """Stop this server (SIGTERM, then exit) when the process that started it is gone, so a killed
    notebook kernel leaves no server behind holding its port and memory."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv=None):
    """Load the newest version and serve it, taking tensorflow_model_server's flag names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--rest_api_num_threads", type=int, default=REST_THREADS)
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=int(REQUEST_TIMEOUT_S * 1000))
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--header_timeout_s", type=float, default=HEADER_TIMEOUT_S)
    parser.add_argument("--body_timeout_s", type=float, default=BODY_TIMEOUT_S)
    parser.add_argument("--idle_timeout_s", type=float, default=IDLE_TIMEOUT_S)
    parser.add_argument("--max_connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--warmup", action="store_true",
                        help="call every signature once at start-up: this RUNS the model before any request")
    parser.add_argument("--enable_management", action="store_true",
                        help="answer /v2/repository (unload, load), /metrics, /docs and /openapi.json")
    parser.add_argument("--keep_running_without_parent", action="store_true",
                        help="do not exit when the process that started this server exits")
    args = parser.parse_args(argv)
    if not args.keep_running_without_parent:
        exit_with_parent()
    model = SavedModelServable(args.model_name, args.model_base_path)
    model.load(warmup=args.warmup)
    serve(model, args.rest_api_port, max_request_bytes=args.max_request_bytes,
          threads=args.rest_api_num_threads, timeout_s=args.rest_api_timeout_in_ms / 1000,
          header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
          idle_timeout_s=args.idle_timeout_s, max_connections=args.max_connections,
          management=args.enable_management)


if __name__ == "__main__":
    main()
