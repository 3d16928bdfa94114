#!/usr/bin/env python
"""Build the student edition: the same book with every exercise solution left out, prose and code.

    .venv/bin/python scripts/build_student_edition.py [OUTPUT_DIR]    # default _build/student

It writes
- OUTPUT_DIR/notebooks/*.ipynb: the student notebooks (exercises kept; `{solution}` blocks and the
  executed solutions between `{solution-start}` and `{solution-end}` removed, outputs included);
- OUTPUT_DIR/_build/html: the student HTML book, built from those notebooks, so that each page's
  `.ipynb` download is the student notebook too, and OUTPUT_DIR/_build/html/zh_CN the same book in
  Chinese (scripts/translation.py), each page linked to the other. Its Colab buttons open the
  notebooks on the repository's `student` branch (set `--branch`): a teacher publishes the student
  notebooks there, e.g. `git switch --orphan student`, copy OUTPUT_DIR/notebooks into notebooks/,
  commit, push.
  Never push the full notebooks to that branch: they hold the solutions.
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["_config.yml", "_toc.yml", "_ext", "_static", "locales", "notebooks", "*.md"]
# A whole `{solution}` directive in MyST: backtick or colon fence, closed by the same fence.
SOLUTION_BLOCK = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution\}.*?^(?P=fence)[ \t]*$\n?", re.S | re.M)
GATE = re.compile(r"^(`{3,}|:{3,})\{solution-(start|end)\}")


def student_notebook(nb):
    """The notebook without solutions: prose solution blocks and gated (executed) solution cells."""
    cells, inside_gate = [], False
    for cell in nb.cells:
        gate = GATE.match(cell.source.lstrip()) if cell.cell_type == "markdown" else None
        if gate:
            inside_gate = gate.group(2) == "start"
            continue
        if inside_gate:
            continue
        if cell.cell_type == "markdown":
            cell.source = SOLUTION_BLOCK.sub("", cell.source).rstrip("\n")
            if not cell.source.strip():
                continue
        cells.append(cell)
    if inside_gate:
        raise ValueError("a {solution-start} has no {solution-end}")
    nb.cells = cells
    return nb


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "_build" / "student")
    parser.add_argument("--branch", default="student", help="branch the Colab buttons open (default: student)")
    args = parser.parse_args()
    output = args.output.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "book"
        source.mkdir()
        for pattern in SOURCES:
            for path in ROOT.glob(pattern):
                copy = shutil.copytree if path.is_dir() else shutil.copy2
                copy(path, source / path.name)
        (output / "notebooks").mkdir(parents=True, exist_ok=True)
        for path in sorted((source / "notebooks").glob("*.ipynb")):
            text = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
            path.write_text(text)
            (output / "notebooks" / path.name).write_text(text)
        config = yaml.safe_load((source / "_config.yml").read_text())
        config["title"] = config.get("title", "") + " (student edition)"
        config["repository"]["branch"] = args.branch
        (source / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        jupyter_book = Path(sys.executable).with_name("jupyter-book")
        result = subprocess.run([str(jupyter_book), "build", str(source), "--path-output", str(output),
                                 "-W", "-n", "--keep-going", "-q"])
        if result.returncode == 0:
            sys.path.insert(0, str(ROOT / "scripts"))
            from translation import build
            chinese = build("zh_CN", source=source, output=output / "_build" / "html" / "zh_CN",
                            work=Path(tmp) / "zh_CN", student=True)
            sys.stdout.write(chinese.stdout[-3000:])
            sys.stderr.write(chinese.stderr[-3000:])
            result = chinese
    if result.returncode == 0:
        print(f"student notebooks: {output / 'notebooks'}")
        print(f"student edition: {output / '_build' / 'html' / 'index.html'}")
        print(f"Chinese student edition: {output / '_build' / 'html' / 'zh_CN' / 'index.html'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
