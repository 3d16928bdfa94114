"""Checks a chapter runs first, so an unsuitable environment fails with advice, not deep inside a cell."""
import re


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def require(keras=None, tensorflow=None):
    """Raise a RuntimeError naming the package and the fix if an installed version is too old.

    The book runs on TensorFlow 2.16-2.21 with Keras 3; some chapters need a newer Keras
    (for example `model.export(..., input_signature=...)` arrived in Keras 3.8).
    """
    import tensorflow as tf
    installed = {"tensorflow": tf.__version__, "keras": tf.keras.__version__}  # 2.16+: Keras 3
    for name, minimum in (("tensorflow", tensorflow), ("keras", keras)):
        if minimum and _version(installed[name]) < _version(minimum):
            raise RuntimeError(
                f"this chapter needs {name} >= {minimum}, but {installed[name]} is installed: "
                f"run  pip install -U '{name}>={minimum}'  and restart the runtime")
    if _version(installed["keras"]) < (3,):
        raise RuntimeError(
            f"this book is written for Keras 3, but tf.keras is Keras {installed['keras']} "
            "(TF_USE_LEGACY_KERAS is set, or TensorFlow is older than 2.16)")
