"""A model server as a child process of the notebook: start it, wait until it is ready, stop it by PID.

The engine is the real `tensorflow_model_server` when it is on PATH (Colab after `apt install`),
else the book's KServe engine (`helpers.kserve_engine`), started with the same flags. Chapter 7
shows the `subprocess.Popen` call and the readiness loop once by hand before using `ModelServer`.
"""
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


def server_command(engine, model_name, model_base_path, port, max_request_bytes=None):
    """The command line that starts `engine` with TF Serving's flags."""
    if engine == "tensorflow_model_server":
        # It also opens gRPC on --port (default 8500) and binds 0.0.0.0, with no flag to change
        # that (tensorflow/serving#1969): run it only where the network is yours.
        return ["tensorflow_model_server", f"--model_name={model_name}",
                f"--model_base_path={os.path.abspath(model_base_path)}",  # must be absolute
                f"--rest_api_port={port}"]
    if engine != "kserve":
        raise ValueError(f"engine must be 'tensorflow_model_server' or 'kserve', got {engine!r}")
    limit = [] if max_request_bytes is None else [f"--max_request_bytes={max_request_bytes}"]
    return [sys.executable, "-m", "helpers.kserve_engine", f"--model_name={model_name}",
            f"--model_base_path={model_base_path}", f"--rest_api_port={port}", *limit]


class ModelServer:
    """One model server as a subprocess: `start()`, `url`, `stop()`; also a context manager.

    `engine` is "tensorflow_model_server" when that binary is on PATH, else "kserve".
    The server's output goes to a temporary file, `log_path`.
    """

    def __init__(self, model_name, model_base_path, port=None, engine=None, max_request_bytes=None):
        if not Path(model_base_path).is_dir():
            raise FileNotFoundError(f"model base path '{model_base_path}' is not a directory")
        self.model_name = model_name
        self.model_base_path = str(model_base_path)
        self.port = port or free_port()
        self.engine = engine or ("tensorflow_model_server" if shutil.which("tensorflow_model_server")
                                 else "kserve")
        descriptor, self.log_path = tempfile.mkstemp(prefix=f"{model_name}-server-", suffix=".log")
        os.close(descriptor)  # start() opens it by name
        self.max_request_bytes = max_request_bytes
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command(self):
        return server_command(self.engine, self.model_name, self.model_base_path, self.port,
                              self.max_request_bytes)

    def start(self, timeout=120):
        """Start the server and wait until `GET /v1/models/<name>` answers 200."""
        import requests
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        atexit.register(self.stop)  # a kernel that exits stops its server (one that is killed does not)
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
        """Stop the server by its PID (SIGTERM, then SIGKILL), wait until its port is closed, and
        return its exit status (None if it was never started)."""
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
            while port_is_open(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} is still open after its server exited")
                time.sleep(0.1)
        return self.process.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
