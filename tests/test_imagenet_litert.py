"""helpers.imagenet (the offline decision, corrupt caches) and helpers.litert (weightless models)."""
import functools
import urllib.error

import numpy as np
import pytest
import tensorflow as tf

from helpers.imagenet import (CorruptCacheError, is_download_failure, pretrained_or_standin,
                             standin)
from helpers.litert import check_has_weights, op_names, run_signature

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
                       r"\(Unable to synchronously open file.*\): delete it"):
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
    assert "VAR_HANDLE" in op_names(weightless)
    with pytest.raises(ValueError, match=r"variable ops \['READ_VARIABLE', 'VAR_HANDLE'\].*weights are missing"):
        check_has_weights(weightless)


def test_offline_download_raises_a_plain_exception(tmp_path):
    """What Keras really raises when get_file cannot connect (the appendix quotes it)."""
    with pytest.raises(Exception, match=r"^URL fetch failure on http://127\.0\.0\.1:9/") as info:
        tf.keras.utils.get_file("nope.bin", "http://127.0.0.1:9/nope.bin", cache_dir=str(tmp_path))
    assert type(info.value) is Exception and is_download_failure(info.value)


def test_isolated_conversion_matches_and_reports_failures(conversions, small_savedmodels, tmp_path):
    from helpers.litert import convert_saved_model
    root, _ = small_savedmodels
    _, in_process, _ = conversions
    assert convert_saved_model(root / "exported" / "1") == in_process
    with pytest.raises(RuntimeError, match=r"converting '.*missing' failed \(exit status 1\)"):
        convert_saved_model(tmp_path / "missing")
