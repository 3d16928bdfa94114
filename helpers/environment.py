"""Checks a chapter runs first, so an unsuitable environment fails with advice, not deep inside a cell."""
import re


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def require(keras=None, tensorflow=None):
    """Raise a RuntimeError naming the package and the fix if an installed version is too old.

    Every chapter asks for the Keras its stored outputs were made with (pyproject.toml's tested-keras
    extra); on Colab its first cell installs that Keras (helpers.colab.install_tested_keras).
    """
    import tensorflow as tf
    installed = {"tensorflow": tf.__version__, "keras": tf.keras.__version__}  # 2.16+: Keras 3
    for name, minimum in (("tensorflow", tensorflow), ("keras", keras)):
        if minimum and _version(installed[name]) < _version(minimum):
            fix = (f"run  pip install -U '{name}>={minimum}'  and restart the runtime" if name == "tensorflow" else
                   "restart the runtime and, before anything imports TensorFlow, run  from helpers.colab "
                   "import install_tested_keras; install_tested_keras()  (the book's Keras, within what "
                   "your TensorFlow allows)")
            raise RuntimeError(f"this chapter needs {name} >= {minimum}, but {installed[name]} is installed: {fix}")
    if _version(installed["keras"]) < (3,):
        raise RuntimeError(
            f"this book is written for Keras 3, but tf.keras is Keras {installed['keras']} "
            "(TF_USE_LEGACY_KERAS is set, or TensorFlow is older than 2.16)")
