"""helpers.serving_protos: the TF Serving messages the book declares itself are the real ones on the wire."""
import importlib

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, text_format

from helpers import serving_protos as sp

# Serialised with tensorflow-serving-api 2.21.0's own classes (pip download, then imported with
# tensorflow-cpu): a warm-up record and a model config, byte for byte.
REAL_RECORD = ("32330a310a160a03746f791a0f73657276696e675f64656661756c7412170a017812120801120812020801120208"
               "012a040000003f")
REAL_CONFIG = ("0a350a330a03746f79120b2f6d6f64656c732f746f79220a74656e736f72666c6f773a07b206040a020203420a0a"
               "06737461626c651002")
CONFIG_TEXT = ('model_config_list { config { name: "toy" base_path: "/models/toy" model_platform: "tensorflow" '
               'model_version_policy { specific { versions: 2 versions: 3 } } version_labels { key: "stable" value: 2 } } }')


def test_a_warmup_record_has_the_real_packages_bytes():
    request = sp.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[0.5]], np.float32)))
    record = sp.PredictionLog(predict_log=sp.PredictLog(request=request))
    assert record.SerializeToString().hex() == REAL_RECORD
    assert sp.PredictionLog.FromString(bytes.fromhex(REAL_RECORD)) == record


def test_a_model_config_has_the_real_packages_bytes():
    config = text_format.Parse(CONFIG_TEXT, sp.ModelServerConfig())
    assert config.SerializeToString().hex() == REAL_CONFIG


def test_an_unknown_field_is_a_parse_error_with_its_line():
    with pytest.raises(text_format.ParseError, match=r'^3:3 : .*ModelConfig" has no field named "nmae"'):
        text_format.Parse('model_config_list {\n config {\n  nmae: "x"\n }\n}', sp.ModelServerConfig())


def test_batching_parameters_use_wrapper_values():
    params = text_format.Parse("max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 32",
                               sp.BatchingParameters())
    assert params.max_batch_size.value == 32 and list(params.allowed_batch_sizes) == [8, 32]


def _fields(message, prefix=""):
    found = {}
    for field in message.field:
        oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
        found[f"{prefix}{message.name}.{field.name}"] = (field.number, field.label, field.type, field.type_name, oneof)
    for nested in message.nested_type:
        found.update(_fields(nested, f"{prefix}{message.name}."))
    return found


@pytest.mark.parametrize("proto", list(sp.file_descriptors()), ids=lambda p: p.name.split("/")[-1])
def test_every_declared_field_matches_the_real_package(proto):
    module = proto.name.replace("/", ".").replace(".proto", "_pb2")
    try:
        real_module = importlib.import_module(module)
    except ImportError:
        pytest.skip("tensorflow-serving-api is not installed (its bytes are checked above)")
    real = descriptor_pb2.FileDescriptorProto()
    real_module.DESCRIPTOR.CopyToProto(real)
    ours, theirs = {}, {}
    for m in proto.message_type:
        ours.update(_fields(m))
    for m in real.message_type:
        theirs.update(_fields(m))
    assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {}
