"""Looking at a SavedModel: is it one, what signatures does it offer, what does the CLI say.

Functions take the SavedModel *directory* (the one holding `saved_model.pb`) and raise
`NotASavedModelError` / `MissingSignatureError` naming the path or signature at fault.
"""
import shlex
import sys
from pathlib import Path

import tensorflow as tf

from . import _child
from .model_server import version_folders
from .table import Table


class NotASavedModelError(ValueError):
    """The path is not a SavedModel directory."""


class MissingSignatureError(KeyError):
    """The SavedModel has no signature of that name."""

    def __str__(self):  # KeyError would quote the whole message
        return self.args[0]


def check_saved_model(path):
    """Return `path` as a `Path` if it is a SavedModel directory, else say what it is instead."""
    path = Path(path)
    if not path.exists():
        raise NotASavedModelError(f"'{path}' does not exist")
    if path.is_file():
        kind = "a Keras file" if path.name.endswith((".keras", ".h5")) else "a file"
        raise NotASavedModelError(
            f"'{path}' is {kind}, not a SavedModel directory (one holding saved_model.pb)")
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        index = path / "variables" / "variables.index"
        if not index.is_file():  # every save writes it, even for a model without variables
            raise NotASavedModelError(
                f"'{path}' has saved_model.pb but no '{index}': its variables folder is missing "
                "or incomplete (a partial copy?), so loading it fails")
        return path
    versions = [folder.name for folder in version_folders(path)]  # numeric order, as TF Serving reads them
    if versions:
        raise NotASavedModelError(
            f"'{path}' holds version folders {versions}, not a SavedModel: pass "
            f"'{path / versions[-1]}' (TF Serving's --model_base_path is this parent folder)")
    if (path / "checkpoint").is_file() or any(path.glob("*.index")):
        raise NotASavedModelError(
            f"'{path}' holds a training checkpoint, not a SavedModel (no saved_model.pb)")
    raise NotASavedModelError(f"'{path}' is not a SavedModel directory: no saved_model.pb in it")


def load(path):
    """`tf.saved_model.load(path)` after checking that `path` is a SavedModel."""
    return tf.saved_model.load(str(check_saved_model(path)))


def get_signature(loaded, name="serving_default", path=None):
    """The concrete function `loaded.signatures[name]`, or an error listing the signatures there are."""
    if name not in loaded.signatures:
        where = f"SavedModel '{path}'" if path else "this SavedModel"
        have = ", ".join(sorted(loaded.signatures)) or "none"
        raise MissingSignatureError(f"{where} has no signature '{name}'; it has: {have}")
    return loaded.signatures[name]


def signature_summary(saved_model):
    """Every signature's inputs and outputs (name, dtype, shape) as a `Table`.

    `saved_model` is a SavedModel directory or an object returned by `tf.saved_model.load`.
    """
    loaded = load(saved_model) if isinstance(saved_model, (str, Path)) else saved_model
    rows = []
    for sig_name in sorted(loaded.signatures):
        fn = loaded.signatures[sig_name]
        _, inputs = fn.structured_input_signature
        for kind, specs in (("input", inputs), ("output", fn.structured_outputs)):
            for key in sorted(specs):
                spec = specs[key]
                rows.append((sig_name, kind, key, spec.dtype.name, str(spec.shape)))
    return Table(["signature", "", "name", "dtype", "shape"], rows)


UNORDERED_OPS_LINE = "contains the following ops:"


def saved_model_cli(*args, max_lines=16):
    """Run `saved_model_cli ARGS` with this Python and print the command, quoted so that it can be
    pasted into a shell, then its standard output (and its exit status if not 0).

    The same command as typing `saved_model_cli ...` in a shell, in this environment, with no
    variable or flag added. What is printed differs: the list of ops that `show --all` prints is
    a set in random order, so that line is left out; output past `max_lines` lines is cut (a
    MobileNet result is 250 lines of numbers); stderr (TensorFlow's log lines) is not printed,
    except, on failure, the final error line of its traceback.
    """
    if max_lines < 0:
        raise ValueError(f"max_lines must be 0 or more, got {max_lines}")
    result = _child.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args])
    print("$ " + shlex.join(["saved_model_cli", *map(str, args)]))  # pasteable into a shell
    lines = [line for line in result.stdout.splitlines() if UNORDERED_OPS_LINE not in line]
    for line in lines[:max_lines]:
        print(line)
    if len(lines) > max_lines:
        print(f"... (output cut at max_lines={max_lines})")
    if result.returncode:
        print(f"exit status {result.returncode}: {_child.last_error(result.stderr)}")
