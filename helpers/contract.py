"""Golden requests: request/response pairs generated from a SavedModel's serving signature, replayed
against a new export so that a change clients would notice (a renamed input, a new dtype, other
numbers) fails a test before the new version is served.

Each golden pair is a TF Serving REST body in one of its four forms: rows (`instances`) and
columns (`inputs`), each either by input name or, where the signature has one input, without it
(json_tensor.cc accepts a plain value there). Bytes inputs
are sent as {"b64": ...}, as TF Serving requires for binary data. The expected replies are written
as TF Serving writes them (shortest float32 decimals, a single output without its name).
"""
import base64
import math

import numpy as np
import tensorflow as tf

from helpers.tf_serving_json import shortest_floats


def example_value(spec, rows=2):
    """A deterministic value for `spec` with `rows` in the batch dimension (bytes: not UTF-8)."""
    shape = [rows] + [1 if d is None else d for d in spec.shape[1:]]
    count = math.prod(shape)
    if spec.dtype == tf.string:
        return np.array([bytes([0xFF, 0x00, i]) + b"tok" * (i + 1) for i in range(count)], object).reshape(shape)
    values = np.arange(count).reshape(shape) % 7
    return (values / 4 - 0.5).astype(spec.dtype.as_numpy_dtype) if spec.dtype.is_floating \
        else values.astype(spec.dtype.as_numpy_dtype)


def to_json(value):
    """`value` as the JSON value TF Serving reads: nested lists, bytes as {"b64": "..."}."""
    array = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
    if array.dtype == object:
        return np.array([{"b64": base64.b64encode(v).decode("ascii")} for v in array.ravel()],
                        object).reshape(array.shape).tolist()
    return array.tolist()


def golden_pairs(signatures, signature_name="serving_default", rows=2):
    """Golden {"form", "request", "response"} pairs for one signature of a loaded SavedModel."""
    fn = signatures[signature_name]
    specs = fn.structured_input_signature[1]
    values = {name: example_value(spec, rows) for name, spec in specs.items()}
    outputs = {k: shortest_floats(v.numpy()) for k, v in fn(**{k: tf.constant(v) for k, v in values.items()}).items()}
    rows_out = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
    single = len(outputs) == 1
    predictions = next(iter(outputs.values())) if single else rows_out
    columns = next(iter(outputs.values())) if single else outputs
    base = {"signature_name": signature_name}
    pairs = [{"form": "rows by name", "response": {"predictions": predictions},
              "request": {**base, "instances": [{k: to_json(v[i]) for k, v in values.items()} for i in range(rows)]}},
             {"form": "columns by name", "response": {"outputs": columns},
              "request": {**base, "inputs": {k: to_json(v) for k, v in values.items()}}}]
    if len(values) == 1:  # with one input, TF Serving also takes the values without the name
        (value,) = values.values()
        pairs.insert(0, {"form": "rows, name-free", "request": {**base, "instances": to_json(value)},
                         "response": {"predictions": predictions}})
        pairs.insert(2, {"form": "columns, name-free", "request": {**base, "inputs": to_json(value)},
                         "response": {"outputs": columns}})
    return pairs


def differences(expected, actual, path="", rtol=1e-6):
    """Where `actual` (a decoded JSON reply) differs from `expected`: a list of messages."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return [f"{path or 'reply'}: keys {sorted(actual) if isinstance(actual, dict) else type(actual).__name__}"
                    f", expected {sorted(expected)}"]
        return [m for key in expected for m in differences(expected[key], actual[key], f"{path}.{key}".lstrip("."), rtol)]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {len(actual) if isinstance(actual, list) else type(actual).__name__} items, "
                    f"expected {len(expected)}"]
        return [m for i, (e, a) in enumerate(zip(expected, actual)) for m in differences(e, a, f"{path}[{i}]", rtol)]
    if isinstance(expected, (int, float)) and not isinstance(expected, bool) and isinstance(actual, (int, float)):
        return [] if math.isclose(expected, actual, rel_tol=rtol, abs_tol=rtol) else [f"{path}: {actual} != {expected}"]
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]


def check_contract(pairs, answer):
    """Send every golden request through `answer(request) -> (status, reply)`; return the failures
    as {form: message} (empty: the new export keeps the contract)."""
    failures = {}
    for pair in pairs:
        status, reply = answer(pair["request"])
        if status != 200:
            failures[pair["form"]] = f"HTTP {status}: {reply.get('error', reply)}"
        elif differences(pair["response"], reply):
            failures[pair["form"]] = "; ".join(differences(pair["response"], reply)[:3])
    return failures
