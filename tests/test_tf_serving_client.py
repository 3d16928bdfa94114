"""Chapter 7's code for the real `tensorflow_model_server` (the branch Colab readers run after `apt
install`), run against a stand-in that answers only what TF Serving documents
(`tests/fake_tensorflow_model_server.py`, which cites the source of every answer): the chapter's
own cells, taken from the notebook, with the stand-in first on PATH."""
import contextlib
import io
import json
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers.model_server import ModelServer, grpc_socket_path, port_is_open, server_command

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).with_name("fake_tensorflow_model_server.py")


@pytest.fixture
def real_server_on_path(tmp_path, monkeypatch):
    """A `tensorflow_model_server` on PATH (the stand-in), a working folder with models/mobilenet/1 and 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    binary = bin_dir / "tensorflow_model_server"
    binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "work"
    for version in ("1", "2"):
        (work / "models" / "mobilenet" / version).mkdir(parents=True)
        (work / "models" / "mobilenet" / version / "saved_model.pb").write_bytes(b"")
    monkeypatch.chdir(work)
    return work


def chapter_cell(marker):
    """The source of chapter 7's one code cell that contains `marker`."""
    notebook = json.loads((ROOT / "notebooks" / "07_serving.ipynb").read_text())
    sources = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    (source,) = [s for s in sources if marker in s]
    return source


def run_cells(namespace, *markers):
    """Run the chapter's cells found by `markers` in `namespace`; what they printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for marker in markers:
            exec(compile(chapter_cell(marker), f"<chapter 7: {marker}>", "exec"), namespace)
    return out.getvalue()


def test_model_server_puts_grpc_on_a_socket_file_so_two_servers_share_no_port(real_server_on_path):
    first = ModelServer("mobilenet", "models/mobilenet")
    second = ModelServer("mobilenet", "models/mobilenet")
    assert first.engine == "tensorflow_model_server"
    assert first.command()[-2:] == ["--port=0", f"--grpc_socket_path={grpc_socket_path('mobilenet', first.port)}"]
    first.launch(), second.launch()  # both load at once
    try:  # without --port=0 both would listen for gRPC on port 8500 (sharing it, serving#1288)
        first.wait_ready(), second.wait_ready()
        assert port_is_open(first.port) and port_is_open(second.port)
        assert Path(grpc_socket_path("mobilenet", first.port)).exists()
        for server in (first, second):  # started as chapter 7's Popen: no variable added, same process group
            env = psutil.Process(server.pid).environ()
            assert {k: env.get(k) for k in os.environ} == dict(os.environ)
            assert set(env) - set(os.environ) <= {"COLUMNS", "LINES"}  # readline's, in the C environment
            assert os.getpgid(server.pid) == os.getpgid(0)
    finally:
        first.stop(), second.stop()
    assert not Path(grpc_socket_path("mobilenet", first.port)).exists()  # left by the killed server, removed


def test_a_grpc_port_another_program_holds_fails_the_start(real_server_on_path):
    """Two TF Serving processes share --port (gRPC binds it with SO_REUSEPORT, tensorflow/serving#1288);
    a port that a socket without SO_REUSEPORT holds fails the start, in main.cc's words (the
    troubleshooting entry quotes them)."""
    import subprocess
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        command = server_command("tensorflow_model_server", "mobilenet", "models/mobilenet", port=0)
        result = subprocess.run(command + [f"--port={other.getsockname()[1]}"], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 255  # main() returns -1
    assert "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server" in result.stdout


def test_start_refuses_a_version_folder_and_a_taken_rest_port_at_once(real_server_on_path):
    # with either, tensorflow_model_server would run on and never be ready (the stand-in's docstring)
    begin = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"^No versions of servable mobilenet found under base path "
                                                r"models/mobilenet/1: .*: pass its parent, models/mobilenet$"):
        ModelServer("mobilenet", "models/mobilenet/1").start(timeout=30)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ModelServer("mobilenet", "models/mobilenet", port=port)
        with pytest.raises(RuntimeError, match=f"could not open its REST port: .* E tensorflow_serving/"
                                               f"model_servers/server.cc:453] Failed to start HTTP Server at "
                                               f"localhost:{port}$"):
            server.start(timeout=30)
    assert time.monotonic() - begin < 10  # refused, not waited for until the timeout
    assert server.process.returncode == -9 and not Path(server.log_path).exists()
    assert not Path(grpc_socket_path("mobilenet", port)).exists()


def test_on_a_version_folder_tf_serving_waits_and_wait_ready_says_why(real_server_on_path):
    server = ModelServer("mobilenet", "models/mobilenet/1").launch()  # launch(): no check first
    deadline = time.monotonic() + 10
    while "No versions of servable" not in Path(server.log_path).read_text():  # its first poll has run
        assert time.monotonic() < deadline and server.process.poll() is None, Path(server.log_path).read_text()
        time.sleep(0.05)
    with pytest.raises(TimeoutError) as error:
        server.wait_ready(timeout=0.5)
    # TF Serving's warning reaches the log (the helper does not set TF_CPP_MIN_LOG_LEVEL) and the error
    assert (f"No versions of servable mobilenet found under base path {os.path.abspath('models/mobilenet/1')}. "
            "Did you forget to name your leaf directory as a number (eg. '/1/')?") in str(error.value)
    assert server.process.returncode == -15  # it was still running, waiting: stopped by SIGTERM
    Path(server.log_path).unlink()


def test_the_stand_in_refuses_what_tf_serving_refuses(real_server_on_path):
    # server.cc:182-187: with --port=0, gRPC needs a socket path; the book's command always gives one
    command = server_command("tensorflow_model_server", "m", "models/mobilenet", 8501)
    import subprocess
    run = subprocess.run([*command, "--port=0"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "grpc_socket_path must be set" in run.stderr


def test_the_chapters_real_server_cells_read_tf_servings_documented_answers(real_server_on_path):
    import numpy as np
    import requests
    body = {"signature_name": "serving_default", "instances": [[1.0, 2.0, 5.0]]}
    namespace = {"os": os, "sys": sys, "np": np, "requests": requests, "shutil": shutil, "body": body}
    printed = run_cells(namespace, 'command = ["tensorflow_model_server"', "deadline = time.monotonic() + 120",
                        'print("exit status:", process.wait(')
    assert "--port=0 --grpc_socket_path=" in printed  # the command's last flags
    assert "'state': 'AVAILABLE'" in printed  # the readiness loop waited until the REST port opened
    assert "exit status: -15" in printed  # no SIGTERM handler: the signal ends it
    printed = run_cells(namespace, "assert ModelServer(", "listening_addresses(server.pid)",
                        'metadata = requests.get(', 'os.rename("models/next"')
    lines = printed.splitlines()
    assert lines[0] == "engine: tensorflow_model_server"
    assert lines[1] == "['127.0.0.1:REST port']"  # no gRPC port: it is a socket file
    assert lines[2] == ("{'model_version_status': [{'version': '2', 'state': 'AVAILABLE', "
                        "'status': {'error_code': 'OK', 'error_message': ''}}]}")
    assert lines[3] == "['__saved_model_init_op', 'serving_default'] DT_FLOAT ['-1', '224', '224', '3']"
    assert lines[4] == "versions/2:predict -> 200 (a prediction)"
    assert lines[5] == "versions/1:predict -> 404 Servable not found for request: Specific(mobilenet, 1)"
    assert lines[6] == "[('3', 'AVAILABLE'), ('2', 'END')]"  # the default policy unloads 2 once 3 is loaded
    assert lines[7] == "versions/3:predict -> 200"
    printed = run_cells(namespace, "print(\"exit status:\", server.stop())")
    assert printed.splitlines() == ["exit status: -15", "port still open: False", "log file left: False"]
