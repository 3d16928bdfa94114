"""Running a converted LiteRT (TFLite) model, and telling a weightless conversion from a real one."""
import os
import tempfile

import numpy as np

from . import _child


def interpreter(model_bytes):
    """A LiteRT interpreter (`ai_edge_litert`; `tf.lite.Interpreter` is deprecated) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    return it


def _operators(model_bytes):
    """Every operator of every subgraph, read from the flatbuffer: (subgraph, op name, inputs,
    outputs, variable name or None). A variable is named by its VAR_HANDLE's container/shared_name."""
    from ai_edge_litert import schema_py_generated as schema
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAs(model_bytes, 0)
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            variable = None
            if name == "VAR_HANDLE":
                table, options = op.BuiltinOptions(), schema.VarHandleOptions()
                options.Init(table.Bytes, table.Pos)
                variable = b"/".join(filter(None, [options.Container(), options.SharedName()])).decode()
            inputs = op.InputsAsNumpy().tolist() if op.InputsLength() else []
            outputs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
            yield g, name, inputs, outputs, variable


def op_names(model_bytes):
    """The sorted set of operator names in the model, over all its subgraphs."""
    return sorted({name for _, name, *_ in _operators(model_bytes)})


def variables_without_value(model_bytes):
    """The sorted names of the variables the model reads but that no operator in it ever assigns.

    A correct model that keeps state (a counter, a cache) reads variables too, but it also holds
    their initial values (an initialiser subgraph run once, `CALL_ONCE`, assigns them). A variable
    that is read and never assigned has no value anywhere in the file.
    """
    handles, read, assigned = {}, set(), set()
    for g, name, inputs, outputs, variable in _operators(model_bytes):
        if name == "VAR_HANDLE":
            handles[g, outputs[0]] = variable
        elif name in ("READ_VARIABLE", "ASSIGN_VARIABLE") and (g, inputs[0]) in handles:
            (read if name == "READ_VARIABLE" else assigned).add(handles[g, inputs[0]])
    return sorted(read - assigned)


def check_has_weights(model_bytes):
    """Raise if the model reads variables that nothing in it gives a value.

    That is what converting a Keras 3 model saved with `tf.saved_model.save` produces: a
    0.1 MB file whose outputs are NaN or garbage, with no error from the converter. Variable
    ops alone are no fault: a stateful model holds its variables' initial values and passes.
    """
    if model_bytes is None:
        raise ValueError("no LiteRT model to check: the conversion did not produce one")
    missing = variables_without_value(model_bytes)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ValueError(
            f"this LiteRT model ({len(model_bytes) / 1e6:.2f} MB) reads {len(missing)} variables "
            f"that nothing in it assigns ({shown}): its weights are missing. Convert from a "
            "model.export() SavedModel (or TFLiteConverter.from_keras_model) instead.")


def run_signature(model_bytes, x, signature="serving_default"):
    """Call one signature of the model on `x` (its single input) and return its single output."""
    runner = interpreter(model_bytes).get_signature_runner(signature)
    (input_name,) = runner.get_input_details()
    (output,) = runner(**{input_name: np.asarray(x, dtype=np.float32)}).values()
    return output


def convert_saved_model(path):
    """`tf.lite.TFLiteConverter.from_saved_model(path).convert()`, run in a separate process.

    Converting a Keras 3 `tf.saved_model.save` directory gives a weightless model on TF 2.21;
    on TF 2.16 such conversions can abort the whole process (`LLVM ERROR: Failed to infer result
    type(s)`, tensorflow/tensorflow#63987), which in a notebook kills the kernel. In a child
    process that becomes a RuntimeError.
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
