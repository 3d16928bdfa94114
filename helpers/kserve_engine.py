"""The book's stand-in for `tensorflow_model_server`: TF Serving's REST API on KServe's Python server.

Used where the real C++ server is not installed (it is not on PyPI or Debian). It takes the real
server's flags and serves the newest version folder of a model base path:

    python -m helpers.kserve_engine --model_name=mobilenet --model_base_path=models/mobilenet --rest_api_port=8501

Three parts, read top to bottom: `SavedModelServable` (the model: V1 and V2 predict on one
SavedModel signature), `RequestGuard` (JSON-only bodies under a size limit), and `serve()`, which
binds KServe's REST server to the loopback address. Signatures must have one input and one output
(every model of the book does); the real server has no such limit.
"""
import argparse
import gc
import json
from pathlib import Path

import kserve  # reads sys.argv with parse_known_args: it stores our flags and ignores them
import kserve.model_server
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput
from kserve.protocol.rest.server import RESTServer
from kserve.utils.utils import generate_uuid

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # 20 MobileNet images as JSON
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


def shortest_floats(array):
    """float32 values as their shortest decimal form (0.001, not 0.0010000000474974513), as TF
    Serving prints them; `str(np.float32)` is that form."""
    if array.dtype == np.float32:
        return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    return array.tolist()


class SavedModelServable(kserve.Model):
    """Every signature of the newest SavedModel version under `base_path`, as a KServe model."""

    def __init__(self, name, base_path):
        super().__init__(name)
        self.base_path = base_path
        self.version, self.signatures, self.inputs = None, {}, {}

    def load(self):
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
            fn(**{name: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)})  # warm-up
        # Keep the loaded objects out of the cyclic garbage collector: otherwise every full
        # collection scans TensorFlow's ~300k objects and adds ~140 ms to some requests.
        gc.collect()
        gc.freeze()
        self.ready = True
        return self.ready

    def _tensor(self, value, spec, where):
        try:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
        except (ValueError, TypeError) as error:
            raise InvalidInput(f"{where}: cannot convert to {spec.dtype.name}: {error}") from None
        if array.size == 0:
            raise InvalidInput(f"{where}: empty input")
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape]
            raise InvalidInput(f"{where}: shape {list(array.shape)} does not match the signature's {expected}")
        return tf.constant(array)

    def predict(self, payload, headers=None):
        """TF Serving's V1 body (a dict) or a V2 `InferRequest`."""
        if isinstance(payload, kserve.InferRequest):
            return self._predict_v2(payload)
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
        if key == "instances" and (not isinstance(data, list) or not data):
            raise InvalidInput("'instances' must be a non-empty list")
        if isinstance(data, dict):  # columnar by name: {"inputs": {"image": ...}}
            if input_name not in data:
                raise InvalidInput(f"JSON object: does not have named input: {input_name}")
            data = data[input_name]
        (output,) = self.signatures[name](**{input_name: self._tensor(data, spec, key)}).values()
        return {"predictions" if key == "instances" else "outputs": shortest_floats(output.numpy())}

    def _predict_v2(self, request):
        input_name, spec = self.inputs["serving_default"]
        if [item.name for item in request.inputs] != [input_name]:
            raise InvalidInput(f"expected one input named '{input_name}', got "
                               f"{[item.name for item in request.inputs]}")
        try:
            value = request.inputs[0].as_numpy()
        except Exception as error:  # shape and data disagree, unknown datatype ...
            raise InvalidInput(f"input '{input_name}': {error}") from None
        (output_name, output), = self.signatures["serving_default"](**{input_name: self._tensor(value, spec, f"input '{input_name}'")}).items()
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


class RequestGuard:
    """ASGI middleware: a POST body must be JSON and at most `max_bytes`, else 415/411/413 with a
    JSON error (the body is drained, not stored, so the connection stays usable)."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        length = headers.get(b"content-length")
        if ctype not in ("application/json", ""):
            return await self._refuse(receive, send, 415, f"Content-Type must be application/json, got '{ctype}'")
        if length is None:
            return await self._refuse(receive, send, 411, "a Content-Length header is required")
        if int(length) > self.max_bytes:
            return await self._refuse(receive, send, 413, f"request body of {int(length):,} bytes is over "
                                                          f"this server's limit of {self.max_bytes:,} bytes")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(receive, send, status, message):
        more = True
        while more:  # drain the body without keeping it
            event = await receive()
            more = event["type"] == "http.request" and event.get("more_body", False)
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(model, port, host="127.0.0.1", max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
    """Serve `model` over REST on host:port (this machine only by default) until SIGTERM.

    KServe 0.21 binds 0.0.0.0 and has no body-size limit; its server builds the class
    `kserve.model_server.RESTServer`, so we put in its place a subclass that binds `host` and
    adds the `RequestGuard`."""

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self._server = type(self._server)(self.config)

        def create_application(self):
            super().create_application()
            kserve.model_server.app.add_middleware(RequestGuard, max_bytes=max_request_bytes)

    kserve.model_server.RESTServer = LoopbackRESTServer
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def main(argv=None):
    """Load the newest version and serve it, taking tensorflow_model_server's flag names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    args = parser.parse_args(argv)
    model = SavedModelServable(args.model_name, args.model_base_path)
    model.load()
    serve(model, args.rest_api_port, max_request_bytes=args.max_request_bytes)


if __name__ == "__main__":
    main()
