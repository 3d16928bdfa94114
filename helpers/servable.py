"""A SavedModel as a KServe model: TF Serving's V1 predict (and V2) on the newest version folder.

What `helpers.kserve_engine` serves. TF Serving's JSON rules are in `helpers.tf_serving_json`; the
limits every request passes before it gets here are in `helpers.request_guard`. Signatures must
have one input and one output (every model of the book does); the real server has no such limit.
"""
import base64
import binascii
import gc
import json
from pathlib import Path

import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput
from kserve.utils.utils import generate_uuid

from helpers.tf_serving_json import TFS_TYPE_NAMES, _fits, _json_type, _leaves, decode_json, encode_json, shortest_floats

V2_TYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64",
            tf.uint8: "UINT8", tf.string: "BYTES", tf.bool: "BOOL"}


def latest_version(base_path, model_name):
    """The highest integer-named folder under `base_path`, as TF Serving picks it: (version, path)."""
    base = Path(base_path)
    versions = sorted((int(p.name), p) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) \
        if base.is_dir() else []
    if not versions:
        # TF Serving's own words, so the error reads the same with either engine.
        raise FileNotFoundError(
            f"No versions of servable {model_name} found under base path {base_path}. "
            "The base path must be the parent of integer-named version folders (e.g. models/m/1/).")
    return versions[-1]


class SavedModelServable(kserve.Model):
    """Every signature of the newest SavedModel version under `base_path`, as a KServe model."""

    def __init__(self, name, base_path, pool=None):
        super().__init__(name)
        self.base_path = base_path
        self.version, self.signatures, self.inputs = None, {}, {}
        self.pool = pool  # where V2 requests run (the RequestGuard runs V1 ones); None: in the caller

    def load(self, warmup=False):
        """Load the newest version. `warmup=True` also calls every signature once on zeros: that RUNS
        the model at start-up, before any request (off by default: a hostile SavedModel would act
        then; TF Serving warms up only from recorded requests in assets.extra/)."""
        self.version, path = latest_version(self.base_path, self.name)
        self._loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self._loaded.signatures)
        for key, fn in self.signatures.items():
            specs = fn.structured_input_signature[1]
            if len(specs) != 1 or len(fn.structured_outputs) != 1:
                raise ValueError(f"signature '{key}' has {len(specs)} inputs and {len(fn.structured_outputs)} "
                                 "outputs; this engine serves one of each (tensorflow_model_server serves any)")
            (name, spec), = specs.items()
            self.inputs[key] = name, spec
            if warmup:
                fn(**{name: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)})
        # Keep the loaded objects out of the cyclic garbage collector: otherwise every full
        # collection scans TensorFlow's ~300k objects and adds ~140 ms to some requests.
        gc.collect()
        gc.freeze()
        self.ready = True
        return self.ready

    def _tensor(self, value, spec, where, scan=True):
        """`value` as a tensor of `spec`, refusing what TF Serving refuses (null, true/false, lossy
        or overflowing ints, strings or {"b64": ...} for numbers, numbers for strings).

        `scan=False` skips the value-by-value check when numpy's own conversion cannot hide a bad
        value (the caller knows the body holds no `true`/`false`)."""
        dtype = spec.dtype
        if dtype == tf.string:
            array = np.array([self._string(v, where) for v in _leaves(value)], dtype=object)
            try:
                array = array.reshape(np.shape(value))
            except ValueError:
                raise InvalidInput(f"{where}: ragged lists, not a tensor") from None
        else:
            try:
                guess = np.asarray(value)
            except ValueError as error:  # ragged lists
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: {error}") from None
            fits = _fits(dtype)
            kind = guess.dtype.kind
            out_of_range = dtype.is_integer and kind == "i" and guess.size and \
                (guess.min() < dtype.min or guess.max() > dtype.max)
            if scan or kind not in "fi" or dtype == tf.bool or (dtype.is_integer and kind == "f") or out_of_range:
                bad = next((v for v in _leaves(value) if not fits(v)), fits)
                if bad is not fits:
                    raise InvalidInput(f"{where}: JSON Value: {json.dumps(bad)} Type: {_json_type(bad)} "
                                       f"is not of expected type: {TFS_TYPE_NAMES.get(dtype, dtype.name)}")
            try:
                array = np.asarray(guess, dtype=dtype.as_numpy_dtype)
            except (ValueError, TypeError) as error:
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: {error}") from None
        if array.size == 0:
            raise InvalidInput(f"{where}: empty input")
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape]
            raise InvalidInput(f"{where}: shape {list(array.shape)} does not match the signature's {expected}")
        return tf.constant(array)

    @staticmethod
    def _string(value, where):
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except binascii.Error:
                raise InvalidInput(f"{where}: Unable to base64 decode") from None
        raise InvalidInput(f"{where}: JSON Value: {json.dumps(value)} Type: {_json_type(value)} "
                           "is not of expected type: string")

    def predict_v1(self, payload, scan=True):
        """TF Serving's V1 predict: a decoded JSON body in, the reply's dict out (raises InvalidInput)."""
        if not isinstance(payload, dict):
            raise InvalidInput("JSON Value: the request body is not an object")
        keys = {"instances", "inputs"} & set(payload)
        if len(keys) == 2:
            raise InvalidInput("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
        if not keys:
            raise InvalidInput("Missing 'inputs' or 'instances' key")
        (key,) = keys
        name = payload.get("signature_name", "serving_default")
        if not isinstance(name, str):
            raise InvalidInput("'signature_name' key must be a string value.")
        if name not in self.signatures:
            raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
        input_name, spec = self.inputs[name]
        data = payload[key]
        if key == "instances":
            if not isinstance(data, list) or not data:
                raise InvalidInput("'instances' must be a non-empty list")
            if isinstance(data[0], dict) and list(data[0]) != ["b64"]:  # rows by name: [{"x": ...}, ...]
                for i, row in enumerate(data):  # json_tensor.cc FillTensorMapFromInstancesList's checks
                    if not isinstance(row, dict):
                        raise InvalidInput(f"Expecting object but got list at item {i} of input list")
                    for row_key in row:
                        if row_key != input_name:
                            raise InvalidInput(f"Failed to process element: {i} key: {row_key} of 'instances' "
                                               f"list. Error: JSON object: does not have named input: {row_key}")
                    if set(row) != {input_name}:
                        raise InvalidInput(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                           f"{json.dumps(row)[:200]} keys must be equal to: {input_name}")
                data = [row[input_name] for row in data]
        elif isinstance(data, dict) and list(data) != ["b64"]:  # columnar by name: {"inputs": {"image": ...}}
            if input_name not in data:
                raise InvalidInput(f"Missing named input: {input_name} in 'inputs' object.")
            data = data[input_name]
        (output,) = self.signatures[name](**{input_name: self._tensor(data, spec, key, scan)}).values()
        return {"predictions" if key == "instances" else "outputs": shortest_floats(output.numpy())}

    def predict_v1_body(self, body):
        """The raw V1 request body in, the reply's JSON bytes out: what the RequestGuard runs on its pool."""
        payload = decode_json(body)
        # numpy turns true/false into 1/0 silently; only a body that holds them needs the full scan
        return encode_json(self.predict_v1(payload, scan=b"true" in body or b"false" in body))

    async def predict(self, payload, headers=None):
        """What KServe's data plane calls: a V2 `InferRequest` (the RequestGuard answers V1 bodies)."""
        if isinstance(payload, dict):
            work = lambda: self.predict_v1(payload)  # noqa: E731
        else:
            work = lambda: self._predict_v2(payload)  # noqa: E731
        if self.pool is None:
            return work()
        return await self.pool.run(work)

    def _predict_v2(self, request):
        input_name, spec = self.inputs["serving_default"]
        if [item.name for item in request.inputs] != [input_name]:
            raise InvalidInput(f"expected one input named '{input_name}', got "
                               f"{[item.name for item in request.inputs]}")
        try:
            value = request.inputs[0].as_numpy()
        except Exception as error:  # shape and data disagree, unknown datatype ...
            raise InvalidInput(f"input '{input_name}': {error}") from None
        if value.dtype != spec.dtype.as_numpy_dtype:
            raise InvalidInput(f"input '{input_name}': datatype {request.inputs[0].datatype} is not the "
                               f"signature's {V2_TYPES.get(spec.dtype, spec.dtype.name)}")
        (output_name, output), = self.signatures["serving_default"](
            **{input_name: self._tensor(value, spec, f"input '{input_name}'", scan=False)}).items()
        outputs = [kserve.InferOutput(name=output_name, shape=list(output.shape),
                                      datatype=V2_TYPES.get(output.dtype, "FP32"),
                                      data=output.numpy().ravel().tolist())]
        return kserve.InferResponse(response_id=request.id or generate_uuid(), model_name=self.name,
                                    infer_outputs=outputs, model_version=str(self.version))

    @staticmethod
    def _types(specs):
        return [{"name": k, "datatype": V2_TYPES.get(s.dtype, "FP32"),
                 "shape": [-1 if d is None else d for d in s.shape]} for k, s in specs.items()]

    def get_input_types(self):  # V2 metadata: GET /v2/models/<name>
        return self._types(self.signatures["serving_default"].structured_input_signature[1])

    def get_output_types(self):
        return self._types(self.signatures["serving_default"].structured_outputs)
