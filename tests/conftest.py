"""Shared fixtures: a small training checkpoint, small SavedModels, and the built HTML book."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Chapter 2's run: 50 seeded steps, checkpoints every 10 steps; returns (manager, losses)."""
    import tensorflow as tf
    from helpers.toy import train_and_checkpoint, training_objects

    tf.keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("tf_ckpts")
    net, manager = training_objects(str(directory))
    _, losses = train_and_checkpoint(net, manager)
    return manager, losses


ROOT = Path(__file__).resolve().parent.parent


def _current_build():
    """README's build (scripts/build_book.py) when it was made from the sources as they are now."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_book import current_build
    return current_build(ROOT)


def _built_once(tmp_path_factory, name, build):
    """`build(folder)` run once for all test processes: the first one builds under a lock, the
    others wait for it and reuse the folder."""
    import fcntl
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = shared / name
        if not (folder / "done").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / "done").touch()
    return folder


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The HTML book built from the current sources, warnings as errors: the English edition, and
    the Chinese one in its zh_CN/ folder. README's build when its sources digest still matches
    (scripts/build_book.py), else built once into a folder the test processes share."""
    import subprocess
    import sys
    current = _current_build()
    if current:
        return current / "html"

    def build_both_editions(out):
        result = subprocess.run(
            [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--path-output",
             str(out), "-W", "-n", "--keep-going", "-q"], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        sys.path.insert(0, str(ROOT / "scripts"))
        from translation import build
        result = build("zh_CN", source=ROOT, output=out / "_build" / "html" / "zh_CN", work=out / "zh_CN")
        assert result.returncode == 0, "Chinese edition: " + result.stdout[-3000:] + result.stderr[-3000:]

    return _built_once(tmp_path_factory, "book", build_both_editions) / "_build" / "html"


@pytest.fixture(scope="session")
def student_edition(tmp_path_factory):
    """The student edition (scripts/build_student_edition.py): its notebooks/ and _build/html/, both
    languages. README's build when its sources digest still matches, else built once."""
    import subprocess
    import sys
    current = _current_build()
    if current:
        return current / "student"

    def build_student_edition(out):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_student_edition.py"),
                                 str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    return _built_once(tmp_path_factory, "student", build_student_edition)


@pytest.fixture(scope="session")
def small_savedmodels(tmp_path_factory):
    """A small Keras 3 model (Dense + BatchNormalization) written both ways, in version folders:
    `model.export` to exported/1 (input named 'features') and `tf.saved_model.save` to saved/1."""
    import tensorflow as tf
    root = tmp_path_factory.mktemp("sm")
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2),
                                 tf.keras.layers.BatchNormalization()])
    model.export(str(root / "exported" / "1"), verbose=False,
                 input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
    tf.saved_model.save(model, str(root / "saved" / "1"))
    return root, model
