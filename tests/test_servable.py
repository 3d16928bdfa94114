"""helpers.servable in this process: the V1 contract of the servable (TF Serving's json_tensor.cc
rules and texts), warm-up, the replies' JSON; the parser and the request gate have their own test files."""
import json

import numpy as np
import pytest
import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.servable import SavedModelServable, latest_version
from helpers.tf_serving_json import encode_json

X = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]
W = np.array([[0.5, -1.25], [2.0, 0.1], [-0.3, 0.7]], np.float32)
B = np.array([0.1, -0.2], np.float32)


class Toy(tf.Module):
    """One signature per dtype the tests need; serving_default is x @ w + b."""

    def __init__(self, scale):
        super().__init__()
        self.w, self.b = tf.Variable(W * scale), tf.Variable(B * scale)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def dense(self, x):
        return {"output_0": tf.matmul(x, self.w) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
    def double(self, n):
        return {"doubled": n * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def length(self, text):
        return {"length": tf.strings.length(text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def reciprocal(self, x):
        return {"y": 1.0 / x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="seconds")])
    def busy(self, seconds):
        """Keeps a core busy for seconds[0] s: a slow model, for the timeout and off-loop tests."""
        start = tf.timestamp()
        tf.while_loop(lambda i: tf.timestamp() - start < tf.cast(seconds[0], tf.float64),
                      lambda i: [i + 1], [tf.constant(0)])
        return {"y": seconds}


def export_toy(root):
    """root/1 and root/2 (version 2 doubles version 1's dense outputs); returns root."""
    for version, scale in (("1", 1), ("2", 2)):
        toy = Toy(scale)
        tf.saved_model.save(toy, str(root / version), signatures={
            "serving_default": toy.dense, "double": toy.double, "length": toy.length,
            "reciprocal": toy.reciprocal, "busy": toy.busy})
    return root


def expected(x, scale=2):
    return np.array(x, np.float32) @ (W * scale) + B * scale


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_toy(tmp_path_factory.mktemp("models") / "toy")


@pytest.fixture(scope="module")
def servable(model_dir):
    servable = SavedModelServable("toy", str(model_dir))
    servable.load()
    return servable


def test_serves_the_newest_version_like_in_process(servable):
    assert servable.version == 2
    answer = servable.predict_v1({"signature_name": "serving_default", "instances": X})
    np.testing.assert_allclose(answer["predictions"], expected(X), rtol=1e-6)


def test_columnar_inputs_answer_outputs(servable):
    for body in ({"inputs": {"x": X}}, {"inputs": X}):
        np.testing.assert_allclose(servable.predict_v1(body)["outputs"], expected(X), rtol=1e-6)


def test_rows_by_input_name(servable):
    answer = servable.predict_v1({"instances": [{"x": row} for row in X]})
    np.testing.assert_allclose(answer["predictions"], expected(X), rtol=1e-6)


def test_floats_are_the_shortest_that_round_trip_like_tf_serving(servable):
    x = [[0.1, 0.2, 0.3]]
    values = json.loads(encode_json(servable.predict_v1({"instances": x})))["predictions"][0]
    assert all(v != 0 for v in values)  # a 0.0 output would pass with any printing
    assert any(len(repr(float(np.float32(v)))) > 12 for v in values)  # float64 printing would be long
    assert all(len(repr(v)) <= 12 for v in values), values  # ... TF Serving's is not
    assert np.array_equal(np.float32(values), expected(x)[0])  # and loses nothing


def test_infinite_outputs_are_written_as_tf_serving_writes_them(servable):
    # json_tensor.cc WriteDecimal: "NaN", "Infinity", "-Infinity" (not null)
    reply = encode_json(servable.predict_v1({"signature_name": "reciprocal", "inputs": [0.0, -0.0, 4.0]}))
    assert reply == b'{"outputs":[Infinity,-Infinity,0.25]}'


BAD_BODIES = {  # body: the start of the error, in TF Serving's words where it has them
    "missing instances/inputs": ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
    "both instances and inputs": ({"instances": X, "inputs": X}, "Not formatted correctly expecting only one"),
    "wrong shape": ({"instances": [[1.0, 2.0]]}, "instances: shape [1, 2] does not match the signature's [-1, 3]"),
    "ragged rows": ({"instances": [[1.0, 2.0, 3.0], [1.0]]}, "instances: cannot convert to float32"),
    "unknown signature": ({"signature_name": "nope", "instances": X}, 'Serving signature name: "nope" not found'),
    "signature name not a string": ({"signature_name": 3, "instances": X}, "'signature_name' key must be a string"),
    "empty batch": ({"instances": []}, "'instances' must be a non-empty list"),
    "instances not a list": ({"instances": 5}, "'instances' must be a non-empty list"),
    "empty columnar input": ({"inputs": []}, "inputs: empty input"),
    "top-level array": ([1, 2, 3], "JSON Value: the request body is not an object"),
    # json_tensor.cc FillTensorMapFromInputsMap / FillTensorMapFromInstancesList
    "wrong input name": ({"inputs": {"image": X}}, "Missing named input: x in 'inputs' object."),
    "missing key in a row": ({"instances": [{"x": X[0]}, {}]},
                             "Failed to process element: 1 of 'instances' list. JSON object: {} keys must be"),
    "unknown key in a row": ({"instances": [{"x": X[0]}, {"y": X[1]}]}, "Failed to process element: 1 key: y of "
                             "'instances' list. Error: JSON object: does not have named input: y"),
    "a list among rows": ({"instances": [{"x": X[0]}, X[1]]}, "Expecting object but got list at item 1"),
    # json_tensor.cc AddValueToTensor: TypeError(...) for every value that is not of the input's type
    "string for a float": ({"instances": [["a", "b", "c"]]},
                           'instances: JSON Value: "a" Type: String is not of expected type: float'),
    "null for a float": ({"instances": [[1.0, None, 3.0]]},
                         "instances: JSON Value: null Type: Null is not of expected type: float"),
    "true for a float": ({"instances": [[1.0, True, 3.0]]},
                         "instances: JSON Value: true Type: True is not of expected type: float"),
    "b64 for a float": ({"instances": [[{"b64": "AAAA"}, 1.0, 2.0]]},
                        'instances: JSON Value: {"b64": "AAAA"} Type: Object is not of expected type: float'),
    "1.7 for an int32": ({"signature_name": "double", "inputs": [1, 1.7]},
                         "inputs: JSON Value: 1.7 Type: Number is not of expected type: int32"),
    "int32 overflow": ({"signature_name": "double", "inputs": [1, 2 ** 31]},
                       "inputs: JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    "NaN for an int32": ({"signature_name": "double", "inputs": [float("nan")]},
                         "inputs: JSON Value: NaN Type: Number is not of expected type: int32"),
    "number for a string": ({"signature_name": "length", "inputs": ["ok", 3]},
                            "inputs: JSON Value: 3 Type: Number is not of expected type: string"),
    "bad base64": ({"signature_name": "length", "inputs": [{"b64": "not base64!"}]},
                   "inputs: Unable to base64 decode"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_body_is_invalid_input_with_tf_servings_words(servable, case):
    body, message = BAD_BODIES[case]
    with pytest.raises(InvalidInput) as error:
        servable.predict_v1(body)
    assert str(error.value.reason).startswith(message), error.value.reason


def test_a_body_without_true_or_false_skips_the_scan_and_still_refuses(servable):
    # the server scans value by value only when the body holds true/false (numpy hides those);
    # everything else is refused by numpy's own conversion or the dtype test
    for body in ({"signature_name": "double", "inputs": [1, 1.7]}, {"instances": [[1.0, None, 3.0]]}):
        with pytest.raises(InvalidInput, match="is not of expected type"):
            servable.predict_v1(body, scan=False)


def test_accepted_values(servable):
    assert servable.predict_v1({"signature_name": "double", "inputs": [1, -2 ** 31 // 2]})["outputs"] == [2, -2 ** 31]
    assert servable.predict_v1({"signature_name": "length", "inputs": ["abc", {"b64": "AAEC"}]})["outputs"] == [3, 3]
    np.testing.assert_allclose(servable.predict_v1({"instances": [[1, 2, 3]]})["predictions"], expected([[1, 2, 3]]))


def test_signatures_with_several_inputs_are_refused_at_load(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda a, b: {"y": a + b},
                           input_signature=[tf.TensorSpec([None], tf.float32)] * 2)
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="signature 'serving_default' has 2 inputs and 1 outputs"):
        SavedModelServable("m", str(tmp_path / "m")).load()


def test_warm_up_runs_the_model_so_it_is_off_by_default(tmp_path):
    canary = tmp_path / "ran.txt"
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def f(x):
        tf.io.write_file(str(canary), "ran")  # a stateful op: it runs whenever the signature does
        return {"y": x}

    module.f = f
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.f})
    SavedModelServable("m", str(tmp_path / "m")).load()
    assert not canary.exists()  # loading alone runs nothing of the model
    SavedModelServable("m", str(tmp_path / "m")).load(warmup=True)
    assert canary.read_text() == "ran"  # warm-up calls the signature: the model's ops run


def test_latest_version_is_the_highest_integer(tmp_path):
    for name in ("1", "10", "2", "notes"):
        (tmp_path / name).mkdir()
    assert latest_version(tmp_path, "m") == (10, tmp_path / "10")
    with pytest.raises(FileNotFoundError, match="No versions of servable m found under base path"):
        latest_version(tmp_path / "notes", "m")
