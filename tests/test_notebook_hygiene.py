"""What readers see in the stored notebooks: one clean in-order run, no machine paths, errors tagged.

nbval checks that stored outputs match a fresh run; these checks cover what nbval does not
compare (tracebacks, execution counts) and the ANSI-coloured text in tracebacks.
"""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted(Path(__file__).parent.parent.joinpath("notebooks").glob("*.ipynb"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MACHINE_PATH = re.compile(r"/(root|home|tmp|work|var/folders|usr/lib|opt)/|site-packages")


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def output_texts(cell):
    for out in cell.get("outputs", []):
        yield ANSI.sub("", "".join(out.get("text", "")) + "\n".join(out.get("traceback", []))
                       + "".join(out.get("data", {}).get("text/plain", ""))
                       + "".join(out.get("data", {}).get("text/html", "")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_run_is_fresh_and_in_order(path):
    counts = [c["execution_count"] for c in code_cells(path) if "".join(c["source"]).strip()]
    assert counts == list(range(1, len(counts) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_machine_paths_even_in_tracebacks(path):
    for index, cell in enumerate(code_cells(path)):
        for text in output_texts(cell):
            assert not MACHINE_PATH.search(text), f"code cell {index}: {text[:300]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_errors_only_where_tagged(path):
    for index, cell in enumerate(code_cells(path)):
        tagged = "raises-exception" in cell["metadata"].get("tags", [])
        has_error = any(o["output_type"] == "error" for o in cell.get("outputs", []))
        assert tagged == has_error, f"code cell {index}: tagged={tagged}, stored error={has_error}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_opens_with_goals_and_ends_with_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"])
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert first.startswith("# ") and "What you will learn" in first
    assert "## Summary" in text and text.count("{exercise}") >= 2
    # every exercise has a solution: prose ({solution}) or executed cells ({solution-start} ... {solution-end})
    assert text.count("{exercise}") == text.count("{solution}") + text.count("{solution-start}")
    assert text.count("{solution-start}") == text.count("{solution-end}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_in_canonical_form(path):
    """No execution timestamps, sorted keys: re-running an unchanged chapter changes no line."""
    sys.path.insert(0, str(path.parent.parent / "scripts"))
    from execute_notebooks import canonical
    text = path.read_text()
    assert text == canonical(nbformat.reads(text, as_version=4)), \
        f"{path.name}: run scripts/execute_notebooks.py --format-only {path.relative_to(path.parent.parent)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reader_cells_carry_no_test_machinery(path):
    """The kernel start-up (scripts/kernel_startup.py) sets up warnings, %xmode and the working
    folder; test markers are cell tags, not comments readers have to read past."""
    cells = code_cells(path)
    first = "".join(cells[0]["source"])
    assert [line for line in first.splitlines() if line.startswith(("import ", "from "))] == [
        "import importlib.metadata", "import sys", "from helpers.environment import require"], first
    assert "%pip" not in first, "the %pip magic prints a needless 'you may need to restart the kernel'"
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        for marker in ("formatwarning", "NBVAL_", "%xmode", "os.chdir(tempfile"):
            assert marker not in source, f"code cell {index} carries {marker!r}"
        if "nbval-ignore-output" in cell["metadata"].get("tags", []):
            assert cell["metadata"].get("nbval-ignore-output-reason"), f"code cell {index}: no reason given"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_the_book_toolchain(path):
    """Colab has no myst-nb: chapters glue through helpers.glue, which works with or without it."""
    for index, cell in enumerate(code_cells(path)):
        assert "myst_nb" not in "".join(cell["source"]), f"code cell {index} imports myst_nb"
