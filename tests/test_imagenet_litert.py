"""helpers.imagenet (the offline decision, corrupt caches) and helpers.litert (weightless models)."""
import functools
import urllib.error

import numpy as np
import pytest
import tensorflow as tf

from helpers.imagenet import (CorruptCacheError, is_download_failure, pretrained_or_standin,
                             standin)
from helpers.litert import check_has_weights, interpreter, op_names, run_signature

SMALL = functools.partial(tf.keras.applications.MobileNet, alpha=0.25, input_shape=(96, 96, 3))


def offline(weights="imagenet"):
    if weights == "imagenet":  # what Keras raises when get_file cannot reach the network
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                        "[Errno -2] Name or service not known")
    return SMALL(weights=weights)


def test_failed_download_gives_the_labelled_standin(capsys):
    model, weights = pretrained_or_standin(offline)
    assert weights == "offline stand-in"
    assert model.count_params() == SMALL(weights=None).count_params()
    assert capsys.readouterr().out == ""  # the notebook prints the one line, not the helper


def test_online_path_is_the_plain_call():
    calls = []
    model, weights = pretrained_or_standin(lambda: calls.append(1) or "the model")
    assert (model, weights, calls) == ("the model", "imagenet", [1])


def test_other_errors_are_not_swallowed():
    def broken():
        raise ValueError("bad input_shape")
    with pytest.raises(ValueError, match="bad input_shape"):
        pretrained_or_standin(broken)


def test_download_failure_detection():
    assert is_download_failure(Exception("URL fetch failure on https://x: None -- timed out"))
    assert is_download_failure(urllib.error.URLError("network unreachable"))
    assert not is_download_failure(ValueError("The `weights` argument should be ..."))
    # what h5py raises for a corrupt cached weights file: not a failed download
    assert not is_download_failure(OSError("Unable to synchronously open file (file signature not found)"))


def test_corrupt_cached_weights_are_named_not_replaced(tmp_path, monkeypatch):
    """A junk file where Keras caches MobileNet's weights: an error naming it, not the stand-in."""
    import keras.src.backend.config as keras_config
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # Keras reads KERAS_HOME at import
    (tmp_path / "models").mkdir()
    cached = tmp_path / "models" / "mobilenet_2_5_128_tf.h5"  # the file MobileNet(alpha=0.25, 128 px) reads
    cached.write_bytes(b"<html>captive portal</html>")
    build = functools.partial(tf.keras.applications.MobileNet, alpha=0.25, input_shape=(128, 128, 3))
    with pytest.raises(CorruptCacheError, match=rf"cached weights file '{cached}' is corrupt "
                       r"\(Unable to synchronously open file \(file signature not found\)\): delete it"):
        pretrained_or_standin(build)


def test_standin_is_deterministic_and_not_uniform():
    x = np.random.default_rng(1).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    a, b = standin(SMALL)(x).numpy(), standin(SMALL)(x).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.std() > 1e-6  # an untrained MobileNet scores every class exactly 1/1000


@pytest.fixture(scope="module")
def conversions(small_savedmodels):
    root, model = small_savedmodels
    convert = lambda p: tf.lite.TFLiteConverter.from_saved_model(str(p)).convert()  # noqa: E731
    return model, convert(root / "exported" / "1"), convert(root / "saved" / "1")


def test_export_conversion_matches_keras(conversions):
    model, good, _ = conversions
    x = np.array([[1., -2., 3.]], dtype=np.float32)
    np.testing.assert_allclose(run_signature(good, x), model(x), atol=1e-6)
    check_has_weights(good)
    assert "VAR_HANDLE" not in op_names(good)


def test_run_signature_is_the_chapters_runner_call(conversions):
    """Chapter 5 shows Interpreter + get_signature_runner before using run_signature: same output."""
    from ai_edge_litert.interpreter import Interpreter
    _, good, _ = conversions
    x = np.array([[0.5, 1., -1.]], dtype=np.float32)
    runner = Interpreter(model_content=good).get_signature_runner("serving_default")
    np.testing.assert_array_equal(run_signature(good, x), runner(features=x)["output_0"])


def test_weightless_conversion_is_detected(conversions):
    _, _, weightless = conversions
    assert {"VAR_HANDLE", "READ_VARIABLE"} <= set(op_names(weightless))
    with pytest.raises(ValueError, match=r"reads 6 variables that nothing in it assigns "
                       r"\([\w/]+/beta, [\w/]+/gamma, [\w/]+/moving_mean, \.\.\.\): its weights are missing"):
        check_has_weights(weightless)


def test_stateful_model_is_not_called_weightless(tmp_path):
    """A variable the model updates has variable ops, and its initial value in the file: no fault.
    One assigned variable does not excuse another read without a value."""
    class State(tf.Module):
        def __init__(self):
            super().__init__()
            self.calls = tf.Variable(0.)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            self.calls.assign_add(1.)
            return x + self.calls

    module = State()
    tf.saved_model.save(module, str(tmp_path / "state"), signatures=module.__call__)
    stateful = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "state")).convert()
    assert {"VAR_HANDLE", "ASSIGN_VARIABLE", "CALL_ONCE"} <= set(op_names(stateful))
    check_has_weights(stateful)
    runner = interpreter(stateful).get_signature_runner("serving_default")
    assert [float(runner(x=np.array([1.], np.float32))["output_0"][0]) for _ in range(2)] == [2., 3.]


def test_offline_download_raises_a_plain_exception(tmp_path):
    """What Keras really raises when get_file cannot connect (the appendix quotes it)."""
    with pytest.raises(Exception, match=r"^URL fetch failure on http://127\.0\.0\.1:9/") as info:
        tf.keras.utils.get_file("nope.bin", "http://127.0.0.1:9/nope.bin", cache_dir=str(tmp_path))
    assert type(info.value) is Exception and is_download_failure(info.value)


def test_isolated_conversion_matches_the_in_process_one(conversions, small_savedmodels):
    from helpers.litert import convert_saved_model
    root, _ = small_savedmodels
    _, in_process, _ = conversions
    assert convert_saved_model(root / "exported" / "1") == in_process


@pytest.mark.parametrize("returncode, stderr, message", [
    (-6, "W0000 noise\nLLVM ERROR: Failed to infer result type(s).\n",  # TF 2.16's abort
     r"converting 'm/1' failed \(exit status -6\): LLVM ERROR: Failed to infer result type\(s\)\.$"),
    (1, "Traceback ...\nOSError: SavedModel file does not exist at: m/1\n",
     r"converting 'm/1' failed \(exit status 1\): OSError: SavedModel file does not exist at: m/1$"),
    (0, "", r"converting 'm/1' failed \(exit status 0\): no message$"),  # exited without a file
])
def test_isolated_conversion_reports_a_crashed_child(monkeypatch, returncode, stderr, message):
    """The child's failure (a real one: chapter 5's conversion runs in the child) is a RuntimeError."""
    import subprocess

    from helpers import _child
    from helpers.litert import convert_saved_model
    monkeypatch.setattr(_child, "run_python", lambda code, env=None, timeout=600:
                        subprocess.CompletedProcess(["python"], returncode, "", stderr))
    with pytest.raises(RuntimeError, match=message):
        convert_saved_model("m/1")
