"""helpers.warmup: the warm-up file TF Serving replays, written, read back, checked and replayed."""
import numpy as np
import pytest
import tensorflow as tf

from helpers.model_server import ModelServer
from helpers.savedmodel import NotASavedModelError
from helpers.warmup import MAX_RECORDS, read_warmup, replay, warmup_path, write_warmup


class Counting(tf.Module):
    """A model that counts its calls in a variable, so a replay can be seen."""

    def __init__(self):
        self.calls = tf.Variable(0)

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        self.calls.assign_add(1)
        return {"y": 2 * x}


@pytest.fixture
def version_dir(tmp_path):
    module = Counting()
    path = tmp_path / "counting" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_written_requests_read_back_in_order(version_dir):
    path = write_warmup(version_dir, "counting", [{"x": np.full((1, 1), i, np.float32)} for i in range(3)])
    assert path == version_dir / "assets.extra" / "tf_serving_warmup_requests"
    requests = read_warmup(version_dir)
    assert [float(tf.make_ndarray(r.inputs["x"])[0, 0]) for r in requests] == [0.0, 1.0, 2.0]
    assert {(r.model_spec.name, r.model_spec.signature_name) for r in requests} == {("counting", "serving_default")}


def test_a_request_with_another_input_name_is_refused(version_dir):
    with pytest.raises(ValueError, match=r"warm-up request 1: inputs \['inputs'\], but signature 'serving_default'"):
        write_warmup(version_dir, "counting", [{"x": np.zeros((1, 1), np.float32)}, {"inputs": np.zeros((1, 1))}])
    assert not warmup_path(version_dir).exists()


def test_more_records_than_tf_serving_reads_are_refused(version_dir):
    with pytest.raises(ValueError, match="TF Serving reads 1 to 1000"):
        write_warmup(version_dir, "counting", [{"x": np.zeros((1, 1), np.float32)}] * (MAX_RECORDS + 1))


def test_a_folder_that_is_no_savedmodel_is_named(tmp_path):
    with pytest.raises(NotASavedModelError, match="no saved_model.pb"):
        write_warmup(tmp_path, "counting", [{"x": np.zeros((1, 1), np.float32)}])


def test_replay_runs_every_record(version_dir):
    write_warmup(version_dir, "counting", [{"x": np.zeros((1, 1), np.float32)}] * 4)
    loaded = tf.saved_model.load(str(version_dir))
    lines = []
    assert replay(loaded.signatures, version_dir, log=lines.append) == 4
    assert int(loaded.calls.numpy()) == 4
    assert "Number of warmup records read: 4." in lines[0]


def test_the_engine_does_not_replay_the_file_unless_asked(version_dir):
    """The other half, that --enable_model_warmup does replay it, is chapter 13's cell that prints the
    engine's "Number of warmup records read: 1" line (nbval fails the chapter without it)."""
    write_warmup(version_dir, "counting", [{"x": np.zeros((1, 1), np.float32)}] * 2)
    server = ModelServer("counting", version_dir.parent, engine="kserve", keep_log=True)
    with server:
        log = open(server.log_path).read()
    assert "Registering model: counting" in log, log[-500:]  # the log is the engine's, read after it loaded
    assert "warmup" not in log, log[-500:]
