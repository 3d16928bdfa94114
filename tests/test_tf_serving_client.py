"""Chapter 7's code for the real `tensorflow_model_server` (the branch Colab readers run after `apt
install`), run against a stand-in that answers only what TF Serving documents
(`tests/fake_tensorflow_model_server.py`, which cites the source of every answer): the chapter's
own cells, taken from the notebook, with the stand-in first on PATH."""
import contextlib
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path

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


def test_model_server_puts_grpc_on_a_socket_file_so_two_servers_can_run(real_server_on_path):
    first = ModelServer("mobilenet", "models/mobilenet")
    second = ModelServer("mobilenet", "models/mobilenet")
    assert first.engine == "tensorflow_model_server"
    assert first.command()[-2:] == ["--port=0", f"--grpc_socket_path={grpc_socket_path('mobilenet', first.port)}"]
    with first, second:  # without --port=0 both would listen for gRPC on port 8500
        assert port_is_open(first.port) and port_is_open(second.port)
        assert Path(grpc_socket_path("mobilenet", first.port)).exists()
    assert not Path(grpc_socket_path("mobilenet", first.port)).exists()


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
    printed = run_cells(namespace, 'command = ["tensorflow_model_server"', "for _ in range(600):",
                        "process.terminate()")
    assert "--port=0 --grpc_socket_path=" in printed  # the command's last flags
    assert "'state': 'AVAILABLE'" in printed  # the readiness loop waited past LOADING
    assert "exit status: 0" in printed
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
    assert lines[6].startswith("{'version': '3', 'state': 'AVAILABLE'")
    assert lines[7] == "versions/3:predict -> 200"
    printed = run_cells(namespace, "print(\"exit status:\", server.stop())")
    assert printed.splitlines() == ["exit status: 0", "port still open: False", "log file left: False"]
