"""helpers.tf_serving_json: request bodies read with TF Serving's parse rules and error texts."""
import numpy as np
import pytest
from kserve.errors import InvalidInput

from helpers.tf_serving_json import decode_json


def test_tf_serving_accepts_nan_and_infinity_literals():
    # rapidjson parses with kParseNanAndInfFlag in TF Serving's json_tensor.cc (ParseJson)
    decoded = decode_json(b'{"inputs": [NaN, Infinity, -Infinity, 1.5]}')["inputs"]
    assert np.isnan(decoded[0]) and decoded[1:] == [float("inf"), float("-inf"), 1.5]


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b'{"instances": [[1, 2', "JSON Parse error: Expecting ',' delimiter at offset: 20"),
])
def test_parse_errors_in_tf_servings_words(body, message):
    with pytest.raises(InvalidInput) as error:
        decode_json(body)
    assert error.value.reason == message


def test_quotes_are_laid_out_as_rapidjsons_pretty_writer_writes_them():
    # json_tensor.cc:229-236: PrettyWriter, arrays on one line; prettywriter.h's WriteIndent indents
    # a key by 4 spaces per open level, arrays included
    from helpers.tf_serving_json import debug_string
    quoted = debug_string({"instances": [{"x": [1, 2]}, {}], "s": "a"})
    assert quoted == '{\n    "instances": [{\n            "x": [1, 2]\n        }, {}],\n    "s": "a"\n}'
