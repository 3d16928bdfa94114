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
  or `outputs` (api_rest.md), and json_tensor.cc's and http_rest_api_util.cc's error texts.
It listens on 127.0.0.1 only (the real one binds every interface), and on --port if not 0.
"""
import json
import os
import re
import signal
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


class Versions:
    """The base path's versions as TF Serving's default policy serves them: the newest only."""

    def __init__(self, base):
        self.base, self.served, self.since, self.ended = Path(base), None, 0.0, []

    def poll(self):
        found = sorted(int(p.name) for p in self.base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())
        if found and found[-1] != self.served:
            if self.served is not None:
                self.ended.insert(0, self.served)
            self.served, self.since = found[-1], time.monotonic()

    def states(self):
        if self.served is None:
            return []
        state = "AVAILABLE" if time.monotonic() - self.since >= LOADING_S else "LOADING"
        return [(self.served, state)] + [(v, "END") for v in self.ended]

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
    grpc = []
    if flags["port"] != "0":  # holds the port as the real server's gRPC listener would
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", int(flags["port"])))
        except OSError:
            sys.exit("Failed to BuildAndStart gRPC server")
        sock.listen()
        grpc.append(sock)
    if flags["grpc_socket_path"]:
        unix = socket.socket(socket.AF_UNIX)
        Path(flags["grpc_socket_path"]).unlink(missing_ok=True)
        unix.bind(flags["grpc_socket_path"])
        unix.listen()
        grpc.append(unix)
    name, versions = flags["model_name"], Versions(flags["model_base_path"])
    versions.poll()
    if versions.served is None:
        print(f"E0000 No versions of servable {name} found under base path {flags['model_base_path']}", flush=True)

    def poller():
        while True:
            time.sleep(float(flags["file_system_poll_wait_seconds"]))
            versions.poll()

    threading.Thread(target=poller, daemon=True).start()

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
            if meta:
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
            if not match or match.group(4).lower() != "predict":
                return self.error(400, f"Malformed request: POST {self.path}")
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

    server = ThreadingHTTPServer(("127.0.0.1", int(flags["rest_api_port"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"Exporting HTTP/REST API at:localhost:{flags['rest_api_port']} ...", flush=True)
    server.serve_forever()
    for sock in grpc:
        sock.close()
    if flags["grpc_socket_path"]:
        Path(flags["grpc_socket_path"]).unlink(missing_ok=True)
    os._exit(0)


if __name__ == "__main__":
    main()
