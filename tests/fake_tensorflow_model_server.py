"""A stand-in for the `tensorflow_model_server` binary, for testing the client code a reader runs
against the real server (chapter 7's real-server branch, `helpers.model_server`).

It answers only with what TF Serving documents, written here from its source at tensorflow/serving
commit 9d981c5 (no code copied):
- flags as in model_servers/main.cc (`--port` 8500 by default, `--grpc_socket_path`,
  `--rest_api_port`, `--model_name`, `--model_base_path`, `--file_system_poll_wait_seconds`), and
  server.cc:182-187 (a gRPC port or a socket path is required: `--port=0` alone is an error);
- status: http_rest_api_handler_test.cc:455-470 (`model_version_status`, version as a string),
  get_model_status_impl.cc (404 "Could not find any versions of model X" / "Could not find version
  N of model X"); a version is LOADING for a moment before AVAILABLE, an unloaded one is END;
- metadata: servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json (a
  SignatureDefMap under metadata.signature_def), here for one input named `image`;
- predict: the half_plus_two test model (x / 2 + 2 for every value), answered under `predictions`
  or `outputs` (api_rest.md), and json_tensor.cc's and http_rest_api_util.cc's error texts;
- start-up: server.cc BuildAndStart checks the gRPC flags (:183-188), then creates its ServerCore
  (:332), which waits, with no time limit, until the model has a version AVAILABLE (server_core.cc
  :391, core/load_servables_fast.cc:84-89, core/servable_state_monitor.h:160-172); only then do
  gRPC and REST start (server.cc:417, :446).
  While the base path has no integer-named child, every poll logs a WARNING "No versions of
  servable ..." and returns OK (sources/storage_path/file_system_storage_path_source.cc:313-320):
  the server keeps waiting, its REST port closed. A REST port already taken is an ERROR line, and
  the server runs on without REST (server.cc:446-454);
- gRPC on --port is bound with SO_REUSEPORT, as gRPC binds it, so two servers share the port
  (tensorflow/serving#1288); a port held by a socket without it makes BuildAndStart fail
  (server.cc:427) and main.cc:344 print "Failed to start server. Error: ..." and return -1;
- a newer version is LOADING while the old one stays AVAILABLE, which then ends (END): the default
  availability-preserving policy (server.cc:313, core/availability_preserving_policy.h:27-31);
- no handler for SIGTERM (the source sets none; it only ignores SIGPIPE, evhttp_server.cc:52): the
  signal ends it, exit status -15, its gRPC socket file left behind;
- log lines in TensorFlow's C++ format, without INFO lines when TF_CPP_MIN_LOG_LEVEL is 1 and
  without WARNING lines too when it is 2 (TensorFlow's logging, which TF Serving uses).
It listens on 127.0.0.1 only (the real one binds every interface), and on --port if not 0.
"""
import json
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FLAGS = {"port": "8500", "grpc_socket_path": "", "rest_api_port": "0", "model_name": "default",
         "model_base_path": "", "file_system_poll_wait_seconds": "1", "rest_api_timeout_in_ms": "30000"}
LOADING_S = 0.6  # how long a new version stays LOADING before it is AVAILABLE
PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
MODEL = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")


def parse(argv):
    flags = dict(FLAGS)
    for arg in argv:
        match = re.fullmatch(r"--(\w+)=(.*)", arg)
        if not match or match.group(1) not in flags:
            sys.exit(f"ERROR: unknown command line flag '{arg.lstrip('-').split('=')[0]}'")
        flags[match.group(1)] = match.group(2)
    return flags


def log(severity, where, message):
    """One line as TensorFlow's C++ logging writes it, unless TF_CPP_MIN_LOG_LEVEL drops it."""
    level = "IWEF".index(severity)
    if level >= int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp}.000000: {severity} tensorflow_serving/{where}] {message}", flush=True)


class Versions:
    """The base path's versions as TF Serving's default policy serves them: the newest only, loaded
    beside the one it replaces, which then ends."""

    def __init__(self, name, base):
        self.name, self.base, self.served, self.loading, self.since, self.ended = name, base, None, None, 0.0, []
        self.lock = threading.Lock()

    def poll(self):
        """One poll of the base path: a version is any child whose name is an integer."""
        found = sorted(int(p.name) for p in Path(self.base).iterdir() if re.fullmatch(r"[0-9]+", p.name))
        if not found:
            log("W", "sources/storage_path/file_system_storage_path_source.cc:314",
                f"No versions of servable {self.name} found under base path {self.base}. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?")
            return
        with self.lock:
            if found[-1] not in (self.served, self.loading):
                self.loading, self.since = found[-1], time.monotonic()

    def states(self):
        with self.lock:
            if self.loading is not None and time.monotonic() - self.since >= LOADING_S:
                if self.served is not None:
                    self.ended.insert(0, self.served)
                self.served, self.loading = self.loading, None
            rows = [] if self.loading is None else [(self.loading, "LOADING")]
            return rows + ([] if self.served is None else [(self.served, "AVAILABLE")]) + \
                [(v, "END") for v in self.ended]

    def available(self):
        return [v for v, state in self.states() if state == "AVAILABLE"]


def status_row(version, state):
    return {"version": str(version), "state": state, "status": {"error_code": "OK", "error_message": ""}}


def metadata(name, version):
    dims = [{"size": size, "name": ""} for size in ("-1", "224", "224", "3")]
    tensor = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": "serving_default_image:0"}
    out = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1000", "name": ""}],
                                                 "unknown_rank": False}, "name": "StatefulPartitionedCall:0"}
    signatures = {"serving_default": {"inputs": {"image": tensor}, "outputs": {"output_0": out},
                                      "method_name": "tensorflow/serving/predict", "defaults": {}},
                  "__saved_model_init_op": {"inputs": {}, "outputs": {"__saved_model_init_op": {
                      "dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": True}, "name": "NoOp"}},
                      "method_name": "", "defaults": {}}}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def half_plus_two(value):
    if isinstance(value, list):
        return [half_plus_two(v) for v in value]
    return value / 2 + 2


def main():
    flags = parse(sys.argv[1:])
    if flags["port"] == "0" and not flags["grpc_socket_path"]:
        sys.exit("At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.")
    name, versions = flags["model_name"], Versions(flags["model_name"], flags["model_base_path"])

    def poller():
        while True:
            versions.poll()
            time.sleep(float(flags["file_system_poll_wait_seconds"]))

    threading.Thread(target=poller, daemon=True).start()
    while not versions.available():  # ServerCore::Create waits, with no time limit
        time.sleep(0.05)
    grpc = []
    if flags["port"] != "0":  # holds the port as the real server's gRPC listener would: gRPC sets
        sock = socket.socket()  # SO_REUSEPORT, so a second server shares it (tensorflow/serving#1288)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", int(flags["port"])))
        except OSError:  # held by a socket that does not share it (main.cc:344, server.cc:427)
            print("Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server", flush=True)
            os._exit(255)  # main() returns -1
        sock.listen()
        grpc.append(sock)
    if flags["grpc_socket_path"]:
        unix = socket.socket(socket.AF_UNIX)
        Path(flags["grpc_socket_path"]).unlink(missing_ok=True)
        unix.bind(flags["grpc_socket_path"])
        unix.listen()
        grpc.append(unix)

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message):
            self.answer(status, {"error": message})

        def do_GET(self):
            match = MODEL.fullmatch(self.path)
            if not match:
                return self.error(400, f"Malformed request: GET {self.path}")
            model, version, label, meta = match.groups()
            if not model:
                return self.error(400, "Missing model name in request.")
            if model != name or not versions.states():
                return self.error(404, f"Could not find any versions of model {model}")
            if meta == "metadata":  # compared as written: "/METADATA" is a status request
                if not versions.available():
                    return self.error(404, f"Servable not found for request: Latest({model})")
                return self.answer(200, metadata(name, versions.available()[0]))
            rows = versions.states()
            if version is not None:
                rows = [row for row in rows if row[0] == int(version)]
                if not rows:
                    return self.error(404, f"Could not find version {version} of model {model}")
            self.answer(200, {"model_version_status": [status_row(*row) for row in rows]})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            match = PREDICT.fullmatch(self.path)
            if not match or match.group(4) not in ("classify", "regress", "predict"):  # compared as written
                return self.error(400, f"Malformed request: POST {self.path}")
            if match.group(4) != "predict":  # the model has a predict signature only
                kind = match.group(4).replace("classify", "classification").replace("regress", "regression")
                return self.error(400, f"Expected {kind} signature method_name to be tensorflow/serving/"
                                       f"{match.group(4)}. Was: tensorflow/serving/predict")
            model, version = match.group(1), match.group(2)
            spec = f"Specific({model}, {version})" if version else f"Latest({model})"
            if model != name or (version and int(version) not in versions.available()) or not versions.available():
                return self.error(404, f"Servable not found for request: {spec}")
            try:
                request = json.loads(body)
            except ValueError:
                return self.error(400, "JSON Parse error: Invalid value. at offset: 0")
            if not isinstance(request, dict):
                return self.error(400, f"JSON Value: {json.dumps(request)[:256]} Is not object")
            keys = {"instances", "inputs"} & set(request)
            if len(keys) == 2:
                return self.error(400, f"JSON Value: {json.dumps(request)[:256]} Not formatted correctly expecting "
                                       "only one of 'inputs' or 'instances' keys to exist ")
            if not keys:
                return self.error(400, "Missing 'inputs' or 'instances' key")
            (key,) = keys
            self.answer(200, {"predictions" if key == "instances" else "outputs": half_plus_two(request[key])})

        def log_message(self, *args):
            pass

    address = f"localhost:{flags['rest_api_port']}"
    try:
        server = ThreadingHTTPServer(("127.0.0.1", int(flags["rest_api_port"])), Handler)
    except OSError:  # the real server runs on, gRPC only
        log("E", "model_servers/server.cc:453", f"Failed to start HTTP Server at {address}")
        while True:
            time.sleep(3600)
    log("I", "model_servers/server.cc:451", f"Exporting HTTP/REST API at:{address} ...")
    server.serve_forever()  # no SIGTERM handler: the signal ends the process (exit status -15)


if __name__ == "__main__":
    main()
