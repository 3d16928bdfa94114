"""scripts/write_setup_cells.py: every chapter's setup cell in the one form, URL and extras kept."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from set_repository import set_repository  # noqa: E402
from write_setup_cells import chapter_extras, write_setup_cells  # noqa: E402
from write_setup_cells import tested_keras as keras_of  # noqa: E402


def first_code_cell(path):
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


@pytest.fixture
def book(tmp_path):
    for name in ("pyproject.toml", "_config.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    return tmp_path


def test_rewrite_keeps_url_and_extras_changes_only_the_setup_cell_and_is_idempotent(book):
    before = {p.name: p.read_text() for p in (book / "notebooks").glob("*.ipynb")}
    extras = {name: chapter_extras(first_code_cell(book / "notebooks" / name)) for name in before}
    write_setup_cells(book)
    keras, _ = keras_of(book)
    for path in (book / "notebooks").glob("*.ipynb"):
        old, new = json.loads(before[path.name]), json.loads(path.read_text())
        code = [i for i, c in enumerate(new["cells"]) if c["cell_type"] == "code"]
        assert [c for i, c in enumerate(old["cells"]) if i != code[0]] == \
               [c for i, c in enumerate(new["cells"]) if i != code[0]], path.name
        first = first_code_cell(path)
        assert chapter_extras(first) == extras[path.name], path.name
        assert re.findall(r"git\+(https://\S+?)[\"']", first) == \
               re.findall(r"git\+(https://\S+?)[\"']", "".join(old["cells"][code[0]]["source"]))
        # what tests/test_book.py checks of every setup cell still holds
        assert 'importlib.metadata.version("ckpt-vs-savedmodel-helpers")' in first
        assert "tensorflow" not in first.split("git+")[0].lower()
        assert first.endswith(f'require(keras="{keras}")  # every output on this page was made with Keras {keras}')
        call = re.search(r"^    install_tested_keras\((.*)\)  #", first, re.M).group(1)
        assert call == ", ".join(f'"{e}"' for e in extras[path.name])
    assert extras["08_export_paths.ipynb"] == ["litert", "onnx"]  # an old-form cell with extras was read
    assert write_setup_cells(book) == [] and write_setup_cells(book, check=True) == []


def test_set_repository_still_repoints_rewritten_cells(book):
    write_setup_cells(book)
    set_repository("a-teacher/ml-course", root=book)
    for path in (book / "notebooks").glob("*.ipynb"):
        assert re.findall(r"git\+(https://\S+?)[\"']", first_code_cell(path)) == ["https://github.com/a-teacher/ml-course"]
    assert write_setup_cells(book) == []  # and the rewritten URL is kept


def test_check_mode_changes_nothing_and_unknown_extras_are_refused(book):
    path = book / "notebooks" / "01_keras_weights.ipynb"
    text = path.read_text()
    write_setup_cells(book, check=True)
    assert path.read_text() == text
    if "install_tested_keras()" in text:  # the cell in the one form: extras are the call's arguments
        path.write_text(text.replace("install_tested_keras()", 'install_tested_keras(\\"gpu\\")'))
    else:  # the old form: extras in the URL
        path.write_text(text.replace("ckpt-vs-savedmodel-helpers @ git+", "ckpt-vs-savedmodel-helpers[gpu] @ git+"))
    with pytest.raises(ValueError, match=r"01_keras_weights.ipynb: extras \['gpu'\] are not in pyproject.toml"):
        write_setup_cells(book)
