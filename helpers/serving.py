"""Serving a SavedModel over TensorFlow Serving's REST API, from a notebook.

Two engines speak that API:

- the real `tensorflow_model_server`, used whenever it is on PATH (Colab after `apt install`,
  the `tensorflow/serving` Docker image);
- otherwise KServe's Python model server, whose V1 protocol is TF Serving's, with
  `SavedModelServable` below as the model: it loads the highest version folder of a model base
  path and calls a SavedModel signature, like TF Serving does.

`ModelServer` starts either one as a subprocess, waits until it answers, and stops it by PID.
Run the KServe engine alone with the real server's flags:

    python -m helpers.serving --model_name=mobilenet --model_base_path=models/mobilenet --rest_api_port=8501
"""
import argparse
import atexit
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # 20 MobileNet images as JSON


# --------------------------------------------------------------------------- the model (server side)

def latest_version(base_path, model_name):
    """The highest integer-named folder under `base_path`, as TF Serving picks it."""
    base = Path(base_path)
    versions = sorted((int(p.name), p) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) \
        if base.is_dir() else []
    if not versions:
        # TF Serving's own words, so the error reads the same with either engine.
        raise FileNotFoundError(
            f"No versions of servable {model_name} found under base path {base_path}. "
            "The base path must be the parent of integer-named version folders (e.g. models/m/1/).")
    return versions[-1]


def _kserve_model_class():
    """Build the kserve.Model subclass lazily, so importing helpers needs no kserve."""
    import numpy as np
    import tensorflow as tf
    from kserve import InferOutput, InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput
    from kserve.utils.utils import generate_uuid

    v2_types = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64",
                tf.uint8: "UINT8", tf.string: "BYTES", tf.bool: "BOOL"}

    def as_json_numbers(array):
        """float32 values as their shortest decimal form (0.001, not 0.0010000000474974513),
        which is how TF Serving prints them."""
        if array.dtype == np.float32:
            shortest = [float(str(v)) for v in array.ravel()]  # str(np.float32) is shortest
            return np.array(shortest, dtype=object).reshape(array.shape).tolist()
        return array.tolist()

    class SavedModelServable(Model):
        """A KServe model that serves every signature of the newest SavedModel version."""

        def __init__(self, name, base_path):
            super().__init__(name)
            self.base_path = base_path
            self.version = None
            self.signatures = {}

        gc_freeze = True  # the benchmark turns it off to measure what it saves

        def load(self):
            self.version, path = latest_version(self.base_path, self.name)
            self._loaded = tf.saved_model.load(str(path))
            self.signatures = dict(self._loaded.signatures)
            for fn in self.signatures.values():  # warm-up: the first call of a function is slow
                _, specs = fn.structured_input_signature
                fn(**{k: tf.zeros([1 if d is None else d for d in s.shape], s.dtype)
                      for k, s in specs.items()})
            # Freeze the loaded objects out of the cyclic garbage collector: otherwise every full
            # collection scans TensorFlow's ~300k objects and adds ~140 ms to some requests.
            if self.gc_freeze:
                gc.collect()
                gc.freeze()
            self.ready = True
            return self.ready

        # -- V1 (TF Serving) ------------------------------------------------------------
        def _signature(self, name):
            if not isinstance(name, str):
                raise InvalidInput("'signature_name' key must be a string value.")
            if name not in self.signatures:
                raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
            return self.signatures[name]

        def _tensor(self, value, spec, where):
            try:
                array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
            except (ValueError, TypeError) as error:
                raise InvalidInput(f"{where}: cannot convert to {spec.dtype.name}: {error}") from None
            if array.size == 0:
                raise InvalidInput(f"{where}: empty input")
            if not spec.shape.is_compatible_with(array.shape):
                expected = [-1 if d is None else d for d in spec.shape]
                raise InvalidInput(f"{where}: shape {list(array.shape)} does not match the "
                                   f"signature's {expected}")
            return tf.constant(array)

        def predict(self, payload, headers=None):
            if isinstance(payload, InferRequest):
                return self._predict_v2(payload)
            if not isinstance(payload, dict):
                raise InvalidInput("JSON Value: the request body is not an object")
            keys = {"instances", "inputs"} & set(payload)
            if len(keys) == 2:
                raise InvalidInput(
                    "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
            if not keys:
                raise InvalidInput("Missing 'inputs' or 'instances' key")
            (key,) = keys
            fn = self._signature(payload.get("signature_name", "serving_default"))
            _, specs = fn.structured_input_signature
            data = payload[key]
            if key == "instances" and (not isinstance(data, list) or not data):
                raise InvalidInput("'instances' must be a non-empty list")
            if len(specs) == 1:
                (name, spec), = specs.items()
                if isinstance(data, dict):  # columnar {"inputs": {"name": value}}
                    if name not in data:
                        raise InvalidInput(f"JSON object: does not have named input: {name}")
                    data = data[name]
                feeds = {name: self._tensor(data, spec, key)}
            else:
                feeds = self._multi_input(data, specs, key)
            outputs = {k: v.numpy() for k, v in fn(**feeds).items()}
            answer = "predictions" if key == "instances" else "outputs"
            if len(outputs) == 1:
                return {answer: as_json_numbers(next(iter(outputs.values())))}
            if key == "inputs":
                return {answer: {k: as_json_numbers(v) for k, v in outputs.items()}}
            rows = len(next(iter(outputs.values())))
            return {answer: [{k: as_json_numbers(v[i]) for k, v in outputs.items()} for i in range(rows)]}

        def _multi_input(self, data, specs, key):
            if key == "instances":
                if not all(isinstance(row, dict) for row in data):
                    raise InvalidInput("instances is a plain list, but expecting list of objects as "
                                       "multiple input tensors required")
                data = {name: [row.get(name) for row in data] for name in specs}
            if not isinstance(data, dict) or set(data) != set(specs):
                raise InvalidInput(f"{key}: expected the named inputs {sorted(specs)}")
            return {name: self._tensor(data[name], spec, f"{key}['{name}']") for name, spec in specs.items()}

        # -- V2 (Open Inference Protocol) -----------------------------------------------
        def _predict_v2(self, request):
            fn = self.signatures["serving_default"]
            _, specs = fn.structured_input_signature
            feeds = {}
            for item in request.inputs:
                if item.name not in specs:
                    raise InvalidInput(f"unknown input '{item.name}'; this model takes {sorted(specs)}")
                try:
                    value = item.as_numpy()
                except Exception as error:  # shape and data disagree, unknown datatype ...
                    raise InvalidInput(f"input '{item.name}': {error}") from None
                feeds[item.name] = self._tensor(value, specs[item.name], f"input '{item.name}'")
            if set(feeds) != set(specs):
                raise InvalidInput(f"expected the inputs {sorted(specs)}")
            outputs = [InferOutput(name=k, shape=list(v.shape), datatype=v2_types.get(v.dtype, "FP32"),
                                   data=v.numpy().ravel().tolist())
                       for k, v in sorted(fn(**feeds).items())]
            return InferResponse(response_id=request.id or generate_uuid(), model_name=self.name,
                                 infer_outputs=outputs, model_version=str(self.version))

        def _types(self, specs):
            return [{"name": k, "datatype": v2_types.get(s.dtype, "FP32"),
                     "shape": [-1 if d is None else d for d in s.shape]} for k, s in sorted(specs.items())]

        def get_input_types(self):
            return self._types(self.signatures["serving_default"].structured_input_signature[1])

        def get_output_types(self):
            return self._types(self.signatures["serving_default"].structured_outputs)

    return SavedModelServable


# --------------------------------------------------------------------------- the server process

class _RequestGuard:
    """ASGI middleware: POST bodies must be JSON and at most `max_bytes`; answered 415/411/413
    with a JSON error (the body is drained, not stored, so the connection stays usable)."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        length = headers.get(b"content-length")
        if ctype not in ("application/json", ""):
            return await self._refuse(receive, send, 415,
                                      f"Content-Type must be application/json, got '{ctype}'")
        if length is None:
            return await self._refuse(receive, send, 411, "a Content-Length header is required")
        if int(length) > self.max_bytes:
            return await self._refuse(receive, send, 413,
                                      f"request body of {int(length):,} bytes is over this "
                                      f"server's limit of {self.max_bytes:,} bytes")
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


def _patch_kserve_rest_server(host, max_bytes):
    """KServe 0.21 hard-codes host="0.0.0.0" and has no body-size limit. Its ModelServer builds
    `kserve.model_server.RESTServer`; swap that class for one that binds `host` and guards requests."""
    import kserve.model_server
    from kserve.protocol.rest.server import RESTServer

    class GuardedRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self._server = type(self._server)(self.config)

        def create_application(self):
            super().create_application()
            kserve.model_server.app.add_middleware(_RequestGuard, max_bytes=max_bytes)

    kserve.model_server.RESTServer = GuardedRESTServer


def main(argv=None):
    """Serve one model with KServe, taking tensorflow_model_server's flag names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--rest_api_host", default="127.0.0.1",
                        help="address to listen on; 127.0.0.1 (this machine only) unless you ask")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--no_gc_freeze", action="store_true",
                        help="leave the loaded model in the garbage collector's view (slower)")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # kserve parses sys.argv at import; give it none of ours

    from kserve import ModelServer
    _patch_kserve_rest_server(args.rest_api_host, args.max_request_bytes)
    model = _kserve_model_class()(args.model_name, args.model_base_path)
    model.gc_freeze = not args.no_gc_freeze
    model.load()
    ModelServer(http_port=args.rest_api_port, enable_grpc=False, workers=1).start([model])


# --------------------------------------------------------------------------- the client side

def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_open(port, host="127.0.0.1"):
    """True if something accepts connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class ModelServer:
    """One model server as a subprocess: `start()`, `url`, `stop()`; also a context manager.

    `engine` is "tensorflow_model_server" when that binary is on PATH, else "kserve".
    The server's output goes to `log_path` (a temporary file unless given).
    """

    def __init__(self, model_name, model_base_path, port=None, engine=None, log_path=None,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, extra_flags=()):
        if not Path(model_base_path).is_dir():
            raise FileNotFoundError(f"model base path '{model_base_path}' is not a directory")
        self.model_name = model_name
        self.model_base_path = str(model_base_path)  # the server runs in this directory too
        self.port = port or free_port()
        self.engine = engine or ("tensorflow_model_server" if shutil.which("tensorflow_model_server")
                                 else "kserve")
        self.log_path = log_path or tempfile.mkstemp(prefix=f"{model_name}-server-", suffix=".log")[1]
        self.max_request_bytes = max_request_bytes
        self.extra_flags = list(extra_flags)
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command(self):
        if self.engine == "tensorflow_model_server":
            # The real server also opens gRPC (--port); it binds 0.0.0.0 and has no flag to change
            # that (tensorflow/serving#1969), so run it only where the network is yours.
            return ["tensorflow_model_server", f"--rest_api_port={self.port}", f"--port={free_port()}",
                    f"--model_name={self.model_name}",
                    f"--model_base_path={os.path.abspath(self.model_base_path)}"]  # must be absolute
        return [sys.executable, "-m", "helpers.serving", f"--model_name={self.model_name}",
                f"--model_base_path={self.model_base_path}", f"--rest_api_port={self.port}",
                f"--max_request_bytes={self.max_request_bytes}", *self.extra_flags]

    def start(self, timeout=120):
        """Start the server and wait until `GET /v1/models/<name>` answers 200."""
        import requests
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        atexit.register(self.stop)  # a kernel that exits or crashes takes its server with it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.engine} server exited with status "
                                   f"{self.process.returncode}: {self.last_error()}")
            try:
                if requests.get(f"{self.url}/v1/models/{self.model_name}", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the {self.engine} server did not become ready in {timeout} s; "
                           f"log: {self.log_path}")

    def last_error(self):
        """The last line of the server log that reports an error."""
        lines = Path(self.log_path).read_text(errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line or "No versions" in line]
        return (errors or lines or ["(no output)"])[-1].strip()

    def stop(self, timeout=15):
        """Stop the server by its PID (SIGTERM, then SIGKILL) and wait until its port is closed."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    main()
