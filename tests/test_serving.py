"""helpers.serving against a running server: TF Serving's V1 contract, bad input, loopback only."""
import json

import numpy as np
import psutil
import pytest
import requests
import tensorflow as tf

from helpers.serving import ModelServer, latest_version, port_is_open

LIMIT = 1_000_000  # a small body limit, so the "very large request" case is cheap to send


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """models/toy/1 and models/toy/2: version 2 doubles version 1's outputs."""
    root = tmp_path_factory.mktemp("models") / "toy"
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    spec = [tf.TensorSpec([None, 3], tf.float32, name="x")]
    model.export(str(root / "1"), verbose=False, input_signature=spec)
    model.layers[-1].kernel.assign(model.layers[-1].kernel * 2)
    model.layers[-1].bias.assign(model.layers[-1].bias * 2)
    model.export(str(root / "2"), verbose=False, input_signature=spec)
    return root, model


@pytest.fixture(scope="module")
def server(model_dir):
    root, _ = model_dir
    with ModelServer("toy", root, max_request_bytes=LIMIT) as running:
        yield running
    assert not port_is_open(running.port), "the port is still open after stop()"
    assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == "zombie"


def predict(server, body, model="toy", **kwargs):
    return requests.post(f"{server.url}/v1/models/{model}:predict", json=body, timeout=30, **kwargs)


X = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]


def test_serves_the_newest_version_like_in_process(server, model_dir):
    _, model = model_dir
    reply = predict(server, {"signature_name": "serving_default", "instances": X})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    np.testing.assert_allclose(reply.json()["predictions"], model(np.array(X)), rtol=1e-6)


def test_columnar_inputs_answer_outputs(server, model_dir):
    _, model = model_dir
    reply = predict(server, {"inputs": {"x": X}})
    np.testing.assert_allclose(reply.json()["outputs"], model(np.array(X)), rtol=1e-6)


def test_floats_are_printed_shortest_like_tf_serving(server):
    text = predict(server, {"instances": [[0.0, 0.0, 0.0]]}).text
    values = json.loads(text)["predictions"][0]
    assert all(len(repr(v)) <= 12 for v in values), text  # not 0.0010000000474974513


def test_v2_open_inference_protocol(server, model_dir):
    _, model = model_dir
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": sum(X, [])}]}
    reply = requests.post(f"{server.url}/v2/models/toy/infer", json=body, timeout=30).json()
    (output,) = reply["outputs"]
    assert output["name"] == "output_0" and output["shape"] == [2, 2] and reply["model_version"] == "2"
    np.testing.assert_allclose(np.reshape(output["data"], (2, 2)), model(np.array(X)), rtol=1e-6)


BAD_REQUESTS = {
    "malformed JSON": dict(data=b'{"instances": [[1, 2', headers={"content-type": "application/json"}),
    "missing instances/inputs": dict(json={"signature_name": "serving_default"}),
    "both instances and inputs": dict(json={"instances": X, "inputs": X}),
    "wrong shape": dict(json={"instances": [[1.0, 2.0]]}),
    "ragged rows": dict(json={"instances": [[1.0, 2.0, 3.0], [1.0]]}),
    "wrong dtype": dict(json={"instances": [["a", "b", "c"]]}),
    "unknown signature": dict(json={"signature_name": "nope", "instances": X}),
    "signature name not a string": dict(json={"signature_name": 3, "instances": X}),
    "empty batch": dict(json={"instances": []}),
    "instances not a list": dict(json={"instances": 5}),
    "top-level array": dict(json=[1, 2, 3]),
    "non-JSON content type": dict(data=b"x=1", headers={"content-type": "application/x-www-form-urlencoded"}),
    "very large request": dict(data=b"[" + b"1.0," * (LIMIT // 4 + 10) + b"1]",
                               headers={"content-type": "application/json"}),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving(server, case):
    kwargs = dict(BAD_REQUESTS[case])
    reply = requests.post(f"{server.url}/v1/models/toy:predict", timeout=30, **kwargs)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]
    assert predict(server, {"instances": X}).status_code == 200


def test_unknown_model_is_404(server):
    reply = predict(server, {"instances": X}, model="nosuchmodel")
    assert reply.status_code == 404 and "nosuchmodel" in reply.json()["error"]


def test_listens_on_loopback_only_and_on_one_port(server):
    listening = [c.laddr for c in psutil.Process(server.pid).connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", server.port)]  # no 0.0.0.0, no gRPC port


def test_wrong_base_path_names_it(model_dir):
    root, _ = model_dir
    with pytest.raises(RuntimeError, match=r"No versions of servable toy found under base path .*toy/1"):
        ModelServer("toy", root / "1").start(timeout=60)


def test_latest_version_is_the_highest_integer(tmp_path):
    for name in ("1", "10", "2", "notes"):
        (tmp_path / name).mkdir()
    assert latest_version(tmp_path, "m") == (10, tmp_path / "10")
    with pytest.raises(FileNotFoundError, match="No versions of servable m found under base path"):
        latest_version(tmp_path / "notes", "m")


def test_missing_base_path_is_refused_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="model base path '.*nope' is not a directory"):
        ModelServer("m", tmp_path / "nope")


def test_columnar_input_with_the_wrong_name(server):
    reply = predict(server, {"inputs": {"image": X}})
    assert reply.status_code == 400
    assert reply.json()["error"] == "JSON object: does not have named input: x"
