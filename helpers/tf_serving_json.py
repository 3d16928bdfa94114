"""TF Serving's JSON contract: how request bodies are read and replies written, in its words and types,
apart from the engine so these rules (NaN/Infinity literals, TF Serving's decimals, {"b64": ...},
error texts that quote the request, cut at 256 bytes) read alone.

Source: tensorflow/serving `tensorflow_serving/util/json_tensor.cc` (ParseJson, WriteDecimal,
JsonValueToDebugString, FormatError) at commit 9d981c5. Nothing here recurses on the request's
nesting, so no body can raise RecursionError.
"""
import base64
import binascii
import json
import math
import re

import numpy as np
import orjson
import tensorflow as tf
from kserve.errors import InvalidInput

# TF Serving's names of dtypes in its messages (DataTypeString): float32 is "float".
TFS_TYPE_NAMES = {tf.float32: "float", tf.float64: "double"}
DEBUG_STRING_BYTES = 256  # json_tensor.cc kMaxJsonDebugStringBytes: how much of a value an error quotes
MAX_INT_DIGITS = 20  # a longer integer is read as a double, as rapidjson reads one beyond uint64
BASE64 = re.compile(r"[A-Za-z0-9+/]*")


class Decimal(str):
    """A number already written as TF Serving writes it; `encode_json` copies it as it is."""


def tf_serving_decimal(value, digits=9):
    """`value` as TF Serving's WriteDecimal writes a float (json_tensor.cc): six significant digits
    (`%g`, as absl::StrCat), or `digits` (max_digits10: 9 for float32, 17 for float64) when six do
    not read back as the same number; `.0` added to a whole number without an exponent; NaN,
    Infinity, -Infinity."""
    if math.isnan(value):
        return Decimal("NaN")
    if math.isinf(value):
        return Decimal("-Infinity" if value < 0 else "Infinity")
    text = "%g" % value
    same = (np.float32(text) == np.float32(value)) if digits == 9 else float(text) == value
    if not same:
        text = "%.*g" % (digits, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return Decimal(text)


def shortest_floats(array):
    """float32 values as Python floats of their shortest decimal form (0.001, not
    0.0010000000474974513), strings as text or {"b64": ...} where not UTF-8: plain JSON values
    for golden files (`helpers.contract`). The engine writes `tf_serving_values` instead."""
    if array.dtype == np.float32:
        return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    if array.dtype == object:
        return np.array([_text_or_b64(v) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _text_or_b64(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def tf_serving_values(array, as_b64=False):
    """An output array as TF Serving writes it: floats as `Decimal`s (WriteDecimal), strings as text
    (bytes that are not UTF-8 replaced by U+FFFD), or as {"b64": ...} with `as_b64` (TF Serving does
    that for outputs whose name ends in `_bytes`)."""
    if array.dtype in (np.float32, np.float64):
        digits = 9 if array.dtype == np.float32 else 17
        flat = [tf_serving_decimal(float(v), digits) for v in array.ravel()]
    elif array.dtype == object:  # tf.string outputs
        flat = [{"b64": base64.b64encode(v).decode("ascii")} if as_b64 else v.decode("utf-8", "replace")
                for v in array.ravel()]
    else:
        return array.tolist()
    values = np.empty(len(flat), dtype=object)
    values[:] = flat
    return values.reshape(array.shape).tolist()


def _number(text):
    """A JSON number the standard library found, read as rapidjson reads it: a long integer becomes a
    double; one that does not fit a double is an error (Python's int would allow 4,300 digits)."""
    if len(text.lstrip("-")) <= MAX_INT_DIGITS and not any(c in text for c in ".eE"):
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise InvalidInput("JSON Parse error: Number too big to be stored in double")
    return value


def decode_json(body):
    """The request body as JSON, with TF Serving's parse errors; like TF Serving (rapidjson with
    kParseNanAndInfFlag) it accepts the non-standard `NaN`, `Infinity` and `-Infinity`, and like
    rapidjson it refuses a number too big for a double and a lone UTF-16 surrogate (`"\\ud800"`)."""
    if not body.strip():
        raise InvalidInput("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)  # fast and strict; refuses NaN/Infinity, which TF Serving accepts
    except orjson.JSONDecodeError as error:
        strict = error
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    if "no low surrogate" in strict.msg or "surrogate" in strict.msg:
        raise InvalidInput(f"JSON Parse error: The surrogate pair in string is invalid. at offset: {strict.pos}")
    if "depth limit" in strict.msg:  # orjson's limit (1024) is far beyond any tensor's rank (254)
        raise InvalidInput(f"JSON Parse error: nested deeper than 1024 levels at offset: {strict.pos}")
    try:  # the standard library, for NaN and Infinity; its numbers read as rapidjson reads them
        return json.loads(text, parse_int=_number, parse_float=_number)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise InvalidInput("JSON Parse error: nested too deeply") from None


def encode_json(result):
    """JSON as TF Serving writes it: NaN and infinities as `NaN`, `Infinity`, `-Infinity` (not null),
    `Decimal` numbers as they are."""
    out = []
    _write(result, out)
    return "".join(out).encode()


def _write(value, out):
    if isinstance(value, Decimal):
        out.append(value)
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + json.dumps(str(key)) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        out.append(json.dumps(value, allow_nan=True))


def debug_string(value, limit=DEBUG_STRING_BYTES):
    """`value` as TF Serving quotes it in an error (JsonValueToDebugString: rapidjson's PrettyWriter
    with one-line arrays), cut after `limit` bytes. TF Serving stops only before the next token once
    `limit` bytes are written, so its quote can be longer (a long string is quoted whole); this
    engine cuts at `limit`. Numbers are written as Python writes them. Iterative: any nesting depth is fine."""
    out, size, stack = [], 0, [(value, 0, None)]
    while stack and size < limit:
        item, indent, piece = stack.pop()
        if piece is not None:
            out.append(piece)
            size += len(piece)
            continue
        if isinstance(item, dict):
            pieces = ["{"]
            todo = []
            for i, (key, member) in enumerate(item.items()):
                todo.append((None, 0, ("," if i else "") + "\n" + " " * (indent + 4) + json.dumps(key) + ": "))
                todo.append((member, indent + 4, None))
            todo.append((None, 0, ("\n" + " " * indent if item else "") + "}"))
            stack.extend(reversed(todo))
            out.append(pieces[0])
            size += 1
        elif isinstance(item, list):
            todo = []
            for i, member in enumerate(item):
                if i:
                    todo.append((None, 0, ", "))
                todo.append((member, indent + 4, None))  # rapidjson indents by every open level
            todo.append((None, 0, "]"))
            stack.extend(reversed(todo))
            out.append("[")
            size += 1
        else:
            piece = _scalar_text(item)
            out.append(piece)
            size += len(piece)
    return "".join(out).encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def _scalar_text(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, ensure_ascii=False)


def format_error(document, message):
    """TF Serving's FormatError: `JSON Value: <the value, cut at 256 bytes here> <message>`."""
    return f"JSON Value: {debug_string(document)} {message}"


def type_error(value, dtype):
    """TF Serving's TypeError text for a value that is not of the input's dtype."""
    return (f"JSON Value: {debug_string(value)} Type: {_json_type(value)} is not of expected type: "
            f"{TFS_TYPE_NAMES.get(dtype, dtype.name)}")


def decode_b64(text):
    """The bytes of a {"b64": text} value (TF Serving decodes it with absl::Base64Unescape); this engine
    takes the standard alphabet with the '=' padding the length needs, or none, and answers
    InvalidInput("Unable to base64 decode", TF Serving's words) for anything else: extra '=', other
    characters (a non-ASCII text raised ValueError, a 500, before)."""
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if not BASE64.fullmatch(body) or padding > 2 or (padding and (len(body) + padding) % 4) or len(body) % 4 == 1:
        raise InvalidInput("Unable to base64 decode")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("Unable to base64 decode") from None


def _json_type(value):
    """rapidjson's type names, which TF Serving's messages quote."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def leaves(value, max_depth=64):
    """The scalars of nested lists, left to right, without recursion; InvalidInput past `max_depth`
    levels (numpy's limit on dimensions; TF Serving's inputs have far fewer)."""
    stack = [(iter([value]), 0)]
    while stack:
        items, depth = stack[-1]
        for item in items:
            if isinstance(item, list):
                if depth >= max_depth:
                    raise InvalidInput(f"Encountered list at unexpected level: {depth}, nested deeper "
                                       f"than {max_depth} levels")
                stack.append((iter(item), depth + 1))
                break
            yield item
        else:
            stack.pop()


_leaves = leaves


def _fits(dtype):
    """A test that a decoded JSON leaf is a value of `dtype` that TF Serving takes without loss."""
    if dtype.is_floating:
        return lambda v: type(v) in (int, float) and (type(v) is float or abs(v) < 2 ** 1024)
    if dtype.is_integer:
        low, high = int(dtype.min), int(dtype.max)
        return lambda v: type(v) is int and low <= v <= high
    if dtype == tf.bool:
        return lambda v: type(v) is bool
    return lambda v: False
