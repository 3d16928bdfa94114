#!/usr/bin/env python
"""Re-run notebooks top to bottom in fresh kernels, store their outputs, and refresh status.md.

    .venv/bin/python scripts/execute_notebooks.py                      # every chapter
    .venv/bin/python scripts/execute_notebooks.py notebooks/02_*.ipynb  # some
    .venv/bin/python scripts/execute_notebooks.py --format-only         # canonical form, no run
    .venv/bin/python scripts/execute_notebooks.py --status-only         # just rewrite status.md
    .venv/bin/python scripts/execute_notebooks.py --remeasure           # record this run's times too

Kernels run exactly as under pytest (scripts/notebook_kernel.py: the start-up file, a scratch
folder, the offline Keras cache), with `capture_fd_output=False` so TensorFlow's C++ start-up lines
go to this terminal instead of into the stored outputs.

A re-run only changes what changed: a cell whose new outputs equal the stored ones once the
differences that tests/sanitize.cfg allows are removed keeps its stored outputs, and a notebook with
no changed cell keeps its file (and its recorded run time) byte for byte; with `--remeasure` it keeps
its outputs but records this run's time and versions (status.md's times come from a quiet run). Cells tagged
`nbval-ignore-output` (timings) do not count as changed; when another cell did change, the whole
new run is stored, so every output on a page comes from one run. Notebooks are written in
one canonical form (no execution timestamps, sorted keys), which tests/test_notebook_hygiene.py checks.
"""
import argparse
import copy
import datetime
import importlib.metadata
import json
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbval.plugin import get_sanitize_patterns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_kernel import ROOT, prepare_environment  # noqa: E402

STATUS = ROOT / "status.md"
SANITIZE = ROOT / "tests" / "sanitize.cfg"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
CELL_METADATA_NOISE = ("execution", "lines_to_next_cell", "collapsed", "scrolled")


def merged_streams(outputs):
    """Consecutive stdout (or stderr) chunks as one output: how they are split depends on timing."""
    merged = []
    for out in copy.deepcopy(outputs):
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            merged[-1]["text"] = merged[-1]["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def canonical(nb):
    """The notebook in the book's canonical form: no per-run or editor-only metadata, streams merged."""
    for cell in nb.cells:
        for key in CELL_METADATA_NOISE:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = merged_streams(cell.outputs)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", KERNELSPEC)  # Jupyter and Colab then need not ask
    return nbformat.writes(nb) + "\n"


def sanitizers():
    """tests/sanitize.cfg's (regex, replacement) pairs, read the way nbval reads them."""
    return [(re.compile(regex), replace) for regex, replace in get_sanitize_patterns(SANITIZE.read_text())]


def same_outputs(old, new, rules):
    """Whether two cells' outputs agree once the allowed run-to-run differences are removed."""
    def text(outputs):
        dumped = json.dumps(outputs, sort_keys=True)
        for regex, replace in rules:
            dumped = regex.sub(replace, dumped)
        return dumped
    return text(old) == text(new)


def package_version(*names):
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def execute(path, rules, remeasure=False):
    """Run one notebook; return (seconds, whether its stored file changed).

    remeasure: record this run's time and versions even when no output changed."""
    stored = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}},
                            extra_arguments=["--IPKernelApp.capture_fd_output=False"])
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    ignored = []  # (stored cell, new cell) of cells whose output nbval does not compare
    for old, new in zip(stored.cells, nb.cells):
        if new.cell_type != "code":
            continue
        new.outputs = merged_streams(new.outputs)
        if same_outputs(merged_streams(old.get("outputs", [])), new.outputs, rules):
            new.outputs = merged_streams(old.outputs)  # keep what differs only where sanitize.cfg allows
        elif "nbval-ignore-output" in new.metadata.get("tags", []):
            ignored.append((old, new))
    nb.metadata["book_execution"] = stored.metadata.get("book_execution")
    fresh = [new.outputs for _, new in ignored]
    for old, new in ignored:  # timings and the like: a re-run that changed nothing else keeps the stored run
        new.outputs = merged_streams(old.outputs)
    unchanged = canonical(nb) == canonical(stored)
    if unchanged and not remeasure:
        return seconds, False
    if not unchanged:
        for (_, new), outputs in zip(ignored, fresh):  # something else changed: store this whole run
            new.outputs = outputs
    nb.metadata["book_execution"] = {
        "seconds": round(seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "tensorflow": package_version("tensorflow", "tensorflow-cpu"),
        "keras": package_version("keras"),
    }
    path.write_text(canonical(nb))
    return seconds, not unchanged


def status_page(notebooks):
    """The Markdown of status.md, from each notebook's title and `book_execution` metadata."""
    rows = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        title = "".join(nb.cells[0].source).splitlines()[0].lstrip("# ").strip()
        meta = nb.metadata.get("book_execution")
        if meta is None:
            rows.append(f"| [{title}]({path.relative_to(ROOT).as_posix()}) | not executed by the script | | | | |")
            continue
        rows.append(f"| [{title}]({path.relative_to(ROOT).as_posix()}) | {meta['seconds']:.1f} s | "
                    f"{meta['date']} | {meta['python']} | {meta['tensorflow']} | {meta['keras']} |")
    return ("# Execution status\n\n"
            "Every page of this book is a notebook whose stored outputs come from one top-to-bottom run\n"
            "in a fresh kernel; the tests re-run each notebook and compare every output. This table is\n"
            "generated by `scripts/execute_notebooks.py` from the notebooks' metadata: for each, how long\n"
            "its last stored run took and the versions it ran with (on the book's 2-core CPU machine).\n\n"
            "| notebook | run time | executed (UTC) | Python | TensorFlow | Keras |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--status-only", action="store_true")
    parser.add_argument("--format-only", action="store_true", help="rewrite in canonical form, run nothing")
    parser.add_argument("--remeasure", action="store_true",
                        help="record each run's time even when its outputs are unchanged (for status.md)")
    args = parser.parse_args()
    all_notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    chosen = [p.resolve() for p in args.notebooks] or all_notebooks
    failed = False
    if args.format_only:
        for path in chosen:
            path.write_text(canonical(nbformat.read(path, as_version=4)))
    elif not args.status_only:
        prepare_environment()
        rules = sanitizers()
        for path in chosen:
            try:
                seconds, changed = execute(path, rules, remeasure=args.remeasure)
                print(f"executed {path.relative_to(ROOT)} in {seconds:.1f} s"
                      f"{'' if changed else ' (outputs unchanged)'}", flush=True)
            except CellExecutionError as error:
                failed = True
                last = [line for line in str(error).splitlines() if line.strip()][-1]
                print(f"FAILED {path.relative_to(ROOT)}: {last}", file=sys.stderr)
    STATUS.write_text(status_page(all_notebooks))
    print(f"wrote {STATUS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
