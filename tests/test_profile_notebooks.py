"""scripts/profile_notebooks.py attributes a cell's time to the right place: its own CPU, its
children's CPU, or waiting; and names the child processes a cell started."""
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import profile_notebooks  # noqa: E402


def test_each_cell_is_charged_with_its_own_waiting_children_and_computing(tmp_path):
    path = tmp_path / "tiny.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(0.6)"),
                nbformat.v4.new_code_cell("import subprocess, sys\n"
                                          "subprocess.run([sys.executable, '-c', 'sum(range(2 * 10**7))'])"),
                nbformat.v4.new_code_cell("sum(range(4 * 10**7))")]
    nbformat.write(nb, path)
    seconds, rows = profile_notebooks.profile(path)
    sleep, child, compute = rows
    assert [r["cell"] for r in rows] == [1, 2, 3]
    assert sleep["wall"] >= 0.6 and sleep["cpu"] < 0.3 and not sleep["starts"]
    assert child["starts"] == ["python -c sum(range(2 * 10**7))"]
    assert child["child_cpu"] > 0.1 and child["cpu"] < child["child_cpu"]
    assert compute["cpu"] > 0.3 and compute["child_cpu"] == 0 and not compute["starts"]
    text = profile_notebooks.report("tiny", seconds, rows, top=3)
    assert "1 child processes" in text and "-> python -c sum(range(2" in text
    shown = [line.split()[0] for line in text.splitlines()[2:] if not line.strip().startswith("->")]
    assert shown == [str(r["cell"]) for r in sorted(rows, key=lambda r: r["wall"], reverse=True)]
    assert len(profile_notebooks.report("tiny", seconds, rows, top=1).splitlines()) == 3  # the slowest only
