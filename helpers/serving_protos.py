"""TF Serving's protobuf messages for its config files and recorded requests, without `tensorflow-serving-api`.

`tensorflow-serving-api` 2.21.0 (the package with these classes) declares a dependency on the
distribution `tensorflow`; the book pins `tensorflow-cpu`, so pip would add the 572 MB `tensorflow`
wheel over the same files. Its classes are imported when it is installed anyway (for example with
`pip install --no-deps tensorflow-serving-api==2.21.0`). Otherwise this module declares the same
messages — same package, names and field numbers as TF Serving's .proto files, so the text files
and the records are the real server's — limited to the fields the book uses (a config using
`logging_config`, say, is refused as an unknown field). tests/test_serving_protos.py compares every
field with the real package's when that package is importable.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)
from tensorflow.core.framework import tensor_pb2  # noqa: F401  (registers tensorflow/core/framework/tensor.proto)

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32, "bool": _F.TYPE_BOOL}
_POLICY = ".tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy"

# file -> its imports and messages; a message: (name, fields, nested messages, oneof names);
# a field: (name, number, type or ".full.MessageName", "repeated"/"map"/None, oneof index or None).
# A "map" field names its value type; the key is a string, as in every map here.
FILES = {
    "tensorflow_serving/config/file_system_storage_path_source.proto": ([], [
        ("FileSystemStoragePathSourceConfig", [], [
            ("ServableVersionPolicy", [
                ("latest", 100, _POLICY + ".Latest", None, 0), ("all", 101, _POLICY + ".All", None, 0),
                ("specific", 102, _POLICY + ".Specific", None, 0)], [
                ("Latest", [("num_versions", 1, "uint32", None, None)], [], []),
                ("All", [], [], []),
                ("Specific", [("versions", 1, "int64", "repeated", None)], [], [])], ["policy_choice"])], [])]),
    "tensorflow_serving/config/model_server_config.proto": (
        ["tensorflow_serving/config/file_system_storage_path_source.proto"], [
            ("ModelConfig", [("name", 1, "string", None, None), ("base_path", 2, "string", None, None),
                             ("model_platform", 4, "string", None, None),
                             ("model_version_policy", 7, _POLICY, None, None),
                             ("version_labels", 8, "int64", "map", None)], [], []),
            ("ModelConfigList", [("config", 1, ".tensorflow.serving.ModelConfig", "repeated", None)], [], []),
            ("ModelServerConfig", [("model_config_list", 1, ".tensorflow.serving.ModelConfigList", None, 0)],
             [], ["config"])]),
    "tensorflow_serving/apis/model.proto": (["google/protobuf/wrappers.proto"], [
        ("ModelSpec", [("name", 1, "string", None, None), ("version", 2, ".google.protobuf.Int64Value", None, 0),
                       ("version_label", 4, "string", None, 0), ("signature_name", 3, "string", None, None)],
         [], ["version_choice"])]),
    "tensorflow_serving/apis/predict.proto": (
        ["tensorflow/core/framework/tensor.proto", "tensorflow_serving/apis/model.proto"], [
            ("PredictRequest", [("model_spec", 1, ".tensorflow.serving.ModelSpec", None, None),
                                ("inputs", 2, ".tensorflow.TensorProto", "map", None),
                                ("output_filter", 3, "string", "repeated", None)], [], []),
            ("PredictResponse", [("outputs", 1, ".tensorflow.TensorProto", "map", None),
                                 ("model_spec", 2, ".tensorflow.serving.ModelSpec", None, None)], [], [])]),
    "tensorflow_serving/apis/prediction_log.proto": (["tensorflow_serving/apis/predict.proto"], [
        ("PredictLog", [("request", 1, ".tensorflow.serving.PredictRequest", None, None),
                        ("response", 2, ".tensorflow.serving.PredictResponse", None, None)], [], []),
        ("PredictionLog", [("predict_log", 6, ".tensorflow.serving.PredictLog", None, 0)], [], ["log_type"])]),
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto": (["google/protobuf/wrappers.proto"], [
        ("BatchingParameters", [
            ("max_batch_size", 1, ".google.protobuf.Int64Value", None, None),
            ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", None, None),
            ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", None, None),
            ("num_batch_threads", 4, ".google.protobuf.Int64Value", None, None),
            ("thread_pool_name", 5, ".google.protobuf.StringValue", None, None),
            ("allowed_batch_sizes", 6, "int64", "repeated", None),
            ("pad_variable_length_inputs", 7, "bool", None, None)], [], [])]),
}


def _message(name, fields, nested, oneofs):
    message = descriptor_pb2.DescriptorProto(name=name)
    for sub in nested:
        message.nested_type.append(_message(*sub))
    for oneof in oneofs:
        message.oneof_decl.add(name=oneof)
    for field_name, number, kind, label, oneof in fields:
        field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
        if label == "map":  # map<string, kind>: a repeated nested XxxEntry message
            entry = "".join(part.title() for part in field_name.split("_")) + "Entry"
            message.nested_type.append(_message(entry, [("key", 1, "string", None, None),
                                                        ("value", 2, kind, None, None)], [], []))
            message.nested_type[-1].options.map_entry = True
            kind = f".tensorflow.serving.{name}.{entry}"  # nested in a top-level message here
        if label in ("map", "repeated"):
            field.label = _F.LABEL_REPEATED
        if kind.startswith("."):
            field.type, field.type_name = _F.TYPE_MESSAGE, kind
        else:
            field.type = _TYPES[kind]
        if oneof is not None:
            field.oneof_index = oneof
    return message


def file_descriptors():
    """The FileDescriptorProto of each file in FILES (package tensorflow.serving, proto3)."""
    for name, (imports, messages) in FILES.items():
        proto = descriptor_pb2.FileDescriptorProto(name=name, package="tensorflow.serving", syntax="proto3",
                                                   dependency=imports)
        proto.message_type.extend(_message(*m) for m in messages)
        yield proto


try:  # the real package, where it is installed
    from tensorflow_serving.apis.model_pb2 import ModelSpec
    from tensorflow_serving.apis.predict_pb2 import PredictRequest, PredictResponse
    from tensorflow_serving.apis.prediction_log_pb2 import PredictionLog, PredictLog
    from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig
    SOURCE = "tensorflow-serving-api"
    BatchingParameters = None  # not in the pip package (it holds the client APIs and model configs only)
except ImportError:
    SOURCE = "helpers.serving_protos"
    ModelSpec = PredictRequest = PredictResponse = PredictionLog = PredictLog = ModelConfig = None
    ModelServerConfig = BatchingParameters = None

_pool = descriptor_pool.Default()
for _proto in file_descriptors():
    try:
        _pool.FindFileByName(_proto.name)  # already there: the real package's file
    except KeyError:
        _pool.AddSerializedFile(_proto.SerializeToString())


def message_class(full_name):
    """The message class named `full_name` ("tensorflow.serving.ModelServerConfig") in the default pool."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(full_name))


for _name in ("ModelSpec", "PredictRequest", "PredictResponse", "PredictionLog", "PredictLog", "ModelConfig",
              "ModelServerConfig", "BatchingParameters"):
    if globals()[_name] is None:
        globals()[_name] = message_class(f"tensorflow.serving.{_name}")
