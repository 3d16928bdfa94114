"""Run code under legacy Keras 2 (`tf_keras`) from a Keras 3 notebook, in a separate process.

`TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is imported, so the legacy half of a
comparison runs as its own Python process; its standard output is printed.
"""
import importlib.util

from . import _child


def run_with_legacy_keras(code, timeout=300):
    """Run `code` with `tf.keras` resolving to `tf_keras` (Keras 2), print what it prints."""
    if importlib.util.find_spec("tf_keras") is None:
        raise RuntimeError("legacy Keras is not installed: pip install --no-deps 'tf-keras==2.21.*' "
                           "(--no-deps keeps it from pulling a second TensorFlow wheel)")
    result = _child.run_python(code, env={"TF_USE_LEGACY_KERAS": "1"}, timeout=timeout)
    print(result.stdout, end="")
    if result.returncode:
        raise RuntimeError(f"the legacy-Keras process failed: {_child.last_error(result.stderr)}")
