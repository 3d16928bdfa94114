"""helpers.servable in this process: the V1 contract of the servable (TF Serving's json_tensor.cc
rules and texts), warm-up, the replies' JSON; the parser and the request gate have their own test files."""
import base64
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.model_server import version_folders
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

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo(self, text):
        return {"text": text}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo_bytes(self, text):
        return {"text_bytes": text}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
    def big(self, n):
        """One string of 8 * n[0] bytes: a large reply from a small request."""
        return {"text": tf.strings.reduce_join(tf.fill([n[0]], "abcdefgh"), keepdims=True)}

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
            "reciprocal": toy.reciprocal, "busy": toy.busy, "echo": toy.echo, "echo_bytes": toy.echo_bytes,
            "big": toy.big})
    return root


def expected(x, scale=2):
    return np.array(x, np.float32) @ (W * scale) + B * scale


_TOY_EXPORT = []  # the toy exported once per test process (~1.5 s), copied for each module that serves it


def toy_models(tmp_path_factory):
    """A fresh copy of the toy's version folders 1 and 2, which its user may change."""
    if not _TOY_EXPORT:
        _TOY_EXPORT.append(export_toy(tmp_path_factory.mktemp("toy-export") / "toy"))
    return shutil.copytree(_TOY_EXPORT[0], tmp_path_factory.mktemp("models") / "toy")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy_models(tmp_path_factory)


def answer(servable, body):
    """The reply to `body` as a client reads it: the engine's JSON bytes, decoded."""
    return json.loads(encode_json(servable.predict_v1(body)))


@pytest.fixture(scope="module")
def servable(model_dir):
    servable = SavedModelServable("toy", str(model_dir))
    servable.load()
    return servable


def test_serves_the_newest_version_like_in_process(servable):
    assert servable.version == 2
    reply = answer(servable, {"signature_name": "serving_default", "instances": X})
    np.testing.assert_allclose(reply["predictions"], expected(X), rtol=1e-6)


def test_columnar_inputs_answer_outputs(servable):
    for body in ({"inputs": {"x": X}}, {"inputs": X}):
        np.testing.assert_allclose(answer(servable, body)["outputs"], expected(X), rtol=1e-6)


def test_rows_by_input_name(servable):
    reply = answer(servable, {"instances": [{"x": row} for row in X]})
    np.testing.assert_allclose(reply["predictions"], expected(X), rtol=1e-6)


def test_floats_are_written_as_tf_servings_write_decimal_and_lose_nothing(servable):
    x = [[0.1, 0.2, 0.3]]
    text = encode_json(servable.predict_v1({"instances": x})).decode()
    values = json.loads(text)["predictions"][0]
    assert all(v != 0 for v in values)  # a 0.0 output would pass with any printing
    assert any(len(repr(float(np.float32(v)))) > 12 for v in values)  # float64 printing would be long
    written = text.split("[[")[1].split("]]")[0].split(",")
    # json_tensor.cc WriteDecimal: "%g" (6 digits) if that reads back as the same float32, else "%.9g"
    assert written == [("%g" % v) if np.float32("%g" % v) == np.float32(v) else "%.9g" % v
                       for v in expected(x)[0]], written
    assert np.array_equal(np.float32(values), expected(x)[0])  # and loses nothing


def test_infinite_outputs_are_written_as_tf_serving_writes_them(servable):
    # json_tensor.cc WriteDecimal: "NaN", "Infinity", "-Infinity" (not null)
    reply = encode_json(servable.predict_v1({"signature_name": "reciprocal", "inputs": [0.0, -0.0, 4.0]}))
    assert reply == b'{"outputs":[Infinity,-Infinity,0.25]}'


BAD_BODIES = {  # body: the start of the error, in TF Serving's words where it has them
    "missing instances/inputs": ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
    "both instances and inputs": ({"instances": X[:1], "inputs": X[:1]},
                                  'JSON Value: {\n    "instances": [[1.0, 2.0, 3.0]],\n    "inputs": [[1.0, 2.0, 3.0]]\n} '
                                  "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    "wrong shape": ({"instances": [[1.0, 2.0]]}, "instances: shape [1, 2] does not match the signature's [-1, 3]"),
    "ragged rows": ({"instances": [[1.0, 2.0, 3.0], [1.0]]}, "instances: cannot convert to float32"),
    "unknown signature": ({"signature_name": "nope", "instances": X}, 'Serving signature name: "nope" not found'),
    "signature name not a string": ({"signature_name": 3, "instances": X},
                                    "JSON Value: {\n    \"signature_name\": 3,\n    \"instances\": [[1.0, 2.0, 3.0], "
                                    "[-1.0, 0.5, 4.0]]\n} not formatted correctly. 'signature_name' key must be a string"),
    "empty batch": ({"instances": []}, 'JSON Value: {\n    "instances": []\n} No values in \'instances\' array'),
    "instances not a list": ({"instances": 5}, "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array"),
    "empty columnar input": ({"inputs": []}, "inputs: empty input"),
    "top-level array": ([1, 2, 3], "JSON Value: [1, 2, 3] Is not object"),
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
                        'instances: JSON Value: {\n    "b64": "AAAA"\n} Type: Object is not of expected type: float'),
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
    assert answer(servable, {"signature_name": "double", "inputs": [1, -2 ** 31 // 2]})["outputs"] == [2, -2 ** 31]
    assert answer(servable, {"signature_name": "length", "inputs": ["abc", {"b64": "AAEC"}]})["outputs"] == [3, 3]
    np.testing.assert_allclose(answer(servable, {"instances": [[1, 2, 3]]})["predictions"], expected([[1, 2, 3]]))
    # an empty name means serving_default, as in TF Serving (http_rest_api_handler.cc:233-234)
    np.testing.assert_allclose(answer(servable, {"signature_name": "", "instances": [[1, 2, 3]]})["predictions"],
                               expected([[1, 2, 3]]))


def test_signatures_with_several_inputs_are_refused_at_load(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda a, b: {"y": a + b},
                           input_signature=[tf.TensorSpec([None], tf.float32)] * 2)
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="signature 'serving_default' has 2 inputs and 1 outputs"):
        SavedModelServable("m", str(tmp_path / "m")).load()


def test_one_signature_with_two_outputs_refuses_the_whole_savedmodel(tmp_path):
    """As chapter 7 says: chapter 4's `scale_and_double` (two outputs) beside a one-output
    `serving_default` keeps the whole SavedModel off this engine."""
    module = tf.Module()
    module.one = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    module.two = tf.function(lambda x: {"y": x, "z": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "m" / "1"),
                        signatures={"serving_default": module.one, "scale_and_double": module.two})
    with pytest.raises(ValueError, match="signature 'scale_and_double' has 1 inputs and 2 outputs"):
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
    assert not canary.exists()  # loading ran nothing of this model (it has no resource initializers)
    SavedModelServable("m", str(tmp_path / "m")).load(warmup=True)
    assert canary.read_text() == "ran"  # warm-up calls the signature: the model's ops run


def test_latest_version_is_the_highest_integer(tmp_path):
    for name in ("1", "10", "2", "notes"):
        (tmp_path / name).mkdir()
    assert latest_version(tmp_path, "m") == (10, tmp_path / "10")
    with pytest.raises(FileNotFoundError, match="No versions of servable m found under base path"):
        latest_version(tmp_path / "notes", "m")


def test_latest_version_skips_names_that_are_not_ascii_integers(tmp_path):
    """The rule of ModelServer.version_folders, and TF Serving's: a name that does not parse as an
    int64 of ASCII digits is skipped (file_system_storage_path_source.cc:87-89), not a crash ('²' is
    str.isdigit() but not int()) and not a version ('٢' would be version 2 to int())."""
    for name in ("1", "²", "٢٢", "99999999999999999999"):  # the last is past int64: TF Serving skips it
        (tmp_path / name).mkdir()
    assert latest_version(tmp_path, "m") == (1, tmp_path / "1")
    assert version_folders(tmp_path) == [tmp_path / "1"]


def test_a_status_request_never_sees_the_new_version_available_without_the_old_one_ended(tmp_path, monkeypatch):
    """Chapter 7's version-3 solution stops polling once 3 is AVAILABLE and prints every state: the
    swap and the END of the old version must be one change (they were two, and a status request
    between them saw 3 AVAILABLE and no 2)."""
    import helpers.servable as servable_module
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.f})
    served = SavedModelServable("m", str(tmp_path / "m"))
    served.load()
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")
    seen = []
    freeze = servable_module.gc.freeze
    monkeypatch.setattr(servable_module.gc, "freeze", lambda: (seen.append(served.status()), freeze()))
    assert served.load_newer()  # gc.freeze runs inside the swap, after the new version is set
    expected = [("2", "AVAILABLE"), ("1", "END")]
    for status in seen + [served.status()]:
        assert [(v["version"], v["state"]) for v in status["model_version_status"]] == expected


# Issue 20, attacks 1-8: client input that reached a 500 (or a 200 that V1 refuses) before; each is
# now a 400 with {"error": ...}. Through predict_v1_body/predict_v2_body: the bytes the server gets.
DEEP = b'{"instances":' + b"[" * 1100 + b"1" + b"]" * 1100 + b"}"
ATTACKS_V1 = {  # body: the start of the error
    "1 nested 1100 deep": (DEEP, "JSON Parse error: nested deeper than 1024 levels"),
    "1 nested 990 deep (within the parser's limit)":
        (b'{"instances":' + b"[" * 990 + b"1" + b"]" * 990 + b"}", "Encountered list at unexpected level: 64"),
    "1 nested 990 deep with NaN (the fallback parser)":
        (b'{"instances":' + b"[" * 990 + b"NaN" + b"]" * 990 + b"}", "JSON Parse error: nested too deeply"),
    "2 string input nested 990 deep":
        (b'{"signature_name": "length", "inputs":' + b"[" * 990 + b'"a"' + b"]" * 990 + b"}",
         "Encountered list at unexpected level: 64"),
    "3 a 400-digit integer": (b'{"inputs": [[' + b"9" * 400 + b', 1, 2]]}',
                              "JSON Parse error: Number too big to be stored in double"),
    "4 a 5000-digit integer": (b'{"inputs": [[' + b"9" * 5000 + b', 1, 2]]}',
                               "JSON Parse error: Number too big to be stored in double"),
    "4 a 5000-digit integer beside NaN": (b'{"inputs": [[NaN, ' + b"9" * 5000 + b', 2]]}',
                                          "JSON Parse error: Number too big to be stored in double"),
    "5 a lone surrogate": (b'{"signature_name": "length", "inputs": ["\\ud800"]}',
                           "JSON Parse error: The surrogate pair in string is invalid."),
    "5 a lone surrogate after NaN": (b'{"x": NaN, "signature_name": "length", "inputs": ["\\ud800"]}',
                                      "inputs: The surrogate pair in string is invalid."),
    "6 b64 of a non-ASCII text": ('{"signature_name": "length", "inputs": [{"b64": "\u00e9"}]}'.encode(),
                                  "inputs: Unable to base64 decode"),
    "b64 with extra padding": (b'{"signature_name": "length", "inputs": [{"b64": "AAEC===="}]}',
                               "inputs: Unable to base64 decode"),
    "1e999999 (Infinity before)": (b'{"inputs": [[1e999999, 1, 2]]}',
                                   "JSON Parse error: Number too big to be stored in double"),
    "a value longer than 256 bytes is quoted cut": (b'{"instances": [[' + b'"a", ' * 300 + b'"b"]]}',
                                                    'instances: JSON Value: "a" Type: String'),
}


@pytest.mark.parametrize("case", ATTACKS_V1, ids=list(ATTACKS_V1))
def test_attack_bodies_are_a_400_not_a_500(servable, case):
    from helpers.request_guard import _answer
    body, message = ATTACKS_V1[case]
    status, reply = _answer(servable.predict_v1_body, body)
    assert status == 400 and json.loads(reply)["error"].startswith(message), reply[:300]


def test_error_texts_quote_at_most_256_bytes_of_the_request(servable):
    from helpers.request_guard import _answer
    body = json.dumps({"instances": [[0.5] * 3] * 2000, "inputs": [1.0]}).encode()
    status, reply = _answer(servable.predict_v1_body, body)
    error = json.loads(reply)["error"]
    assert status == 400 and error.startswith('JSON Value: {\n    "instances": [[0.5, 0.5, 0.5], ')
    assert len(error.encode()) < 256 + 120, len(error)  # TF Serving's kMaxJsonDebugStringBytes, then the message


def v2(datatype, data, shape=None, name="x", **extra):
    return json.dumps({"inputs": [{"name": name, "shape": shape or [1, 3], "datatype": datatype,
                                   "data": data, **extra}]}).encode()


ATTACKS_V2 = {
    "7 binary_data_size": (v2("FP32", [], parameters={"binary_data_size": 12}), "input 'x': parameters"),
    "8 null into FP32": (v2("FP32", [None, 1, 2]), "input 'x': JSON Value: null Type: Null is not of expected type"),
    "8 true into FP32": (v2("FP32", [True, 1, 2]), "input 'x': JSON Value: true Type: True is not of expected"),
    "8 a string into FP32": (v2("FP32", ["1.5", 1, 2]), 'input \'x\': JSON Value: "1.5" Type: String'),
    "wrong datatype": (v2("INT32", [1, 2, 3]), "input 'x': datatype \"INT32\" is not the signature's FP32"),
    "shape and data disagree": (v2("FP32", [1, 2]), "input 'x': shape [1, 3] needs 3 values, data has 2"),
    "wrong name": (v2("FP32", [1, 2, 3], name="y"), "expected one input named 'x'"),
    "deep data": (v2("FP32", json.loads("[" * 100 + "1" + "]" * 100)), "Encountered list at unexpected level"),
}


@pytest.mark.parametrize("case", ATTACKS_V2, ids=list(ATTACKS_V2))
def test_v2_refuses_what_v1_refuses(servable, case):
    from helpers.request_guard import _answer
    body, message = ATTACKS_V2[case]
    status, reply = _answer(servable.predict_v2_body, body)
    assert status == 400 and json.loads(reply)["error"].startswith(message), reply[:300]


def test_v2_answers_in_the_protocols_shape_and_writes_nan_as_v1_does(servable):
    reply = json.loads(servable.predict_v2_body(v2("FP32", sum(X, []), shape=[2, 3])))
    (output,) = reply["outputs"]
    assert (output["name"], output["shape"], output["datatype"], reply["model_version"]) == ("output_0", [2, 2], "FP32", "2")
    np.testing.assert_allclose(np.reshape(output["data"], (2, 2)), expected(X), rtol=1e-6)
    assert b"\"data\":[NaN,NaN]" in servable.predict_v2_body(v2("FP32", [1.0, float("nan"), 2.0]))  # not null


def test_string_outputs_are_b64_only_for_names_ending_in_bytes(servable):
    # json_tensor.cc: an output whose name ends in "_bytes" is written as {"b64": ...}; any other
    # string output as text (TF Serving copies bytes that are not UTF-8 as they are; the engine
    # writes U+FFFD for them, so that its reply stays valid JSON)
    body = {"inputs": ["caf\u00e9", {"b64": base64.b64encode(b"\xff\x00ok").decode()}]}
    assert answer(servable, {"signature_name": "echo", **body})["outputs"] == ["caf\u00e9", "\ufffd\x00ok"]
    assert answer(servable, {"signature_name": "echo_bytes", **body})["outputs"] == [
        {"b64": base64.b64encode("caf\u00e9".encode()).decode()}, {"b64": base64.b64encode(b"\xff\x00ok").decode()}]
