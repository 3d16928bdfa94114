"""helpers.toy: the chapters' training run is deterministic and restores completely."""
import ast
import inspect
from pathlib import Path

import nbformat
import numpy as np
import pytest
import tensorflow as tf

from helpers.toy import Net, toy_dataset, train_and_checkpoint, train_step, training_objects


def test_seeded_losses_go_down(trained):
    _, losses = trained
    assert len(losses) == 50
    # The loss depends on the batch (x = 0..9 in batches of 2), so compare the same batch, [8, 9].
    assert losses[49] < losses[4] / 4


def test_fresh_objects_restore_everything(trained):
    manager, _ = trained
    net, new_manager = training_objects(manager.directory)
    status = new_manager.checkpoint.restore(manager.latest_checkpoint)
    status.assert_consumed()
    reader = tf.train.load_checkpoint(manager.latest_checkpoint)
    np.testing.assert_array_equal(
        net.l1.kernel.numpy(), reader.get_tensor("net/l1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    assert int(new_manager.checkpoint.step) == 50
    assert len(net.trainable_variables) == 2


def test_net_with_build_restores_its_kernel_even_unbuilt(trained):
    """The Keras 3 fix: deferred restoration lands in a Net that has its own build()."""
    manager, _ = trained
    net = Net()
    tf.train.Checkpoint(net=net).restore(manager.latest_checkpoint).expect_partial()
    net(tf.zeros([1, 1]))
    reader = tf.train.load_checkpoint(manager.latest_checkpoint)
    np.testing.assert_array_equal(
        net.l1.kernel.numpy(), reader.get_tensor("net/l1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"))


def test_resumed_training_continues(trained, tmp_path, capsys):
    manager, losses = trained
    net, new_manager = training_objects(manager.directory, max_to_keep=None)
    new_manager = tf.train.CheckpointManager(new_manager.checkpoint, str(tmp_path), max_to_keep=1)
    new_manager.checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    _, more = train_and_checkpoint(net, new_manager, steps=10)
    assert "Initializing from scratch." in capsys.readouterr().out  # tmp_path had no checkpoint yet
    # ckpt-5 was saved before the 50th step: resuming replays that step exactly (same batch, same
    # weights, same Adam moments). The Keras 3 trap starts at 41.27 instead (chapter 3).
    assert more[0] == pytest.approx(losses[49], rel=1e-5)


# One source of truth for the code the chapters type and the helpers hold: the chapter cell is what
# the reader runs, the helper is what later chapters and these tests import; they must be equal.
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def code_cells(notebook):
    return [cell.source.strip() for cell in nbformat.read(NOTEBOOKS / notebook, as_version=4).cells
            if cell.cell_type == "code"]


def class_named(source, name):
    """The `ast` dump of class `name` in `source`, with the class name itself normalised."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # the setup cell's `%pip`
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ast.dump(ast.parse(ast.unparse(node).replace(name, "Net")))
    return None


@pytest.mark.parametrize("notebook, helper", [
    ("01_keras_weights.ipynb", Net),
    ("02_writing_checkpoints.ipynb", toy_dataset),
    ("02_writing_checkpoints.ipynb", train_step),
    ("02_writing_checkpoints.ipynb", train_and_checkpoint),
])
def test_chapter_cell_is_the_helper(notebook, helper):
    assert inspect.getsource(helper).strip() in code_cells(notebook), (
        f"{notebook} has no code cell equal to the source of helpers.toy.{helper.__name__}; "
        "change both together")


def test_study_note_net_is_the_book_net_without_build():
    """Chapter 1 and chapter 3 type the study note's Net: helpers.toy.Net minus its build()."""
    tree = ast.parse(inspect.getsource(Net))
    tree.body[0].body = [n for n in tree.body[0].body
                         if not (isinstance(n, ast.FunctionDef) and n.name == "build")]
    expected = ast.dump(ast.parse(ast.unparse(tree)))
    found = {name: [class_named(cell, name) for cell in code_cells(notebook)
                    if class_named(cell, name)]
             for notebook, name in [("01_keras_weights.ipynb", "Net"),
                                    ("03_dependency_graph.ipynb", "StudyNoteNet")]}
    assert expected in found["Net"], "chapter 1's study-note Net differs from helpers.toy.Net"
    assert found["StudyNoteNet"] == [expected], "chapter 3's StudyNoteNet differs from helpers.toy.Net"
