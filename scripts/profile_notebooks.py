#!/usr/bin/env python
"""Where a chapter's run time goes: per cell, wall time, the kernel's own CPU, its children's CPU,
and the child processes it started.

    .venv/bin/python scripts/profile_notebooks.py notebooks/12_*.ipynb          # 8 slowest cells each
    .venv/bin/python scripts/profile_notebooks.py --top 20 notebooks/05_mobilenet.ipynb
    .venv/bin/python scripts/profile_notebooks.py --json profile.json          # every chapter, saved

Each notebook runs top to bottom in a fresh kernel set up exactly as for the tests
(scripts/notebook_kernel.py); nothing is written back to the notebook. Reading a row:
- `kernel cpu` near `wall`: the cell computes in the notebook's own process (model building,
  training, tracing);
- `child cpu` large: the time went to child processes the cell started and waited for (a fresh
  `import tensorflow` alone costs ~5 s of CPU on the book's machine); `starts` counts them and names
  their commands;
- `idle` (wall minus both CPUs, when positive) large: the cell waited (a timeout, a sleep, a server
  or worker it did not wait for, the other core's work). CPU of children still running when a cell
  ends is counted in the cell that reaps them.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_kernel import ROOT, STARTUP, prepare_environment  # noqa: E402

# Runs in the kernel after the book's usual start-up file: IPython's cell events record each cell's
# clock, the kernel's CPU, its reaped children's CPU and the child processes it launched (audit
# events, so launches from any library are seen) to the file named by BOOK_PROFILE_OUT.
PROBE = r'''
import json as _json, os as _os, sys as _sys, time as _time
exec(compile(open(_os.environ["BOOK_PROFILE_STARTUP"]).read(), _os.environ["BOOK_PROFILE_STARTUP"], "exec"))
_book_starts = []
def _book_audit(event, args):
    if event in ("subprocess.Popen", "os.posix_spawn"):
        argv = args[1] or [args[0]]
        argv = argv.split() if isinstance(argv, (str, bytes)) else list(argv)
        line = " ".join("python" if str(a) == _sys.executable else str(a) for a in argv)
        _book_starts.append(" ".join(line.split())[:160])  # a `python -c` program on one line
_sys.addaudithook(_book_audit)
def _book_clock():
    t = _os.times()
    return {"wall": _time.perf_counter(), "cpu": t.user + t.system,
            "child_cpu": t.children_user + t.children_system}
def _book_pre(info):
    global _book_before
    _book_starts.clear()
    _book_before = _book_clock()
def _book_post(result):
    after = _book_clock()
    with open(_os.environ["BOOK_PROFILE_OUT"], "a") as out:
        out.write(_json.dumps({key: after[key] - _book_before[key] for key in after}
                              | {"starts": list(_book_starts)}) + "\n")
get_ipython().events.register("pre_run_cell", _book_pre)
get_ipython().events.register("post_run_cell", _book_post)
'''


def profile(path):
    """Run one notebook; return (seconds, [per code cell: index, first line, wall, cpu, child_cpu, starts])."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        probe, records = Path(scratch, "probe.py"), Path(scratch, "cells.jsonl")
        probe.write_text(PROBE)
        records.touch()
        saved = {key: os.environ.get(key) for key in ("PYTHONSTARTUP", "BOOK_PROFILE_STARTUP", "BOOK_PROFILE_OUT")}
        os.environ.update(PYTHONSTARTUP=str(probe), BOOK_PROFILE_STARTUP=str(STARTUP),
                          BOOK_PROFILE_OUT=str(records))
        try:
            client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": str(path.parent)}},
                                    extra_arguments=["--IPKernelApp.capture_fd_output=False"])
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        measured = [json.loads(line) for line in records.read_text().splitlines()]
    code = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    rows = []
    for (index, cell), record in zip(code, measured):
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        rows.append({"cell": index, "first_line": first[:60], **{k: round(v, 2) if isinstance(v, float) else v
                                                              for k, v in record.items()}})
    return seconds, rows


def report(name, seconds, rows, top):
    """The text table of one notebook's slowest cells."""
    cpu = sum(r["cpu"] for r in rows)
    child = sum(r["child_cpu"] for r in rows)
    starts = sum(len(r["starts"]) for r in rows)
    lines = [f"{name}: {seconds:.1f} s wall; kernel CPU {cpu:.1f} s, children's CPU {child:.1f} s, "
             f"{starts} child processes",
             f"  {'cell':>4} {'wall':>6} {'kernel':>7} {'child':>6} {'idle':>6}  first line / child processes"]
    for r in sorted(rows, key=lambda r: r["wall"], reverse=True)[:top]:
        idle = max(0.0, r["wall"] - r["cpu"] - r["child_cpu"])
        lines.append(f"  {r['cell']:>4} {r['wall']:>6.1f} {r['cpu']:>7.1f} {r['child_cpu']:>6.1f} {idle:>6.1f}  "
                     f"{r['first_line']}")
        lines.extend(f"{'':36}-> {command}" for command in r["starts"][:3])
        if len(r["starts"]) > 3:
            lines.append(f"{'':36}-> ... {len(r['starts']) - 3} more")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--top", type=int, default=8, help="cells shown per notebook (default 8)")
    parser.add_argument("--json", type=Path, help="also save every cell's figures to this file")
    args = parser.parse_args()
    chosen = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    prepare_environment()
    everything = {}
    for path in chosen:
        seconds, rows = profile(path)
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        everything[name] = {"seconds": round(seconds, 1), "cells": rows}
        print(report(name, seconds, rows, args.top), flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
