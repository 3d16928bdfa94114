"""helpers.kserve_engine in this process: the V1 contract of the servable, the request guard."""
import asyncio
import json

import numpy as np
import pytest
import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.kserve_engine import RequestGuard, SavedModelServable, latest_version

X = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]


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
def servable(model_dir):
    root, _ = model_dir
    servable = SavedModelServable("toy", str(root))
    servable.load()
    return servable


def test_serves_the_newest_version_like_in_process(servable, model_dir):
    _, model = model_dir
    assert servable.version == 2
    answer = servable.predict({"signature_name": "serving_default", "instances": X})
    np.testing.assert_allclose(answer["predictions"], model(np.array(X)), rtol=1e-6)


def test_columnar_inputs_answer_outputs(servable, model_dir):
    _, model = model_dir
    for body in ({"inputs": {"x": X}}, {"inputs": X}):
        np.testing.assert_allclose(servable.predict(body)["outputs"], model(np.array(X)), rtol=1e-6)


def test_floats_are_the_shortest_that_round_trip_like_tf_serving(servable, model_dir):
    _, model = model_dir
    x = [[0.1, 0.2, 0.3]]
    values = json.loads(json.dumps(servable.predict({"instances": x})))["predictions"][0]
    assert all(v != 0 for v in values)  # a 0.0 output would pass with any printing
    assert all(len(repr(v)) <= 12 for v in values), values  # not -0.30285206437110901
    assert np.array_equal(np.float32(values), model(np.array(x)).numpy()[0])  # and lose nothing


BAD_BODIES = {  # body: the start of the error, in TF Serving's words where it has them
    "missing instances/inputs": ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
    "both instances and inputs": ({"instances": X, "inputs": X}, "Not formatted correctly expecting only one"),
    "wrong shape": ({"instances": [[1.0, 2.0]]}, "instances: shape [1, 2] does not match the signature's [-1, 3]"),
    "ragged rows": ({"instances": [[1.0, 2.0, 3.0], [1.0]]}, "instances: cannot convert to float32"),
    "wrong dtype": ({"instances": [["a", "b", "c"]]}, "instances: cannot convert to float32"),
    "unknown signature": ({"signature_name": "nope", "instances": X}, 'Serving signature name: "nope" not found'),
    "signature name not a string": ({"signature_name": 3, "instances": X}, "'signature_name' key must be a string"),
    "empty batch": ({"instances": []}, "'instances' must be a non-empty list"),
    "instances not a list": ({"instances": 5}, "'instances' must be a non-empty list"),
    "empty columnar input": ({"inputs": []}, "inputs: empty input"),
    "top-level array": ([1, 2, 3], "JSON Value: the request body is not an object"),
    "wrong input name": ({"inputs": {"image": X}}, "JSON object: does not have named input: x"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_body_is_invalid_input_with_tf_servings_words(servable, case):
    body, message = BAD_BODIES[case]
    with pytest.raises(InvalidInput) as error:
        servable.predict(body)
    assert str(error.value.reason).startswith(message), error.value.reason


def test_signatures_with_several_inputs_are_refused_at_load(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda a, b: {"y": a + b},
                           input_signature=[tf.TensorSpec([None], tf.float32)] * 2)
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="signature 'serving_default' has 2 inputs and 1 outputs"):
        SavedModelServable("m", str(tmp_path / "m")).load()


def test_latest_version_is_the_highest_integer(tmp_path):
    for name in ("1", "10", "2", "notes"):
        (tmp_path / name).mkdir()
    assert latest_version(tmp_path, "m") == (10, tmp_path / "10")
    with pytest.raises(FileNotFoundError, match="No versions of servable m found under base path"):
        latest_version(tmp_path / "notes", "m")


def call_guard(headers, body=b"", max_bytes=10):
    """One POST through RequestGuard in front of an app that answers 200; (status, JSON body)."""
    sent, events = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return events.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RequestGuard(app, max_bytes)(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_guard_lets_a_small_json_body_through():
    assert call_guard({"content-type": "application/json", "content-length": "2"}, b"{}") == (200, {})


@pytest.mark.parametrize("headers, status, message", [
    ({"content-type": "text/plain", "content-length": "2"}, 415, "Content-Type must be application/json"),
    ({"content-type": "application/json"}, 411, "a Content-Length header is required"),
    ({"content-type": "application/json", "content-length": "11"}, 413, "request body of 11 bytes is over"),
])
def test_guard_refuses_with_a_json_error(headers, status, message):
    got_status, body = call_guard(headers, b"x" * 11)
    assert got_status == status and body["error"].startswith(message)
