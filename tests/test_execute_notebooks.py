"""scripts/execute_notebooks.py: a re-run that changes nothing keeps the stored file byte for byte,
even where a cell's output varies by design (nbval-ignore-output: timings); a re-run in which
something else changed stores that whole run, so every output on the page comes from one run."""
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from execute_notebooks import canonical, execute, sanitizers  # noqa: E402


def chapter(tmp_path, answer):
    nb = nbformat.v4.new_notebook()
    timing = nbformat.v4.new_code_cell("import time\nprint(time.perf_counter_ns())")
    timing.metadata["tags"] = ["nbval-ignore-output"]
    nb.cells = [timing, nbformat.v4.new_code_cell(f"print({answer})")]
    path = tmp_path / "chapter.ipynb"
    path.write_text(canonical(nb))
    return path


def outputs(path):
    return [cell.outputs[0]["text"] for cell in nbformat.read(path, as_version=4).cells]


def test_an_unchanged_chapter_keeps_its_file_and_a_changed_one_stores_one_whole_run(tmp_path):
    path = chapter(tmp_path, 42)
    assert execute(path, sanitizers())[1]  # first run: outputs stored
    first = path.read_bytes()
    assert execute(path, sanitizers())[1] is False  # the timing differs, nothing else does
    assert path.read_bytes() == first

    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].source = "print(43)"
    path.write_text(canonical(notebook))
    timing_before = outputs(path)[0]
    assert execute(path, sanitizers())[1]
    timing_after, answer = outputs(path)
    assert answer == "43\n" and timing_after != timing_before  # the timing of the same run


def test_remeasure_records_the_new_time_but_keeps_unchanged_outputs(tmp_path):
    path = chapter(tmp_path, 42)
    execute(path, sanitizers())
    stored = nbformat.read(path, as_version=4)
    stored.metadata["book_execution"]["seconds"] = 999.0  # as if once measured on a busy machine
    path.write_text(canonical(stored))
    before = outputs(path)
    seconds, changed = execute(path, sanitizers(), remeasure=True)
    after = nbformat.read(path, as_version=4)
    assert changed is False and outputs(path) == before  # the timing cell's old output stays too
    assert after.metadata["book_execution"]["seconds"] == round(seconds, 1) != 999.0
