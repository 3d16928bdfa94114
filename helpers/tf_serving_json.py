"""TF Serving's JSON contract: how request bodies are read and replies written, in its words and types,
apart from the engine so these rules (NaN/Infinity literals, shortest floats, {"b64": ...}) read alone."""
import base64
import json

import numpy as np
import orjson
import tensorflow as tf
from kserve.errors import InvalidInput

# TF Serving's names of dtypes in its messages (DataTypeString): float32 is "float".
TFS_TYPE_NAMES = {tf.float32: "float", tf.float64: "double"}


def shortest_floats(array):
    """float32 values as their shortest decimal form (0.001, not 0.0010000000474974513), as TF
    Serving prints them; `str(np.float32)` is that form."""
    if array.dtype == np.float32:
        return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    if array.dtype == object:  # tf.string outputs: text, or {"b64": ...} where not UTF-8
        return np.array([_text_or_b64(v) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _text_or_b64(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def decode_json(body):
    """The request body as JSON, with TF Serving's parse errors; like TF Serving (rapidjson with
    kParseNanAndInfFlag) it accepts the non-standard `NaN`, `Infinity` and `-Infinity`."""
    if not body.strip():
        raise InvalidInput("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)  # fast; refuses NaN/Infinity, which the standard library accepts
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidInput(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise InvalidInput(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None


def encode_json(result):
    """JSON as TF Serving writes it: NaN and infinities as `NaN`, `Infinity`, `-Infinity` (not null)."""
    return json.dumps(result, allow_nan=True, separators=(",", ":")).encode()


def _json_type(value):
    """rapidjson's type names, which TF Serving's messages quote."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _fits(dtype):
    """A test that a decoded JSON leaf is a value of `dtype` that TF Serving takes without loss."""
    if dtype.is_floating:
        return lambda v: type(v) in (int, float)
    if dtype.is_integer:
        low, high = int(dtype.min), int(dtype.max)
        return lambda v: type(v) is int and low <= v <= high
    if dtype == tf.bool:
        return lambda v: type(v) is bool
    return lambda v: False
