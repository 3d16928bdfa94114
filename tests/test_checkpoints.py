"""helpers.checkpoints: keys, files and the errors a reader gets for a wrong path."""
import os
import re
import shutil

import pytest
import tensorflow as tf

from helpers.checkpoints import (NotACheckpointError, checkpoint_files, checkpoint_keys,
                                 open_checkpoint, read_object_graph)


def test_keys_list_shapes_and_dtypes(trained):
    manager, _ = trained
    table = checkpoint_keys(manager.latest_checkpoint)
    rows = {key: (shape, dtype) for key, shape, dtype in table}
    assert rows["net/l1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"] == ("[1, 5]", "float32")
    assert rows["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == ("[]", "int64")
    assert rows["iterator/.ATTRIBUTES/ITERATOR_STATE"][1] == "variant"
    assert table.column("key") == sorted(rows)
    assert "net/l1/kernel/.ATTRIBUTES/VARIABLE_VALUE" not in rows  # Keras 3 stores `_kernel`


def test_values_preview_skips_variant_tensors(trained):
    manager, _ = trained
    values = dict(zip(*[checkpoint_keys(manager.latest_checkpoint, values=True).column(c)
                        for c in ("key", "value")]))
    assert values["iterator/.ATTRIBUTES/ITERATOR_STATE"].startswith("(variant")
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == "50"
    assert values["optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"] == "0.1"
    assert values["net/l1/bias/.ATTRIBUTES/VARIABLE_VALUE"].startswith("[")


def test_table_prints_aligned_text_and_html(trained):
    manager, _ = trained
    table = checkpoint_keys(manager.latest_checkpoint)
    lines = repr(table).splitlines()
    assert lines[0].split() == ["key", "shape", "dtype"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(table)
    assert table._repr_html_().count("<tr>") == 1 + len(table)


def test_files_show_retention_and_roles(trained):
    manager, _ = trained
    table = checkpoint_files(os.path.dirname(manager.latest_checkpoint))
    files = table.column("file")
    assert "checkpoint" in files
    assert sorted({p for p in table.column("prefix") if p != "-"}) == ["ckpt-3", "ckpt-4", "ckpt-5"]
    roles = dict(zip(files, table.column("role")))
    assert roles["ckpt-5.index"].startswith("index")
    assert roles["ckpt-5.data-00000-of-00001"].startswith("data")
    assert all(size.endswith(" B") for size in table.column("size"))


def test_missing_prefix_names_the_index_file(tmp_path):
    with pytest.raises(NotACheckpointError, match=r"nope'.*nope\.index' does not exist"):
        open_checkpoint(tmp_path / "nope")


def test_directory_reads_as_its_latest_checkpoint_like_tf(trained):
    manager, _ = trained
    directory = os.path.dirname(manager.latest_checkpoint)
    assert checkpoint_keys(directory).rows == checkpoint_keys(manager.latest_checkpoint).rows
    # the same rule as the public API it wraps
    assert [key for key, _ in tf.train.list_variables(directory)] == checkpoint_keys(directory).column("key")


def test_directory_without_state_file(tmp_path):
    with pytest.raises(NotACheckpointError, match="is a directory with no 'checkpoint' state file"):
        read_object_graph(tmp_path)


def test_one_file_of_a_checkpoint_suggests_the_prefix(trained):
    manager, _ = trained
    with pytest.raises(NotACheckpointError, match=r"pass its prefix '.*ckpt-5'"):
        open_checkpoint(manager.latest_checkpoint + ".index")
    with pytest.raises(NotACheckpointError, match=r"pass its prefix '.*ckpt-5'"):
        open_checkpoint(manager.latest_checkpoint + ".data-00000-of-00001")


def test_keras_file_is_named(tmp_path):
    (tmp_path / "w.weights.h5").write_bytes(b"")
    with pytest.raises(NotACheckpointError, match="w.weights.h5' is a Keras file"):
        open_checkpoint(tmp_path / "w.weights.h5")


def test_corrupt_index_is_reported_with_its_path(trained, tmp_path):
    manager, _ = trained
    prefix = str(tmp_path / "broken")
    shutil.copy(manager.latest_checkpoint + ".data-00000-of-00001", prefix + ".data-00000-of-00001")
    with open(prefix + ".index", "wb") as f:
        f.write(b"this is not a checkpoint index" * 10)
    with pytest.raises(NotACheckpointError, match=r"broken' cannot be read.*broken\.index"):
        checkpoint_keys(prefix)


def test_empty_or_missing_directory(tmp_path):
    with pytest.raises(NotACheckpointError, match="is empty"):
        checkpoint_files(tmp_path)
    with pytest.raises(NotACheckpointError, match="is not a directory"):
        checkpoint_files(tmp_path / "missing")


def test_object_graph_root_edges(trained):
    manager, _ = trained
    graph = read_object_graph(manager.latest_checkpoint)
    assert {c.local_name for c in graph.nodes[0].children} == {
        "step", "optimizer", "net", "iterator", "save_counter"}


def test_write_without_save_counter_is_readable(tmp_path):
    v = tf.Variable([1.0, 2.0])
    prefix = tf.train.Checkpoint(v=v).write(str(tmp_path / "plain"))
    assert checkpoint_keys(prefix).column("key") == [
        "_CHECKPOINTABLE_OBJECT_GRAPH", "v/.ATTRIBUTES/VARIABLE_VALUE"]


def test_restored_completely_reports_sorted_unmatched_objects(trained, capsys):
    from helpers.checkpoints import restored_completely
    manager, _ = trained

    class Renamed(tf.Module):
        def __init__(self):
            super().__init__()
            self.z_kernel = tf.Variable(tf.zeros([1, 5]), name="z_kernel")
            self.a_bias = tf.Variable(tf.zeros([5]), name="a_bias")

    status = tf.train.Checkpoint(net=Renamed()).restore(manager.latest_checkpoint)
    assert restored_completely(status) is False
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("AssertionError: Found 2 Python objects that were not bound")
    assert out[1] == "unmatched: ['a_bias', 'z_kernel']"  # sorted, whatever order TF listed


def test_restored_completely_passes_a_full_restore(trained, capsys):
    from helpers.checkpoints import restored_completely
    from helpers.toy import training_objects
    manager, _ = trained
    _, fresh = training_objects(manager.directory)
    assert restored_completely(fresh.checkpoint.restore(manager.latest_checkpoint), "assert_consumed") is True
    assert capsys.readouterr().out == ""


def test_restored_completely_names_a_wrong_method(trained):
    from helpers.checkpoints import restored_completely
    manager, _ = trained
    status = tf.train.Checkpoint().restore(manager.latest_checkpoint)
    status.expect_partial()
    with pytest.raises(ValueError, match="'expect_partial'"):
        restored_completely(status, "expect_partial")


# Damaged checkpoints: every one named in a NotACheckpointError, and restore_newest_loadable
# falls back past it to the newest checkpoint that loads (chapter 10's corruption table).

def _copy_of_run(trained, tmp_path):
    manager, _ = trained
    directory = tmp_path / "run"
    shutil.copytree(manager.directory, directory)
    return directory


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 20, len(data) - 16):  # inside the last value, not its framing
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated .data": (lambda d: _truncate(d / "ckpt-5.data-00000-of-00001"),
                        r"ckpt-5' is damaged.*ckpt-5\.data-00000-of-00001'.*Read less bytes than requested"),
    "flipped bytes": (lambda d: _flip_bytes(d / "ckpt-5.data-00000-of-00001"),
                      r"ckpt-5' is damaged.*Checksum does not match"),
    "missing .index": (lambda d: (d / "ckpt-5.index").unlink(),
                       r"ckpt-5' has data .* but no index: '.*ckpt-5\.index' does not exist"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_named(trained, tmp_path, damage):
    directory = _copy_of_run(trained, tmp_path)
    harm, message = DAMAGE[damage]
    harm(directory)
    with pytest.raises(NotACheckpointError, match=message):
        open_checkpoint(str(directory / "ckpt-5"))
    if damage != "missing .index":  # listing keys reads the values too
        with pytest.raises(NotACheckpointError, match=message):
            checkpoint_keys(str(directory / "ckpt-5"))


def test_truncated_data_passes_tf_load_checkpoint(trained, tmp_path):
    """Why open_checkpoint reads the values: TF's reader opens only the index."""
    directory = _copy_of_run(trained, tmp_path)
    _truncate(directory / "ckpt-5.data-00000-of-00001")
    reader = tf.train.load_checkpoint(str(directory / "ckpt-5"))
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in reader.get_variable_to_shape_map()


def test_garbage_state_file_is_an_error_not_a_fresh_start(trained, tmp_path):
    from helpers.checkpoints import latest_checkpoint
    directory = _copy_of_run(trained, tmp_path)
    (directory / "checkpoint").write_text("}{ not a state file")
    assert tf.train.latest_checkpoint(str(directory)) is None  # TF: a warning, then "no checkpoint"
    with pytest.raises(NotACheckpointError, match=r"checkpoint' is not a checkpoint state file \(ParseError"):
        latest_checkpoint(directory)
    with pytest.raises(NotACheckpointError, match="is not a checkpoint state file"):
        checkpoint_keys(directory)


def test_state_file_naming_a_missing_checkpoint(trained, tmp_path):
    from helpers.checkpoints import latest_checkpoint
    directory = _copy_of_run(trained, tmp_path)
    for file in directory.glob("ckpt-5.*"):
        file.unlink()
    with pytest.raises(NotACheckpointError, match=r"names '.*ckpt-5' as the latest.*ckpt-5\.index' does not exist"):
        latest_checkpoint(directory)


def test_interrupted_saves_are_listed_shown_and_removed(trained, tmp_path):
    from helpers.checkpoints import interrupted_saves, remove_interrupted_saves
    directory = _copy_of_run(trained, tmp_path)
    temp = directory / "ckpt-6_temp"
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 10)
    assert interrupted_saves(directory) == [str(temp)]
    roles = dict(zip(checkpoint_files(directory).column("file"), checkpoint_files(directory).column("role")))
    assert roles["ckpt-6_temp/"].startswith("interrupted save")
    assert remove_interrupted_saves(directory) == [str(temp)]
    assert not temp.exists() and interrupted_saves(directory) == []
    assert (directory / "ckpt-5.index").exists()


def _fresh_checkpoint(directory):
    from helpers.toy import training_objects
    _, manager = training_objects(str(directory))
    return manager.checkpoint


@pytest.mark.parametrize("damage", [*DAMAGE, "garbage state file"])
def test_restore_newest_loadable_skips_the_damaged_one(trained, tmp_path, damage):
    from helpers.checkpoints import restore_newest_loadable
    directory = _copy_of_run(trained, tmp_path)
    if damage == "garbage state file":
        (directory / "checkpoint").write_text("}{ not a state file")
    else:
        DAMAGE[damage][0](directory)
    checkpoint = _fresh_checkpoint(tmp_path / "unused")
    prefix, skipped = restore_newest_loadable(checkpoint, directory)
    if damage == "garbage state file":  # reported, and the newest checkpoint still found
        assert prefix == str(directory / "ckpt-5") and int(checkpoint.step) == 50
        assert [name for name, _ in skipped] == ["checkpoint"]
    else:
        assert prefix == str(directory / "ckpt-4") and int(checkpoint.step) == 40
        assert [name for name, _ in skipped] == ["ckpt-5"]
        assert re.search(DAMAGE[damage][1], skipped[0][1])


def test_restore_newest_loadable_with_nothing_loadable(tmp_path):
    from helpers.checkpoints import restore_newest_loadable
    (tmp_path / "ckpt-1.index").write_bytes(b"not an index")
    prefix, skipped = restore_newest_loadable(tf.train.Checkpoint(v=tf.Variable(1.0)), tmp_path)
    assert prefix is None and skipped[0][0] == "ckpt-1" and "cannot be read" in skipped[0][1]
    with pytest.raises(NotACheckpointError, match="is not a directory"):
        restore_newest_loadable(tf.train.Checkpoint(), tmp_path / "missing")


def test_restore_newest_loadable_undoes_a_candidate_that_does_not_match(tmp_path):
    from helpers.checkpoints import restore_newest_loadable
    written = iter(tf.data.Dataset.range(10))
    next(written), next(written)
    tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]), data=written).write(str(tmp_path / "ckpt-1"))
    data = iter(tf.data.Dataset.range(10))
    mine = tf.train.Checkpoint(v=tf.Variable([0.0, 0.0]), data=data, extra=tf.Variable(5.0))
    prefix, skipped = restore_newest_loadable(mine, tmp_path)
    assert prefix is None and skipped[0][0] == "ckpt-1" and "does not match" in skipped[0][1]
    # the skipped candidate's values were put back: variables and the iterator's position
    assert mine.v.numpy().tolist() == [0.0, 0.0] and float(mine.extra) == 5.0 and int(next(data)) == 0

def test_restored_completely_names_a_variable_that_got_no_value(tmp_path, capsys):
    """Chapter 3's trap: the restored model's kernel was created but never assigned. TensorFlow's
    message embeds a protobuf; the helper prints its sentence and the key's path."""
    from helpers.checkpoints import restored_completely
    from helpers.toy import Net

    class StudyNoteNet(tf.keras.Model):  # no build(): the kernel is created inside a failing trace
        def __init__(self):
            super().__init__()
            self.l1 = tf.keras.layers.Dense(5)

        def call(self, x):
            return self.l1(x)

    saved = Net()
    saved.build((None, 1))
    prefix = tf.train.Checkpoint(net=saved).write(str(tmp_path / "net"))
    fresh = StudyNoteNet()
    status = tf.train.Checkpoint(net=fresh).restore(prefix)
    fresh(tf.zeros([1, 1]))
    assert restored_completely(status) is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["AssertionError: Object attributes not assigned a value from checkpoint.",
                   "unmatched: ['net/l1/_kernel']"]


def test_restored_completely_with_assert_consumed_names_the_first_unused_value(trained, capsys):
    """assert_consumed stops at the first value with nowhere to go: one line, no partial list."""
    from helpers.checkpoints import restored_completely
    from helpers.toy import Net
    manager, _ = trained
    net = Net()
    net.build((None, 1))
    status = tf.train.Checkpoint(net=net).restore(manager.latest_checkpoint)
    assert restored_completely(status, "assert_consumed") is False
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("AssertionError: Unresolved object in checkpoint (root)."), out
    assert not out[0].endswith("attributes"), out
