"""helpers.savedmodel and helpers.disk: signature summaries, directory trees, and clear errors."""
import subprocess
import sys

import pytest
import tensorflow as tf

from helpers import _child
from helpers.disk import directory_tree, human_size, size_on_disk
from helpers.savedmodel import (MissingSignatureError, NotASavedModelError, check_saved_model,
                                get_signature, load, saved_model_cli,
                                signature_summary)


@pytest.fixture
def artifacts(small_savedmodels):
    return small_savedmodels


def test_summary_lists_inputs_and_outputs(artifacts):
    root, _ = artifacts
    table = signature_summary(root / "exported" / "1")
    assert ("serving_default", "input", "features", "float32", "(None, 3)") in table.rows
    assert ("serving_default", "output", "output_0", "float32", "(None, 2)") in table.rows
    assert set(table.column("signature")) == {"serve", "serving_default"}


def test_summary_accepts_a_loaded_object(artifacts):
    root, _ = artifacts
    loaded = tf.saved_model.load(str(root / "saved" / "1"))
    assert signature_summary(loaded).column("name") == ["inputs", "output_0"]


def test_missing_signature_lists_the_ones_there_are(artifacts):
    root, _ = artifacts
    path = root / "saved" / "1"
    with pytest.raises(MissingSignatureError,
                       match=r"SavedModel '.*saved/1' has no signature 'predict'; it has: serving_default"):
        get_signature(load(path), "predict", path)


def test_version_parent_folder_is_explained(artifacts):
    root, _ = artifacts
    with pytest.raises(NotASavedModelError, match=r"holds version folders \['1'\].*pass '.*exported/1'"):
        check_saved_model(root / "exported")


def test_version_folders_are_ordered_as_numbers(tmp_path):
    """TF Serving serves the highest version number: 10 comes after 9, not before it."""
    for version in ("9", "10", "2"):
        (tmp_path / version).mkdir()
    with pytest.raises(NotASavedModelError,
                       match=r"holds version folders \['2', '9', '10'\].*pass '.*10'"):
        check_saved_model(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "m.keras").write_bytes(b"PK") and d / "m.keras", "is a Keras file"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "is a file, not a SavedModel"),
    (lambda d: d, "no saved_model.pb in it"),
])
def test_not_a_saved_model(tmp_path, make, message):
    with pytest.raises(NotASavedModelError, match=message):
        load(make(tmp_path))


def test_saved_model_without_variables_is_named(artifacts, tmp_path):
    import shutil
    root, _ = artifacts
    shutil.copytree(root / "exported" / "1", tmp_path / "1")
    shutil.rmtree(tmp_path / "1" / "variables")
    with pytest.raises(NotASavedModelError, match=r"1' has saved_model.pb but no '.*variables\.index'"):
        check_saved_model(tmp_path / "1")


def test_checkpoint_folder_is_named_as_such(tmp_path):
    tf.train.Checkpoint(v=tf.Variable(1.)).save(str(tmp_path / "ckpt"))
    with pytest.raises(NotASavedModelError, match="holds a training checkpoint"):
        check_saved_model(tmp_path)


def test_cli_runs_the_plain_command_and_cuts_its_output(monkeypatch, capsys):
    """What the CLI printed is given, not run (chapters 4 and 5 run it for real: exports that work,
    a tf.saved_model.save folder that fails, a missing flag): the command, the environment (nothing
    added), the ops-line filter and the cut are the helper's."""
    printed = "\n".join([f"line {i}" for i in range(8)] + ["The MetaGraph with tag set ['serve'] "
                         "contains the following ops: {'Const', 'MatMul'}"])
    calls = []

    def fake_run(args, env=None):
        calls.append((args, env))
        return subprocess.CompletedProcess(args, 0, printed, "W0000 log line on stderr")
    monkeypatch.setattr(_child, "run", fake_run)
    saved_model_cli("show", "--dir", "m/1", "--all", max_lines=5)
    assert calls == [([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                       "show", "--dir", "m/1", "--all"], None)]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["$ saved_model_cli show --dir m/1 --all", *[f"line {i}" for i in range(5)],
                     "... (output cut at max_lines=5)"]
    saved_model_cli("show", "--dir", "m/1", "--all", max_lines=10_000)
    out = capsys.readouterr().out
    assert "line 7" in out and "contains the following ops" not in out


def test_cli_prints_a_command_a_shell_runs_as_given(monkeypatch, capsys):
    """The printed line is quoted for a shell: pasted into a terminal, it passes the same arguments."""
    monkeypatch.setattr(_child, "run", lambda args, env=None: subprocess.CompletedProcess(args, 0, "", ""))
    args = ["run", "--dir", "my models/1", "--input_exprs", "x=[1.0, 2.0]"]
    saved_model_cli(*args)
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed == "$ saved_model_cli run --dir 'my models/1' --input_exprs 'x=[1.0, 2.0]'"
    shell = subprocess.run(["sh", "-c", 'printf "%s\\n" ' + printed.removeprefix("$ saved_model_cli ")],
                           capture_output=True, text=True)
    assert shell.stdout.splitlines() == args


def test_cli_failure_prints_the_exit_status_and_the_final_error(monkeypatch, capsys):
    stderr = ("W0000 log\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
              "tensorflow.python.framework.errors_impl.FailedPreconditionError: Graph execution error:\n\n"
              "Could not find variable dense/bias. This could mean more.\n")
    monkeypatch.setattr(_child, "run", lambda args, env=None: subprocess.CompletedProcess(args, 1, "", stderr))
    saved_model_cli("run", "--dir", "saved/1")
    assert capsys.readouterr().out.splitlines()[-1] == (
        "exit status 1: FailedPreconditionError: Graph execution error: Could not find variable dense/bias.")


def test_tree_shows_sizes_and_nesting(artifacts):
    root, _ = artifacts
    lines = directory_tree(root / "exported" / "1").lines()
    assert lines[0].endswith(f"({human_size(size_on_disk(root / 'exported' / '1'))})")
    assert any(line.startswith("└── variables/") for line in lines)
    assert any(line.startswith("    ├── variables.data-00000-of-00001  ") for line in lines)
    assert any(line.startswith("├── saved_model.pb  ") for line in lines)


def test_sizes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1500)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"x" * 500)
    assert size_on_disk(tmp_path) == 2000 and size_on_disk(tmp_path / "a") == 1500
    assert [human_size(n) for n in (999, 1500, 2_500_000, 7e9)] == ["999 B", "1.5 kB", "2.5 MB", "7.0 GB"]
    with pytest.raises(FileNotFoundError, match="'.*nope' does not exist"):
        size_on_disk(tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        directory_tree(tmp_path / "a")
