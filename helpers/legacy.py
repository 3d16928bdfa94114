"""Run code under legacy Keras 2 (`tf_keras`) from a Keras 3 notebook, in a separate process.

`TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is imported, so the legacy half of a
comparison runs as its own Python process; its standard output is printed.
"""
import importlib.util

from . import _child


def tf_keras_install_command(tensorflow_version=None):
    """The pip command that installs the tf-keras release matching this TensorFlow.

    tf-keras X.Y requires the `tensorflow` distribution X.Y, so an unpinned `pip install tf-keras`
    upgrades the reader's TensorFlow (or, next to `tensorflow-cpu`, adds a second one): pin the
    same minor version and skip its dependencies.
    """
    if tensorflow_version is None:
        import tensorflow as tf
        tensorflow_version = tf.__version__
    major, minor = tensorflow_version.split(".")[:2]
    return f"pip install --no-deps 'tf-keras=={major}.{minor}.*'"


def run_with_legacy_keras(code, timeout=300):
    """Run `code` with `tf.keras` resolving to `tf_keras` (Keras 2), print what it prints."""
    if importlib.util.find_spec("tf_keras") is None:
        raise RuntimeError(f"legacy Keras is not installed: {tf_keras_install_command()} "
                           "(the tf-keras of this TensorFlow's version; --no-deps keeps it from "
                           "changing TensorFlow)")
    result = _child.run_python(code, env={"TF_USE_LEGACY_KERAS": "1"}, timeout=timeout)
    print(result.stdout, end="")
    if result.returncode:
        raise RuntimeError(f"the legacy-Keras process failed: {_child.last_error(result.stderr)}")
