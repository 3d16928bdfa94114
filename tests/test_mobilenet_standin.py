"""Chapter 5 without the ImageNet weights: the offline stand-in runs the classify-and-export path.

The stored outputs of chapter 5 come from the real weights, and nbval compares them where Keras's
cache holds those weights. A reader with neither network nor cached weights gets the labelled
stand-in instead, whose numbers differ; this test runs the chapter's own cells in that situation:
a kernel whose KERAS_HOME holds the guide's photo and label file but no `models/`, so MobileNet's
weight download is attempted and fails (there is no network here, and it fails fast).
"""
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.imagenet import OFFLINE_NOTE

CHAPTER = Path(__file__).resolve().parent.parent / "notebooks" / "05_mobilenet.ipynb"
DATASETS = ("grace_hopper.jpg", "ImageNetLabels.txt")
# Left out: cells meant to fail, and cells whose outcome does not depend on MobileNet's weights
# (nbval runs them with the real weights): the child processes (saved_model_cli, the weightless
# conversion and the cells that use its result), the fine-tuning step through TFSMLayer, the
# `.keras` round trip, the small models and source listings of the LiteRT section, and the
# Keras 2 child process.
SLOW_OR_FAILING = ("saved_model_cli(", "convert_saved_model", "weightless", "wrapped.fit(",
                   '"mobilenet.keras"', "ExportArchive()", "class Counter", "inspect.getsource",
                   'find_spec("tf_keras")', "run_with_legacy_keras")


def classify_and_export_cells(nb):
    """The chapter's code cells on the classify-and-export path, in order."""
    return [cell for cell in nb.cells if cell.cell_type == "code"
            and "raises-exception" not in cell.metadata.get("tags", [])
            and not any(marker in cell.source for marker in SLOW_OR_FAILING)]


def stream_text(nb):
    return "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))


@pytest.fixture
def keras_home_without_weights(tmp_path):
    """A Keras cache with the guide's photo and labels (from the tests' cache) and no weights."""
    source = Path(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))) / "datasets"
    if not all((source / name).is_file() for name in DATASETS):
        pytest.skip(f"the guide's photo and labels are not in {source}, and there is no network")
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    for name in DATASETS:
        shutil.copy(source / name, tmp_path / "keras" / "datasets" / name)
    return tmp_path / "keras"


def test_standin_runs_the_chapter_to_the_end(keras_home_without_weights, tmp_path):
    nb = nbformat.read(CHAPTER, as_version=4)
    nb.cells = classify_and_export_cells(nb)
    assert len(nb.cells) > 20, "the path lost most of its cells: check SLOW_OR_FAILING"
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "KERAS_HOME": str(keras_home_without_weights)})

    text = stream_text(nb)
    assert OFFLINE_NOTE in text and "| weights: offline stand-in" in text
    assert not (keras_home_without_weights / "models" / "mobilenet_1_0_224_tf.h5").exists()
    for line in ["same top-5: True",  # tf.saved_model.load
                 "bitwise equal to before saving: True",  # model.export
                 "TFSMLayer equal: True",
                 "run_signature equals the runner: True"]:
        assert line in text, line
    # LiteRT: the relative difference differs from the real weights' one, the verdict does not
    assert re.search(r"same top-5: True \| largest difference / largest output < \S+ \| "
                     r"within a relative 1e-05: True", text)
