"""helpers.contract: golden requests from a signature catch a re-export that renames an input."""
import json

import pytest
import tensorflow as tf
from kserve.errors import InvalidInput

from helpers.contract import check_contract, differences, golden_pairs
from helpers.servable import SavedModelServable


def answer_with(base_path, name="toy"):
    """The offline engine's V1 predict, in this process: request dict -> (status, reply dict)."""
    servable = SavedModelServable(name, str(base_path))
    servable.load()

    def answer(request):
        try:
            return 200, json.loads(servable.predict_v1_body(json.dumps(request).encode()))
        except InvalidInput as error:
            return 400, {"error": str(error)}
    return answer


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One functional model (input named 'x') exported with model.export and re-exported with
    tf.saved_model.save, which names the input 'inputs' on Keras 3 (keras#19458)."""
    root = tmp_path_factory.mktemp("contract")
    tf.keras.utils.set_random_seed(0)
    x = tf.keras.Input((1,), name="x")
    model = tf.keras.Model(x, tf.keras.layers.Dense(5)(x))
    model.export(str(root / "exported" / "1"), verbose=False)
    tf.saved_model.save(model, str(root / "saved" / "1"))
    return root


def test_the_golden_forms_follow_the_signature(exports):
    pairs = golden_pairs(tf.saved_model.load(str(exports / "exported" / "1")).signatures)
    assert [p["form"] for p in pairs] == ["rows, name-free", "rows by name", "columns, name-free", "columns by name"]
    assert list(pairs[1]["request"]["instances"][0]) == ["x"] and list(pairs[3]["request"]["inputs"]) == ["x"]
    assert pairs[2]["request"]["inputs"] == pairs[0]["request"]["instances"]  # TF Serving's {"inputs": [...]}
    assert list(pairs[0]["response"]) == ["predictions"] and list(pairs[2]["response"]) == ["outputs"]


def test_the_same_export_keeps_the_contract(exports):
    pairs = golden_pairs(tf.saved_model.load(str(exports / "exported" / "1")).signatures)
    assert check_contract(pairs, answer_with(exports / "exported")) == {}


def test_a_renamed_input_breaks_the_named_forms_only(exports):
    pairs = golden_pairs(tf.saved_model.load(str(exports / "exported" / "1")).signatures)
    failures = check_contract(pairs, answer_with(exports / "saved"))
    assert set(failures) == {"rows by name", "columns by name"}
    assert "does not have named input: x" in failures["rows by name"]
    assert failures["columns by name"].startswith("HTTP 400: Missing named input: inputs")


def test_other_numbers_break_the_contract():
    assert differences({"predictions": [[1.0, 2.0]]}, {"predictions": [[1.0, 2.5]]}) == ["predictions[0][1]: 2.5 != 2.0"]
    assert differences({"predictions": [1]}, {"outputs": [1]}) == ["reply: keys ['outputs'], expected ['predictions']"]
    assert differences({"predictions": [1.0]}, {"predictions": [1.0 + 1e-9]}) == []


class Lengths(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"length": tf.strings.length(text)}


def test_bytes_inputs_are_sent_as_b64_and_answered(tmp_path):
    module = Lengths()
    tf.saved_model.save(module, str(tmp_path / "lengths" / "1"), signatures={"serving_default": module.serve})
    pairs = golden_pairs(tf.saved_model.load(str(tmp_path / "lengths" / "1")).signatures)
    assert set(pairs[0]["request"]["instances"][0]) == {"b64"}
    assert pairs[0]["response"] == {"predictions": [6, 9]}
    assert check_contract(pairs, answer_with(tmp_path / "lengths", "lengths")) == {}
