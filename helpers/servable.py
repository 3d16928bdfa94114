"""A SavedModel as a KServe model: TF Serving's V1 predict (and V2) on the newest version folder.

What `helpers.kserve_engine` serves. TF Serving's JSON rules are in `helpers.tf_serving_json`; the
limits every request passes before it gets here are in `helpers.request_guard`. Signatures must
have one input and one output (every model of the book does); the real server has no such limit.
"""
import gc
from pathlib import Path

import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput
from kserve.utils.utils import generate_uuid

from helpers.model_server import version_folders, version_number
from helpers.tf_serving_json import (_fits, debug_string, decode_b64, decode_json, encode_json, format_error, leaves,
                                     tf_serving_values, type_error)

V2_TYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64",
            tf.uint8: "UINT8", tf.string: "BYTES", tf.bool: "BOOL"}
BYTES_SUFFIX = "_bytes"  # json_tensor.cc kBytesTensorNameSuffix: such outputs are written as {"b64": ...}


def latest_version(base_path, model_name):
    """The highest version folder under `base_path`, the one TF Serving serves: (version, path). Folder
    names follow `helpers.model_server.version_number` (ASCII digits within int64; others skipped,
    also the signed or padded names such as '+3' that TF Serving would read as a version)."""
    versions = version_folders(base_path)
    if not versions:
        # TF Serving's own words, so the error reads the same with either engine.
        raise FileNotFoundError(
            f"No versions of servable {model_name} found under base path {base_path}. "
            "The base path must be the parent of integer-named version folders (e.g. models/m/1/).")
    return version_number(versions[-1].name), versions[-1]


def signature_def_json(path):
    """The signature defs of the SavedModel at `path` as TF Serving prints them (json_format with
    preserved field names and fields without presence, http_rest_api_util.cc ToJsonString)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    (graph,) = saved_model.meta_graphs
    options = {"preserving_proto_field_name": True}
    try:
        return {key: json_format.MessageToDict(value, always_print_fields_with_no_presence=True, **options)
                for key, value in graph.signature_def.items()}
    except TypeError:  # protobuf before 5.26 names the option otherwise
        return {key: json_format.MessageToDict(value, including_default_value_fields=True, **options)
                for key, value in graph.signature_def.items()}


class SavedModelServable(kserve.Model):
    """Every signature of the newest SavedModel version under `base_path`, as a KServe model."""

    def __init__(self, name, base_path):
        super().__init__(name)
        self.base_path = base_path
        self.version, self.signatures, self.inputs = None, {}, {}
        self.ended = []  # versions served before and unloaded, newest first (TF Serving's state END)

    def load(self, warmup=False):
        """Load the newest version. `warmup=True` also calls every signature once on zeros: that RUNS
        the model at start-up, before any request (off by default: a hostile SavedModel would act
        then; TF Serving warms up only from recorded requests in assets.extra/)."""
        version, path = latest_version(self.base_path, self.name)
        self._swap(version, path, warmup)
        self.ready = True
        return self.ready

    def load_newer(self, warmup=False):
        """Load a version above the served one if a complete one has appeared (as TF Serving's
        file-system polling does), then stop serving the old one; True if it did."""
        try:
            version, path = latest_version(self.base_path, self.name)
        except FileNotFoundError:
            return False
        if version <= self.version or not (path / "saved_model.pb").exists():
            return False
        self._swap(version, path, warmup, ended=[self.version] + self.ended)
        return True

    def _swap(self, version, path, warmup, ended=None):
        loaded = tf.saved_model.load(str(path))
        signatures, inputs = dict(loaded.signatures), {}
        for key, fn in signatures.items():
            specs = fn.structured_input_signature[1]
            if len(specs) != 1 or len(fn.structured_outputs) != 1:
                raise ValueError(f"signature '{key}' has {len(specs)} inputs and {len(fn.structured_outputs)} "
                                 "outputs; this engine serves one of each (tensorflow_model_server serves any)")
            (name, spec), = specs.items()
            inputs[key] = name, spec
            if warmup:
                fn(**{name: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)})
        metadata = signature_def_json(path)
        gc.unfreeze()  # so that the version this replaces can be collected below
        # one assignment: a request sees the old version or the new one, never half of each (a
        # status request never sees the new version AVAILABLE without the old one END)
        self._state = loaded, version, signatures, inputs, metadata, list(self.ended if ended is None else ended)
        self._loaded, self.version, self.signatures, self.inputs, self._metadata, self.ended = self._state
        # Keep the loaded objects out of the cyclic garbage collector: otherwise every full
        # collection scans TensorFlow's ~300k objects and adds ~140 ms to some requests.
        gc.collect()
        gc.freeze()

    def status(self, version=None):
        """TF Serving's model status (GetModelStatusResponse as JSON): the served version AVAILABLE,
        earlier ones END; one version if asked (KeyError if this engine never served it)."""
        _, served, _, _, _, ended = self._state
        rows = [(served, "AVAILABLE")] + [(v, "END") for v in ended]
        if version is not None:
            rows = [row for row in rows if row[0] == version]
            if not rows:
                raise KeyError(version)
        return {"model_version_status": [{"version": str(v), "state": state,
                                          "status": {"error_code": "OK", "error_message": ""}}
                                         for v, state in rows]}

    def metadata(self):
        """TF Serving's model metadata (GetModelMetadataResponse as JSON): the SavedModel's signature
        defs as protobuf JSON (snake_case names, int64 as strings, empty fields printed)."""
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": self._metadata}}}

    def _tensor(self, value, spec, where, scan=True, shape=None):
        """`value` as a tensor of `spec`, refusing what TF Serving refuses (null, true/false, lossy
        or overflowing ints, strings or {"b64": ...} for numbers, numbers for strings).

        `scan=False` skips the value-by-value check when numpy's own conversion cannot hide a bad
        value (the caller knows the body holds no `true`/`false`)."""
        dtype = spec.dtype
        if dtype == tf.string:
            strings = [self._string(v, where) for v in leaves(value)]
            array = np.empty(len(strings), dtype=object)
            array[:] = strings
            try:
                array = array.reshape(np.shape(value))
            except ValueError:
                raise InvalidInput(f"{where}: ragged lists, not a tensor") from None
        else:
            try:
                guess = np.asarray(value)
            except ValueError:  # ragged lists, or nested deeper than numpy's 64 dimensions
                self._check_leaves(value, dtype, where)  # a bad value explains it best, if there is one
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: ragged lists or nesting deeper "
                                   "than 64 levels, not a tensor") from None
            kind = guess.dtype.kind
            out_of_range = dtype.is_integer and kind == "i" and guess.size and \
                (guess.min() < dtype.min or guess.max() > dtype.max)
            if scan or kind not in "fi" or dtype == tf.bool or (dtype.is_integer and kind == "f") or out_of_range:
                self._check_leaves(value, dtype, where)
            try:
                array = np.asarray(guess, dtype=dtype.as_numpy_dtype)
            except (ValueError, TypeError, OverflowError) as error:
                raise InvalidInput(f"{where}: cannot convert to {dtype.name}: {error}") from None
        if shape is not None:  # V2: flat data and its shape
            array = array.reshape(shape)
        if array.size == 0:
            raise InvalidInput(f"{where}: empty input")
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape]
            raise InvalidInput(f"{where}: shape {list(array.shape)} does not match the signature's {expected}")
        return tf.constant(array)

    @staticmethod
    def _check_leaves(value, dtype, where):
        fits = _fits(dtype)
        for leaf in leaves(value):
            if not fits(leaf):
                raise InvalidInput(f"{where}: {type_error(leaf, dtype)}")

    @staticmethod
    def _string(value, where):
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800"), which rapidjson refuses
                raise InvalidInput(f"{where}: The surrogate pair in string is invalid.") from None
        if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
            try:
                return decode_b64(value["b64"])
            except InvalidInput as error:
                raise InvalidInput(f"{where}: {error.reason}") from None
        raise InvalidInput(f"{where}: {type_error(value, tf.string)}")

    def predict_v1(self, payload, scan=True):
        """TF Serving's V1 predict: a decoded JSON body in, the reply's dict out (raises InvalidInput)."""
        # TF Serving's checks, in its order and words (json_tensor.cc ParseJson, FillSignature,
        # FillPredictRequestFromJson); its FormatError quotes the request (cut at 256 bytes here: tf_serving_json.debug_string)
        if not isinstance(payload, dict):
            raise InvalidInput(format_error(payload, "Is not object"))
        name = payload.get("signature_name", "serving_default")
        if not isinstance(name, str):
            raise InvalidInput(format_error(payload, "not formatted correctly. 'signature_name' key must be a "
                                                     "string value."))
        name = name or "serving_default"  # an empty name means the default (http_rest_api_handler.cc:233-234)
        if name not in self.signatures:
            raise InvalidInput(f'Serving signature name: "{debug_string(name)[1:-1]}" not found in signature def')
        keys = {"instances", "inputs"} & set(payload)
        if len(keys) == 2:
            raise InvalidInput(format_error(payload, "Not formatted correctly expecting only one of 'inputs' or "
                                                     "'instances' keys to exist "))
        if not keys:
            raise InvalidInput("Missing 'inputs' or 'instances' key")
        (key,) = keys
        input_name, spec = self.inputs[name]
        data = payload[key]
        if key == "instances":
            if not isinstance(data, list):
                raise InvalidInput(format_error(payload, "Expecting 'instances' to be an list/array"))
            if not data:
                raise InvalidInput(format_error(payload, "No values in 'instances' array"))
            if isinstance(data[0], dict) and list(data[0]) != ["b64"]:  # rows by name: [{"x": ...}, ...]
                for i, row in enumerate(data):  # json_tensor.cc FillTensorMapFromInstancesList's checks
                    if not isinstance(row, dict):
                        raise InvalidInput(f"Expecting object but got list at item {i} of input list")
                    for row_key in row:
                        if row_key != input_name:
                            raise InvalidInput(f"Failed to process element: {i} key: {debug_string(row_key)[1:-1]} of "
                                           "'instances' list. Error: JSON object: does not have named input: "
                                           f"{debug_string(row_key)[1:-1]}")
                    if set(row) != {input_name}:
                        raise InvalidInput(f"Failed to process element: {i} of 'instances' list. JSON object: "
                                           f"{debug_string(row)} keys must be equal to: {input_name}")
                data = [row[input_name] for row in data]
        elif isinstance(data, dict) and list(data) != ["b64"]:  # columnar by name: {"inputs": {"image": ...}}
            if input_name not in data:
                raise InvalidInput(f"Missing named input: {input_name} in 'inputs' object.")
            data = data[input_name]
        (output_name, output), = self.signatures[name](**{input_name: self._tensor(data, spec, key, scan)}).items()
        return {"predictions" if key == "instances" else "outputs":
                tf_serving_values(output.numpy(), as_b64=output_name.endswith(BYTES_SUFFIX))}

    def predict_v1_body(self, body):
        """The raw V1 request body in, the reply's JSON bytes out: what the RequestGuard runs on its pool."""
        payload = decode_json(body)
        # numpy turns true/false into 1/0 silently; only a body that holds them needs the full scan
        return encode_json(self.predict_v1(payload, scan=b"true" in body or b"false" in body))

    def predict_v2_body(self, body):
        """A V2 (Open Inference Protocol) infer body in, the reply's JSON bytes out: one input, by
        name, shape, datatype and data, checked value by value as V1 checks them."""
        payload = decode_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise InvalidInput("Expected \"inputs\" to be a list of input tensors")
        input_name, spec = self.inputs["serving_default"]
        items = payload["inputs"]
        names = [item.get("name") if isinstance(item, dict) else None for item in items]
        if names != [input_name]:
            raise InvalidInput(f"expected one input named '{input_name}', got {debug_string(names)}")
        (item,) = items
        where = f"input '{input_name}'"
        if "parameters" in item or "parameters" in payload:
            raise InvalidInput(f"{where}: parameters (such as binary_data_size) are not supported; "
                               "send the values in \"data\"")
        datatype, shape, data = item.get("datatype"), item.get("shape"), item.get("data")
        expected = V2_TYPES.get(spec.dtype, spec.dtype.name)
        if datatype != expected:
            raise InvalidInput(f"{where}: datatype {debug_string(datatype)} is not the signature's {expected}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and len(shape) <= 64):
            raise InvalidInput(f"{where}: shape must be a list of non-negative integers, got {debug_string(shape)}")
        if not isinstance(data, list):
            raise InvalidInput(f"{where}: data must be a list, got {debug_string(data)}")
        flat = list(leaves(data))
        if len(flat) != int(np.prod(shape, dtype=np.int64)):
            raise InvalidInput(f"{where}: shape {shape} needs {int(np.prod(shape, dtype=np.int64))} values, "
                               f"data has {len(flat)}")
        # null, true, "1.5" are refused as V1 refuses them (numpy alone would read true as 1)
        value = self._tensor(flat, spec, where, scan=b"true" in body or b"false" in body, shape=shape)
        (output_name, output), = self.signatures["serving_default"](**{input_name: value}).items()
        result = output.numpy()
        reply = {"model_name": self.name, "model_version": str(self.version),
                 "id": payload["id"] if isinstance(payload.get("id"), str) else generate_uuid(),
                 "outputs": [{"name": output_name, "shape": list(result.shape),
                              "datatype": V2_TYPES.get(output.dtype, output.dtype.name),
                              "data": tf_serving_values(result.ravel())}]}
        return encode_json(reply)

    async def predict(self, payload, headers=None):
        """KServe's data plane: not used, the RequestGuard answers V1 and V2 requests itself."""
        raise InvalidInput("this engine answers predictions in its RequestGuard")

    @staticmethod
    def _types(specs):
        return [{"name": k, "datatype": V2_TYPES.get(s.dtype, "FP32"),
                 "shape": [-1 if d is None else d for d in s.shape]} for k, s in specs.items()]

    def get_input_types(self):  # V2 metadata: GET /v2/models/<name>
        return self._types(self.signatures["serving_default"].structured_input_signature[1])

    def get_output_types(self):
        return self._types(self.signatures["serving_default"].structured_outputs)
