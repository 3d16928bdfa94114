"""Looking inside a training checkpoint: its files, its keys, its object graph, and what is damaged.

Each function wraps a public call the chapters show first (`tf.train.load_checkpoint`,
`tf.train.list_variables`, `os.listdir`). Like `tf.train.load_checkpoint`, they take a checkpoint
*prefix* such as ``tf_ckpts/ckpt-5`` (the name `manager.save()` returns) or a directory, read as its
latest checkpoint; anything else raises `NotACheckpointError` naming the path and what is wrong,
including damaged files (a truncated data shard, which TensorFlow reports without a file name; an
altered one, whose checksum error does name it; an unreadable `checkpoint` state file, which
TensorFlow reports only in a logged warning).
Chapter 10 adds the helpers for runs that were killed: `interrupted_saves`,
`remove_interrupted_saves` and `restore_newest_loadable`.
"""
import os
import re
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.checkpoint.checkpoint_management import CheckpointState

from .table import Table

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class NotACheckpointError(ValueError):
    """The path given is not a readable TensorFlow checkpoint prefix."""


def open_checkpoint(prefix):
    """`tf.train.load_checkpoint(prefix)` after checking every file, or a `NotACheckpointError` naming the damaged one.

    `load_checkpoint` reads only the `.index`; this also reads every value the way `restore` does
    (`RestoreV2`, which checks lengths and checksums), so a truncated or altered data shard is
    reported here, with its file name, instead of at restore time.
    """
    prefix = os.fspath(prefix)
    path = Path(prefix)
    if path.is_dir():  # as tf.train.load_checkpoint does: the directory's latest checkpoint
        latest = latest_checkpoint(prefix)
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
        shards = _data_shards(prefix)
        if shards:
            raise NotACheckpointError(
                f"'{prefix}' has data ('{shards[0]}') but no index: '{index}' does not exist "
                "(deleted, or the save was killed before it finished)")
        raise NotACheckpointError(f"'{prefix}' is not a checkpoint prefix: '{index}' does not exist")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as exc:
        raise NotACheckpointError(
            f"'{prefix}' cannot be read as a checkpoint ('{index}' is damaged?): {_first_line(exc)}") from None
    _read_every_value(prefix, reader)
    return reader


def _first_line(exc):
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _data_shards(prefix):
    folder, name = os.path.split(prefix)
    folder = folder or "."
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(os.path.dirname(prefix), f) for f in os.listdir(folder)
                  if f.startswith(name + ".data-"))


def _read_every_value(prefix, reader):
    """Every value read with `RestoreV2`, as a restore reads it: short or altered shards fail here."""
    dtypes = reader.get_variable_to_dtype_map()
    names = sorted(dtypes)
    shards = _data_shards(prefix)
    try:
        tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                             dtypes=[dtypes[n] for n in names])
    except Exception as exc:  # IndexError for a short file, DataLossError, NotFoundError...
        message = _first_line(exc)
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
        message = re.sub(r"\s*\[Op:RestoreV2\]$", "", message)
        where = ", ".join(f"'{s}'" for s in shards) or f"'{prefix}.data-*' (missing)"
        raise NotACheckpointError(
            f"'{prefix}' is damaged: its index lists values that its data shard {where} does "
            f"not hold intact (truncated or overwritten): {message}") from None


def read_state_file(directory):
    """The `checkpoint` state file of `directory` as a `CheckpointState`, or None if there is none.

    `tf.train.latest_checkpoint` and `CheckpointManager` treat an unreadable state file as absent
    (a logged warning, then training starts from scratch); this raises `NotACheckpointError`.
    """
    state_path = Path(directory) / "checkpoint"
    if not state_path.exists():
        return None
    state = CheckpointState()
    try:
        text_format.Merge(state_path.read_text(errors="replace"), state)
    except text_format.ParseError as exc:
        raise NotACheckpointError(
            f"'{state_path}' is not a checkpoint state file (ParseError: {exc}); TensorFlow "
            "ignores it and would start from scratch") from None
    if not state.model_checkpoint_path:
        raise NotACheckpointError(
            f"'{state_path}' names no model_checkpoint_path; TensorFlow ignores it and would "
            "start from scratch")
    return state


def latest_checkpoint(directory):
    """`tf.train.latest_checkpoint(directory)`, but a damaged state file or a missing latest
    checkpoint raises `NotACheckpointError` instead of returning None."""
    state = read_state_file(directory)
    if state is None:
        return None
    latest = state.model_checkpoint_path
    if not os.path.isabs(latest):
        latest = os.path.join(os.fspath(directory), latest)
    if not Path(latest + ".index").is_file():
        raise NotACheckpointError(
            f"'{Path(directory) / 'checkpoint'}' names '{latest}' as the latest checkpoint, "
            f"but '{latest}.index' does not exist")
    return latest


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
        elif file.is_dir() and file.name.endswith("_temp"):
            role = "interrupted save: a killed save's shards (remove_interrupted_saves)"
            prefix = "-"
        else:
            role = "not part of a TF checkpoint"
            prefix = "-"
        size = _size(file)
        rows.append([prefix, file.name + ("/" if file.is_dir() else ""), f"{size:,} B", role])
    if not rows:
        raise NotACheckpointError(f"'{directory}' is empty: no checkpoint has been written there")
    return Table(["prefix", "file", "size", "role"], rows)


def _size(path):
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def interrupted_saves(directory):
    """The `<prefix>_temp` folders in `directory`: shards of saves killed before they were merged.

    A save writes its shards to `<prefix>_temp/` and merges them into `<prefix>.index`/`.data-*`
    at the end; a killed save leaves the folder behind. Nothing reads it, and TF removes it only
    when a later save of the same prefix merges (the merge deletes its `_temp` folder).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotACheckpointError(f"'{directory}' is not a directory")
    return [os.path.join(os.fspath(directory), p.name) for p in sorted(directory.iterdir())
            if p.is_dir() and p.name.endswith("_temp")]


def remove_interrupted_saves(directory):
    """Deletes the folders `interrupted_saves(directory)` lists and returns them.

    Only while no program is saving into `directory`: a running save's folder looks the same.
    """
    removed = interrupted_saves(directory)
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def _checkpoint_number(prefix):
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def restore_newest_loadable(checkpoint, directory):
    """Restores `checkpoint` from the newest checkpoint in `directory` that loads completely.

    Candidates are every prefix with files in `directory` (not only those the state file lists),
    newest (highest number) first. Each is checked with `open_checkpoint` (every value read) and
    restored with `assert_existing_objects_matched()`. A restore assigns values before that check
    can fail, so the objects' state is first written to a temporary checkpoint and read back after
    a candidate that fails. Returns `(prefix, skipped)`: the prefix used (None if none loads: the
    objects that existed hold their values from before the call) and a list of `(name, reason)`
    for every checkpoint passed over, and for an unreadable state file, newest first.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotACheckpointError(f"'{directory}' is not a directory")
    skipped = []
    try:
        read_state_file(directory)
    except NotACheckpointError as error:
        skipped.append(("checkpoint", str(error)))
    names = set()
    for file in directory.iterdir():
        if file.is_file() and file.suffix == ".index":
            names.add(file.name[: -len(".index")])
        elif file.is_file() and ".data-" in file.name:
            names.add(file.name[: file.name.index(".data-")])
    checkpoint.save_counter  # noqa: B018 (a restore creates it; create it before the snapshot)
    with tempfile.TemporaryDirectory() as snapshot_directory:
        snapshot = checkpoint.write(os.path.join(snapshot_directory, "before"))
        for name in sorted(names, key=lambda n: (_checkpoint_number(n), n), reverse=True):
            prefix = os.path.join(os.fspath(directory), name)
            try:
                open_checkpoint(prefix)
            except NotACheckpointError as error:
                skipped.append((name, str(error)))
                continue
            try:
                status = checkpoint.restore(prefix)
                status.assert_existing_objects_matched()
            except (ValueError, tf.errors.OpError) as error:
                reason = "restore failed: " + _first_line(error)
            except AssertionError as error:
                status.expect_partial()
                reason = "does not match the objects: " + _first_line(error)
            else:
                return prefix, skipped
            skipped.append((name, reason))
            checkpoint.read(snapshot).assert_existing_objects_matched()  # undo what it assigned
    return None, skipped


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
    error's first sentence (without the protobuf that some messages embed) and the unmatched
    objects' names sorted (their checkpoint keys' paths, for a variable that got no value);
    `assert_consumed` reports only the first checkpoint value left unused, which the sentence
    names. The failure has then been reported, so the status is marked `expect_partial()`: no
    repeat of it in warnings logged when the restored objects are garbage-collected.
    """
    if method not in ("assert_consumed", "assert_existing_objects_matched"):
        raise ValueError(f"method must be 'assert_consumed' or 'assert_existing_objects_matched', "
                         f"not {method!r}")
    try:
        getattr(status, method)()
    except AssertionError as error:
        status.expect_partial()
        message = str(error)
        # "Object attributes {<a protobuf>} not assigned a value from checkpoint." (a variable that
        # was created but got no value, as in chapter 3's trap): the sentence without the protobuf.
        first = re.sub(r"(:\s*attributes)?\s*\{.*\}\s*", " ", message.split(" Showing")[0], flags=re.S)
        print("AssertionError:", first.split("\n")[0].strip())
        if message.startswith("Unresolved object"):  # assert_consumed stops at the first one: named above
            return False
        names = re.findall(r"path=([^,]+)|<tf\.Variable '([^']+)'|checkpoint_key: \"([^\"]+?)/\.ATTRIBUTES/",
                           message)
        if names:
            print("unmatched:", sorted(a or c or b.removesuffix(":0") for a, b, c in names))
        return False
    return True
