"""Looking inside a training checkpoint: its files, its keys, its object graph.

Each function wraps a public call the chapters show first (`tf.train.load_checkpoint`,
`tf.train.list_variables`, `os.listdir`). Like `tf.train.load_checkpoint`, they take a checkpoint
*prefix* such as ``tf_ckpts/ckpt-5`` (the name `manager.save()` returns) or a directory, read as its
latest checkpoint; anything else raises `NotACheckpointError` naming the path and what is wrong.
"""
import os
import re
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from .table import Table

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class NotACheckpointError(ValueError):
    """The path given is not a readable TensorFlow checkpoint prefix."""


def open_checkpoint(prefix):
    """`tf.train.load_checkpoint(prefix)`, or a `NotACheckpointError` that says what is wrong."""
    prefix = os.fspath(prefix)
    path = Path(prefix)
    if path.is_dir():  # as tf.train.load_checkpoint does: the directory's latest checkpoint
        latest = tf.train.latest_checkpoint(prefix)
        if latest is None:
            raise NotACheckpointError(
                f"'{prefix}' is a directory with no 'checkpoint' state file naming a latest "
                "checkpoint; pass a checkpoint prefix (the name manager.save() returns)")
        prefix, path = latest, Path(latest)
    if path.suffix == ".index" or ".data-" in path.name:
        stem = prefix[: prefix.rindex(".index" if path.suffix == ".index" else ".data-")]
        raise NotACheckpointError(
            f"'{prefix}' is one file of a checkpoint; pass its prefix '{stem}' instead")
    if path.name.endswith((".weights.h5", ".keras", ".h5")):
        raise NotACheckpointError(
            f"'{prefix}' is a Keras file, not a TensorFlow checkpoint; open it with Keras "
            "(model.load_weights / keras.models.load_model)")
    index = Path(prefix + ".index")
    if not index.is_file():
        raise NotACheckpointError(f"'{prefix}' is not a checkpoint prefix: '{index}' does not exist")
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotACheckpointError(
            f"'{prefix}' cannot be read as a checkpoint ('{index}' is damaged?): {first_line}") from None


def checkpoint_keys(prefix, values=False):
    """Every key in the checkpoint with its shape and dtype, sorted, as a `Table`.

    With ``values=True`` a short preview of each value is added. Variant tensors (a `tf.data`
    iterator's state) cannot be read into numpy; their value cell says so instead.
    """
    reader = open_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    rows = []
    for key in sorted(shapes):
        row = [key, str(shapes[key]), dtypes[key].name]
        if values:
            row.append(_preview(reader, key, dtypes[key]))
        rows.append(row)
    columns = ["key", "shape", "dtype"] + (["value"] if values else [])
    return Table(columns, rows)


def _preview(reader, key, dtype):
    if dtype == tf.variant:
        return "(variant: not readable into numpy)"
    if key == OBJECT_GRAPH_KEY:
        return "(serialized object graph)"
    value = reader.get_tensor(key)
    if getattr(value, "ndim", 0) == 0:
        return f"{value:.4g}" if dtype.is_floating else str(value)
    flat = value.ravel()
    shown = ", ".join(f"{v:.3g}" for v in flat[:3])
    return f"[{shown}{', …' if flat.size > 3 else ''}]"


def checkpoint_files(directory):
    """The files of a checkpoint directory, grouped by prefix, with their sizes in bytes, as a `Table`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotACheckpointError(f"'{directory}' is not a directory")
    rows = []
    for file in sorted(directory.iterdir()):
        if file.name == "checkpoint":
            role = "state file (text): latest + kept checkpoints"
            prefix = "-"
        elif file.suffix == ".index":
            role = "index: key -> shape, dtype, offset"
            prefix = file.name[: -len(".index")]
        elif ".data-" in file.name:
            role = "data shard: the values"
            prefix = file.name[: file.name.index(".data-")]
        else:
            role = "not part of a TF checkpoint"
            prefix = "-"
        rows.append([prefix, file.name, f"{file.stat().st_size:,} B", role])
    if not rows:
        raise NotACheckpointError(f"'{directory}' is empty: no checkpoint has been written there")
    return Table(["prefix", "file", "size", "role"], rows)


def read_object_graph(prefix):
    """The checkpoint's object graph: the `TrackableObjectGraph` proto stored under `_CHECKPOINTABLE_OBJECT_GRAPH`."""
    reader = open_checkpoint(prefix)
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        raise NotACheckpointError(
            f"'{prefix}' has no {OBJECT_GRAPH_KEY}: it was written by the TF1 name-based Saver, "
            "so restore matches by variable name, not through an object graph")
    return trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(OBJECT_GRAPH_KEY))


def restored_completely(status, method="assert_existing_objects_matched"):
    """Whether `status.<method>()` passes: True, or False after printing why it failed.

    TensorFlow's AssertionError lists the unmatched objects in no fixed order; this prints the
    error's first sentence and the unmatched objects' names sorted. The failure has then been
    reported, so the status is marked `expect_partial()`: no repeat of it in warnings logged
    when the restored objects are garbage-collected.
    """
    if method not in ("assert_consumed", "assert_existing_objects_matched"):
        raise ValueError(f"method must be 'assert_consumed' or 'assert_existing_objects_matched', "
                         f"not {method!r}")
    try:
        getattr(status, method)()
    except AssertionError as error:
        status.expect_partial()
        message = str(error)
        print("AssertionError:", message.split(" Showing")[0].split("\n")[0])
        names = re.findall(r"path=([^,]+)|<tf\.Variable '([^']+)'", message)
        if names:
            print("unmatched:", sorted(a or b.removesuffix(":0") for a, b in names))
        return False
    return True


# The old name, for chapters not yet moved to `restored_completely` (it never raised).
assert_restored = restored_completely
