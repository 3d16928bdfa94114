"""The book's stand-in for `tensorflow_model_server`: TF Serving's REST API on KServe's Python server.

Used where the real C++ server is not installed (it is not on PyPI or Debian). It takes the real
server's flags and serves the newest version folder of a model base path:

    python -m helpers.kserve_engine --model_name=mobilenet --model_base_path=models/mobilenet --rest_api_port=8501

Read top to bottom: `SavedModelServable` (the model: TF Serving's V1 predict, and V2, on one
SavedModel) and `serve()`, which binds KServe's REST server to the loopback address behind
`helpers.request_guard` (what every request and connection passes); the JSON rules are in
`helpers.tf_serving_json`. Signatures must have one input and one output (every model of
the book does); the real server has no such limit.
"""
import os

_PARENT_PID = os.getppid()  # read first: a parent that dies while TensorFlow imports is noticed too

import argparse  # noqa: E402
import base64  # noqa: E402
import binascii  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import kserve  # noqa: E402  (reads sys.argv with parse_known_args: it stores our flags and ignores them)
import kserve.model_server  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402
from kserve.utils.utils import generate_uuid  # noqa: E402

from helpers.request_guard import (BODY_TIMEOUT_S, DEFAULT_MAX_REQUEST_BYTES, HEADER_TIMEOUT_S,  # noqa: E402, F401
                                   IDLE_TIMEOUT_S, MAX_CONNECTIONS, REQUEST_TIMEOUT_S, REST_THREADS,
                                   GuardedHttp, Refused, RequestGuard, RequestPool)  # re-exported
from helpers.tf_serving_json import (TFS_TYPE_NAMES, _fits, _json_type, _leaves, decode_json,  # noqa: E402, F401
                                     encode_json, shortest_floats)  # re-exported

V2_TYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64",
            tf.uint8: "UINT8", tf.string: "BYTES", tf.bool: "BOOL"}


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
            # asyncio accepts up to `backlog` queued connections per loop turn, and a connection is
            # capped two turns after it was accepted and closed one turn later: on a slow loop three
            # bursts are open at once (uvicorn's 2048 ran out of the usual 1024 descriptors; 128
            # ran a 200-descriptor test server out on a loaded CI machine). 32 keeps that under 100.
            self.config.backlog = 32
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
