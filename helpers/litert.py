"""Running a converted LiteRT (TFLite) model, and telling a weightless conversion from a real one."""
import os
import tempfile

import numpy as np

from . import _child

VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"}


def interpreter(model_bytes):
    """A LiteRT interpreter (`ai_edge_litert`; `tf.lite.Interpreter` is deprecated) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    return it


def op_names(model_bytes):
    """The sorted set of operator names in the model."""
    return sorted({op["op_name"] for op in interpreter(model_bytes)._get_ops_details()})


def check_has_weights(model_bytes):
    """Raise if the model reads its weights from resource variables instead of holding them.

    That is what converting a Keras 3 model saved with `tf.saved_model.save` produces: a
    0.1 MB file whose outputs are NaN or garbage, with no error from the converter.
    """
    if model_bytes is None:
        raise ValueError("no LiteRT model to check: the conversion did not produce one")
    found = VARIABLE_OPS & set(op_names(model_bytes))
    if found:
        raise ValueError(
            f"this LiteRT model ({len(model_bytes) / 1e6:.2f} MB) has variable ops {sorted(found)} "
            "instead of constant weights: its weights are missing. Convert from a "
            "model.export() SavedModel (or TFLiteConverter.from_keras_model) instead.")


def run_signature(model_bytes, x, signature="serving_default"):
    """Call one signature of the model on `x` (its single input) and return its single output."""
    runner = interpreter(model_bytes).get_signature_runner(signature)
    (input_name,) = runner.get_input_details()
    (output,) = runner(**{input_name: np.asarray(x, dtype=np.float32)}).values()
    return output


def convert_saved_model(path):
    """`tf.lite.TFLiteConverter.from_saved_model(path).convert()`, run in a separate process.

    Converting a Keras 3 `tf.saved_model.save` directory gives a weightless model on TF 2.21,
    but on TF 2.16 it aborts the whole process (`LLVM ERROR: Failed to infer result type(s)`),
    which in a notebook kills the kernel. In a child process that becomes a RuntimeError.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.tflite")
        result = _child.run_python(f"""
            import tensorflow as tf
            data = tf.lite.TFLiteConverter.from_saved_model({str(path)!r}).convert()
            open({out!r}, "wb").write(data)
        """)
        if result.returncode or not os.path.exists(out):
            raise RuntimeError(f"converting '{path}' failed (exit status {result.returncode}): "
                               f"{_child.last_error(result.stderr)}")
        with open(out, "rb") as f:
            return f.read()
