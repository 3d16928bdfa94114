"""helpers.model_server: a real server process over HTTP; start, answer, refuse, stop."""
import os
import sys

import numpy as np
import psutil
import pytest
import requests
import tensorflow as tf

from helpers.model_server import ModelServer, port_is_open, server_command

LIMIT = 1_000_000  # a small body limit, so the "very large request" case is cheap to send
X = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "toy"
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    model.export(str(root / "1"), verbose=False, input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    return root, model


@pytest.fixture(scope="module")
def server(model_dir):
    root, _ = model_dir
    with ModelServer("toy", root, max_request_bytes=LIMIT, engine="kserve") as running:
        yield running


def predict(server, model="toy", **kwargs):
    return requests.post(f"{server.url}/v1/models/{model}:predict", timeout=30, **kwargs)


def test_v1_predict_over_http(server, model_dir):
    _, model = model_dir
    reply = predict(server, json={"instances": X})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    np.testing.assert_allclose(reply.json()["predictions"], model(np.array(X)), rtol=1e-6)


def test_v2_open_inference_protocol(server, model_dir):
    _, model = model_dir
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": sum(X, [])}]}
    reply = requests.post(f"{server.url}/v2/models/toy/infer", json=body, timeout=30).json()
    (output,) = reply["outputs"]
    assert output["name"] == "output_0" and output["shape"] == [2, 2] and reply["model_version"] == "1"
    np.testing.assert_allclose(np.reshape(output["data"], (2, 2)), model(np.array(X)), rtol=1e-6)


JSON = {"content-type": "application/json"}
BAD_REQUESTS = {  # request: (status, start of the error); the guard's cases quote the guard
    "malformed JSON": (dict(data=b'{"instances": [[1, 2', headers=JSON), 400, "Unrecognized request format"),
    "wrong shape": (dict(json={"instances": [[1.0, 2.0]]}), 400, "instances: shape [1, 2]"),
    "top-level array": (dict(json=[1, 2, 3]), 400, "JSON Value: the request body is not an object"),
    "non-JSON content type": (dict(data=b"x=1", headers={"content-type": "application/x-www-form-urlencoded"}),
                              415, "Content-Type must be application/json"),
    "very large request": (dict(data=b"[" + b"1.0," * (LIMIT // 4 + 10) + b"1]", headers=JSON),
                           413, "request body of 1,000,043 bytes is over this server's limit"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(server, case):
    kwargs, status, message = BAD_REQUESTS[case]
    reply = predict(server, **kwargs)
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"].startswith(message), reply.text[:300]
    assert predict(server, json={"instances": X}).status_code == 200


def test_unknown_model_is_404(server):
    reply = predict(server, model="nosuchmodel", json={"instances": X})
    assert reply.status_code == 404 and "nosuchmodel" in reply.json()["error"]


def test_listens_on_loopback_only_and_on_one_port(server):
    listening = [c.laddr for c in psutil.Process(server.pid).connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", server.port)]  # no 0.0.0.0, no gRPC port


def test_a_server_that_exits_is_reported_with_its_last_error(tmp_path):
    server = ModelServer("toy", tmp_path, engine="kserve")
    server.command = lambda: [sys.executable, "-c", "print('INFO loading'); "
                              "print('FileNotFoundError: No versions of servable toy'); exit(1)"]
    with pytest.raises(RuntimeError, match="^the kserve server exited with status 1: FileNotFoundError: No versions"):
        server.start(timeout=30)


def test_missing_base_path_is_refused_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="model base path '.*nope' is not a directory"):
        ModelServer("m", tmp_path / "nope")


def test_a_temporary_log_file_leaves_no_descriptor_open(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        ModelServer("m", tmp_path)
    assert set(os.listdir("/proc/self/fd")) == before


def test_both_engines_take_tf_servings_flags(tmp_path):
    real = server_command("tensorflow_model_server", "m", "models/m", 8501)
    ours = server_command("kserve", "m", "models/m", 8501)
    assert real[0] == "tensorflow_model_server" and ours[1:3] == ["-m", "helpers.kserve_engine"]
    assert real[1:] == ["--model_name=m", f"--model_base_path={os.path.abspath('models/m')}", "--rest_api_port=8501"]
    assert ours[3:] == ["--model_name=m", "--model_base_path=models/m", "--rest_api_port=8501"]
    with pytest.raises(ValueError, match="engine must be 'tensorflow_model_server' or 'kserve', got 'tfs'"):
        server_command("tfs", "m", "models/m", 8501)


def test_stop_ends_the_process_and_closes_the_port(server):  # last: it stops the module's server
    assert server.stop() == 0
    assert not port_is_open(server.port)
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert server.stop() == 0  # stopping twice is harmless (atexit stops it again)
