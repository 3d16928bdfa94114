"""A model server as a child process of the notebook: start it, wait until it is ready, stop it by PID.

The engine is the real `tensorflow_model_server` when it is on PATH (Colab after `apt install`),
else the book's KServe engine (`helpers.kserve_engine`), started with the same flags. Chapter 7
shows the `subprocess.Popen` call and the readiness loop once by hand before using `ModelServer`.
"""
import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A log line that reports an error: an OS error ("[Errno 98] ... address already in use"), a
# Python exception line, a log record at level ERROR/CRITICAL, TensorFlow's C++ error lines
# ("E1126 ..." or "2026-11-26 12:00:00.000000: E file.cc:453] ...") and TF Serving's warning "No
# versions of servable" (it waits for a version then). Not every line that contains "error"
# ("uvicorn.error INFO").
ERROR_LINE = re.compile(r"\[Errno \d+\]|^\s*(\w+\.)*\w*(Error|Exception)\b:|\b(ERROR|CRITICAL)\b|"
                        r"^E\d{4} |^[\d-]+ [\d:.]+: E |No versions of servable")


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


def inet_connections(process):
    """A psutil.Process's TCP/UDP connections: `net_connections` (psutil 6+; `connections` is
    deprecated there), or `connections` on older psutil (Colab's 5.9)."""
    return getattr(process, "net_connections", process.connections)("inet")


def listening_addresses(pid):
    """The (address, port) pairs process `pid` listens on, read from the operating system."""
    import psutil
    return sorted({(c.laddr.ip, c.laddr.port) for c in inet_connections(psutil.Process(pid))
                   if c.status == psutil.CONN_LISTEN})


def listens_on(pid, port):
    """True if process `pid` (or one of its children) is the one listening on TCP `port`."""
    import psutil
    try:
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in inet_connections(p)):
                return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return False


def version_number(name):
    """The version a folder name stands for, or None: ASCII digits only, within int64; not
    str.isdigit(), which accepts '²' (int() then fails) and '٢' (int() reads 2). TF Serving parses
    the name with absl::SimpleAtoi (file_system_storage_path_source.cc:87-89), which also accepts
    surrounding whitespace and a sign: it would serve '+3' or ' 3' as version 3, and this skips them."""
    return int(name) if re.fullmatch(r"[0-9]+", name) and int(name) < 2 ** 63 else None


def version_folders(base_path):
    """The version folders under `base_path`, lowest version first (a model server serves the highest)."""
    base = Path(base_path)
    return sorted((p for p in base.iterdir() if p.is_dir() and version_number(p.name) is not None),
                  key=lambda p: version_number(p.name)) if base.is_dir() else []


def grpc_socket_path(model_name, port):
    """Where `ModelServer` has the real server put its gRPC API: a socket file named after the model
    and REST port (so two servers never share it), instead of TCP port 8500 on every interface."""
    return os.path.join(tempfile.gettempdir(), f"{model_name}-{port}.grpc.sock")


def is_available(reply):
    """True if a `GET /v1/models/<name>` reply lists a version in state AVAILABLE (TF Serving's
    GetModelStatusResponse: {"model_version_status": [{"version": "2", "state": "AVAILABLE", ...}]})."""
    if reply.status_code != 200:
        return False
    try:
        return any(v.get("state") == "AVAILABLE" for v in reply.json()["model_version_status"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def server_command(engine, model_name, model_base_path, port, max_request_bytes=None, warmup=False,
                   grpc_socket=None):
    """The command line that starts `engine` with TF Serving's flags. For tensorflow_model_server,
    `grpc_socket` (a path) moves its gRPC API from TCP port 8500 to that socket file (`--port=0`)."""
    if engine == "tensorflow_model_server":
        if warmup:
            raise ValueError("tensorflow_model_server warms up only from recorded requests in the "
                             "SavedModel's assets.extra/tf_serving_warmup_requests, not from a flag")
        # Without --port=0 it also opens gRPC on --port (default 8500); both bind 0.0.0.0, with
        # no flag to change that (tensorflow/serving#1969): run it only where the network is yours.
        grpc = [] if grpc_socket is None else ["--port=0", f"--grpc_socket_path={grpc_socket}"]
        return ["tensorflow_model_server", f"--model_name={model_name}",
                f"--model_base_path={os.path.abspath(model_base_path)}",  # must be absolute
                f"--rest_api_port={port}", *grpc]
    if engine != "kserve":
        raise ValueError(f"engine must be 'tensorflow_model_server' or 'kserve', got {engine!r}")
    extra = ([] if max_request_bytes is None else [f"--max_request_bytes={max_request_bytes}"]) + \
        (["--warmup"] if warmup else [])
    return [sys.executable, "-m", "helpers.kserve_engine", f"--model_name={model_name}",
            f"--model_base_path={model_base_path}", f"--rest_api_port={port}", *extra]


class ModelServer:
    """One model server as a subprocess: `start()`, `url`, `stop()`; also a context manager.

    `engine` is "tensorflow_model_server" when that binary is on PATH, else "kserve".
    The server's output goes to a temporary file, `log_path`, removed by `stop()` unless `keep_log`.
    Loading a SavedModel already runs its restore and its resources' initializers; `warmup=True`
    (KServe engine) also calls every signature once at start-up.
    """

    def __init__(self, model_name, model_base_path, port=None, engine=None, max_request_bytes=None,
                 warmup=False, keep_log=False, extra_flags=()):
        if not Path(model_base_path).is_dir():
            raise FileNotFoundError(f"model base path '{model_base_path}' is not a directory")
        self.model_name = model_name
        self.model_base_path = str(model_base_path)
        self.port = port or free_port()
        self.engine = engine or ("tensorflow_model_server" if shutil.which("tensorflow_model_server")
                                 else "kserve")
        self.max_request_bytes, self.warmup, self.keep_log = max_request_bytes, warmup, keep_log
        self.extra_flags = list(extra_flags)
        self.log_path = None  # created by start()
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command(self):
        """The engine's command line; the real server gets its gRPC API on a socket file
        (`grpc_socket_path`), so it takes no fixed TCP port beside the free REST port."""
        grpc = grpc_socket_path(self.model_name, self.port) if self.engine == "tensorflow_model_server" else None
        return server_command(self.engine, self.model_name, self.model_base_path, self.port,
                              self.max_request_bytes, self.warmup, grpc) + self.extra_flags

    def launch(self):
        """Start the server process and return at once (`wait_ready()` waits for it): the `Popen`
        call chapter 7 makes by hand, in the caller's environment and process group, its output
        going to a temporary log file."""
        descriptor, self.log_path = tempfile.mkstemp(prefix=f"{self.model_name}-server-", suffix=".log")
        with os.fdopen(descriptor, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # a kernel that exits stops its server; the KServe engine also
        return self  # exits by itself when its parent is killed (helpers.kserve_engine.exit_with_parent)

    def check(self):
        """Refuse a base path that is a version folder itself (it holds a saved_model.pb): TF Serving
        finds no integer-named version folder in it, logs a warning and waits for one with no time
        limit (file_system_storage_path_source.cc:313-320, server_core.cc:391)."""
        base = Path(self.model_base_path)
        if (base / "saved_model.pb").exists() and not version_folders(base):
            raise FileNotFoundError(f"No versions of servable {self.model_name} found under base path {base}: "
                                    f"it holds a saved_model.pb, so it is a version folder itself: pass its "
                                    f"parent, {base.parent}")
        return self

    def wait_ready(self, timeout=120):
        """Wait until this server's own process listens on the port and `GET /v1/models/<name>`
        reports a version AVAILABLE (another program answering on the port does not count). At
        start-up either engine answers only once its model has loaded; the state is read all the
        same because the status answers 200 for a version still LOADING (a model added by a config
        reload, get_model_status_impl.cc:95-106). A tensorflow_model_server
        that logs `Failed to start HTTP Server` (its REST port is taken: it would run on without
        REST, server.cc:446-454) is killed and reported at once."""
        import requests
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.last_error()
                self._remove_log()
                raise RuntimeError(f"the {self.engine} server exited with status "
                                   f"{self.process.returncode}: {error}")
            if self.engine == "tensorflow_model_server" and self._log_says("Failed to start HTTP Server"):
                # TF Serving runs on without REST when its port is taken (server.cc:446-454)
                error = self.last_error()
                self.process.kill()  # not stop(): the port it waits to see closed is another's
                self.process.wait()
                self._remove_log()
                Path(grpc_socket_path(self.model_name, self.port)).unlink(missing_ok=True)
                raise RuntimeError(f"the {self.engine} server could not open its REST port: {error}")
            if listens_on(self.process.pid, self.port):
                try:
                    if is_available(requests.get(f"{self.url}/v1/models/{self.model_name}", timeout=1)):
                        return self
                except requests.ConnectionError:
                    pass
            time.sleep(0.2)
        self.keep_log = True
        self.stop()
        raise TimeoutError(f"the {self.engine} server did not become ready in {timeout} s: "
                           f"{self.last_error()} (log kept: {self.log_path})")

    def start(self, timeout=120):
        """Check the base path, start the server and wait until it is ready (`check()`, `launch()`,
        then `wait_ready()`)."""
        return self.check().launch().wait_ready(timeout)

    def _log_says(self, text):
        return bool(self.log_path) and Path(self.log_path).exists() and \
            text in Path(self.log_path).read_text(errors="replace")

    def last_error(self):
        """The last line of the server log that reports an error (else its last line)."""
        if not self.log_path or not Path(self.log_path).exists():
            return "(no log)"
        lines = Path(self.log_path).read_text(errors="replace").splitlines()
        errors = [line for line in lines if ERROR_LINE.search(line)]
        return (errors or lines or ["(no output)"])[-1].strip()

    def _remove_log(self):
        if self.log_path and not self.keep_log:
            Path(self.log_path).unlink(missing_ok=True)

    def stop(self, timeout=15):
        """Stop the server by its PID (SIGTERM, then SIGKILL), wait until its port is closed, remove
        its log (unless `keep_log`), and return its exit status (None if it was never started): 0
        from the KServe engine, -15 (killed by SIGTERM) from tensorflow_model_server, which sets no
        handler for it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            deadline = time.monotonic() + timeout
            while listens_on(self.process.pid, self.port) or port_is_open(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} is still open after its server exited")
                time.sleep(0.1)
        self._remove_log()
        if self.engine == "tensorflow_model_server":
            Path(grpc_socket_path(self.model_name, self.port)).unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
