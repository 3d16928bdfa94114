"""A SavedModel's warm-up file: recorded requests that TF Serving runs when it loads a version, so
the first real request does not pay for lazy initialisation.

TF Serving reads `<version>/assets.extra/tf_serving_warmup_requests`: a TFRecord file of
`PredictionLog` protos, at most 1000 records (its saved_model_warmup guide); a record that fails
makes the version fail to load. Chapter 13 writes one with `tf.io.TFRecordWriter` first; the
book's engine replays it with `--enable_model_warmup` (`replay`).
"""
import time
from pathlib import Path

import tensorflow as tf

from helpers.savedmodel import get_signature, load
from helpers.serving_protos import PredictionLog, PredictLog, PredictRequest

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000


def warmup_path(version_dir):
    """`<version_dir>/assets.extra/tf_serving_warmup_requests`."""
    return Path(version_dir) / "assets.extra" / WARMUP_FILE


def prediction_log(model_name, inputs, signature_name="serving_default"):
    """One record: a `PredictionLog` holding a predict request of `inputs` ({input name: array})."""
    request = PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return PredictionLog(predict_log=PredictLog(request=request))


def write_warmup(version_dir, model_name, requests, signature_name="serving_default"):
    """Write `requests` (a list of {input name: array}) as the warm-up file of the SavedModel in
    `version_dir`, after checking each request's input names against that signature."""
    if not 0 < len(requests) <= MAX_RECORDS:
        raise ValueError(f"{len(requests)} warm-up requests: TF Serving reads 1 to {MAX_RECORDS}")
    signature = get_signature(load(version_dir), signature_name, path=version_dir)
    expected = set(signature.structured_input_signature[1])
    for index, inputs in enumerate(requests):
        if set(inputs) != expected:
            raise ValueError(f"warm-up request {index}: inputs {sorted(inputs)}, but signature "
                             f"'{signature_name}' of {version_dir} takes {sorted(expected)}")
    path = warmup_path(version_dir)
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for inputs in requests:
            writer.write(prediction_log(model_name, inputs, signature_name).SerializeToString())
    return path


def read_warmup(version_dir):
    """The `PredictRequest`s recorded in the warm-up file of `version_dir`, in order."""
    path = warmup_path(version_dir)
    records = [PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{path}: {len(records)} records; TF Serving reads at most {MAX_RECORDS}")
    for index, record in enumerate(records):
        if record.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {index} is not a predict_log")
    return [record.predict_log.request for record in records]


def replay(signatures, version_dir, log=print):
    """Run every recorded request of `version_dir`'s warm-up file on `signatures` ({name: function}),
    as TF Serving does at load time; a failing request raises. Returns the number replayed."""
    start = time.perf_counter()
    requests = read_warmup(version_dir)
    for index, request in enumerate(requests):
        name = request.model_spec.signature_name or "serving_default"
        if name not in signatures:
            raise ValueError(f"warm-up record {index}: no signature '{name}'")
        signatures[name](**{key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()})
    log(f"Finished reading warmup data for model at {warmup_path(version_dir)}. Number of warmup records "
        f"read: {len(requests)}. Elapsed time (microseconds): {int((time.perf_counter() - start) * 1e6)}.")
    return len(requests)
