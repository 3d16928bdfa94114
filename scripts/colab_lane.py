#!/usr/bin/env python
"""The Colab lane: every chapter on Colab's own stack, installed as its first cell installs it.

    .venv/bin/python scripts/colab_lane.py                  # all chapters, 2 at a time
    .venv/bin/python scripts/colab_lane.py 05_mobilenet     # some (file stems)

1. Takes a snapshot of HEAD (`git archive`), never the working tree others edit, and writes every
   setup cell in the book's one form there (scripts/write_setup_cells.py; a no-op once main has it).
2. Builds, or reuses while colab/stack.txt is unchanged, a virtual environment with Colab's stack
   (that file: Colab's Python, TensorFlow, Keras, tf-keras, protobuf, numpy and the packages around them).
3. Runs each chapter in a fresh kernel of a fresh copy of that environment (a new Colab runtime), with
   the Keras cache pre-filled as for the tests (scripts/notebook_kernel.py). The setup cell runs as a
   reader runs it, with the repository URL replaced by the snapshot's folder.
4. Compares every output with the stored one as nbval does (tests/sanitize.cfg, same fields), and
   fails on an error in a cell not tagged raises-exception, on a pip error or protobuf traceback in a
   setup cell, on a distribution the kernel had imported that the setup cell moved, and on an output
   difference missing from colab/differences.yml or whose sentence is not on the chapter's page.
   While that file says `enforce: false` it reports the same verdict and exits 0.

It prints per chapter the run time, the setup cell's time and what the setup cell changed, and writes
the full report (pip list before and after, pip check, every difference) to --report.
"""
import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
STACK = ROOT / "colab" / "stack.txt"
DIFFERENCES = ROOT / "colab" / "differences.yml"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ckpt-vs-savedmodel" / "colab-lane"
INSTALL_URL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'@#])")
# nbval's comparison: these keys of an output are not compared (nbval.plugin.IPyNbFile.skip_compare)
SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")
# what a setup cell must never print: pip's resolver errors, protobuf's import tracebacks, restart notices
SETUP_CELL_FAILURES = re.compile(r"ERROR|Traceback|GetPrototype|MessageFactory|dependency conflicts|"
                                 r"incompatible|restart", re.I)


# --- the environment ---------------------------------------------------------------------------

def stack_python(stack_text):
    """The Python of the stack file's `# python: X.Y` line, found on PATH or under pyenv."""
    version = re.search(r"^# python: (\d+\.\d+)\s*$", stack_text, re.M).group(1)
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return str(candidate)
    raise RuntimeError(f"no Python {version} found (colab/stack.txt asks for it)")


def environment(stack=STACK):
    """The base environment with Colab's stack: built once per content of the stack file, then reused
    (building colab/stack.txt's removes the environments of its earlier versions)."""
    text = stack.read_text()
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    venv = CACHE / f"stack-{key}"
    if (venv / "complete").exists():
        print(f"colab lane: reusing {venv} (colab/stack.txt unchanged)", flush=True)
        return venv
    for old in CACHE.glob("stack-*") if stack.resolve() == STACK.resolve() else []:
        shutil.rmtree(old, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([stack_python(text), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-r", str(stack)], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})  # Colab has no machine-wide pip settings
    (venv / "complete").write_text(f"built in {time.perf_counter() - start:.0f} s\n")
    print(f"colab lane: built {venv} in {time.perf_counter() - start:.0f} s", flush=True)
    return venv


def pip_state(venv):
    """(`pip list --format=freeze` as {name: version}, `pip check`'s output) of an environment."""
    python = str(venv / "bin" / "python")
    freeze = subprocess.run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    check = subprocess.run([python, "-m", "pip", "check", "--disable-pip-version-check"],
                           capture_output=True, text=True)
    versions = dict(line.split("==", 1) for line in freeze.split() if "==" in line)
    return versions, check.stdout.strip()


# --- the book ------------------------------------------------------------------------------------

def snapshot(destination, rev="HEAD"):
    """The committed book at `rev`, unpacked into `destination` (nobody else's edits in progress)."""
    destination.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


def prepare_book(book, rewrite=True):
    """Setup cells in the one form (unless `rewrite` is False); return {chapter stem: path}."""
    if rewrite:
        from write_setup_cells import write_setup_cells
        write_setup_cells(book)
    return {path.stem: path for path in sorted((book / "notebooks").glob("*.ipynb"))}


def source_for_install(book, folder):
    """A copy of the book's package source, one per chapter, so two pip builds never share a folder."""
    shutil.copytree(book, folder, ignore=shutil.ignore_patterns("notebooks", "_static", "tests", "*.ipynb"))
    return folder


# --- one chapter ---------------------------------------------------------------------------------

PROBE_BEFORE = ("import importlib.metadata, json, sys\n"
                "print('COLAB-LANE-IMPORTED ' + json.dumps(sorted({d for packages in "
                "[importlib.metadata.packages_distributions()] for m in list(sys.modules) if '.' not in m "
                "for d in packages.get(m, [])})))")
PROBE_AFTER = ("import importlib.metadata, json, sys\n"
               "import tensorflow as tf\n"
               "print('COLAB-LANE-VERSIONS ' + json.dumps({'keras': tf.keras.__version__, "
               "'tensorflow': tf.__version__, 'keras dist': importlib.metadata.version('keras')}))")


def run_chapter(notebook, base, work, timeout=600):
    """Execute one chapter in a fresh copy of the base environment; return what the report needs."""
    import nbformat
    from nbclient import NotebookClient

    work.mkdir(parents=True)
    venv = work / "venv"
    subprocess.run(["cp", "-al", str(base), str(venv)], check=True)  # a new runtime: hard links, seconds
    source = source_for_install(notebook.parent.parent, work / "book")
    nb = nbformat.read(notebook, as_version=4)
    setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells[setup].source = INSTALL_URL.sub(source.as_uri(), nb.cells[setup].source)  # "... @ file:///..."
    nb.cells.insert(setup + 1, nbformat.v4.new_code_cell(PROBE_AFTER))
    nb.cells.insert(setup, nbformat.v4.new_code_cell(PROBE_BEFORE))
    kernels = work / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    path = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab stack", "language": "python",
        # PIP_CONFIG_FILE: no machine-wide pip settings (this machine's extra indexes), as on Colab
        "env": {"PATH": path, "VIRTUAL_ENV": str(venv), "PYTHONPATH": "", "PIP_CONFIG_FILE": os.devnull}}))
    os.environ["JUPYTER_PATH"] = str(work / "jupyter")
    client = NotebookClient(nb, timeout=timeout, kernel_name="colab", allow_errors=True, record_timing=True,
                            resources={"metadata": {"path": str(notebook.parent)}},
                            extra_arguments=["--IPKernelApp.capture_fd_output=False"])
    start = time.perf_counter()
    wall_start = datetime.datetime.now(datetime.timezone.utc).isoformat()
    client.execute()
    seconds = time.perf_counter() - start
    probe_before, probe_after = nb.cells.pop(setup), nb.cells.pop(setup + 1)
    marker = {"COLAB-LANE-IMPORTED": None, "COLAB-LANE-VERSIONS": None}
    for cell in (probe_before, probe_after):
        for out in cell.outputs:
            for line in out.get("text", "").splitlines():
                name, _, payload = line.partition(" ")
                if name in marker:
                    marker[name] = json.loads(payload)
    timing = nb.cells[setup].metadata.get("execution", {})
    probes = {name: cell.metadata.get("execution", {}) for name, cell in
              (("before setup", probe_before), ("after setup", probe_after))}
    versions, check = pip_state(venv)
    shutil.rmtree(venv, ignore_errors=True)
    return {"chapter": notebook.stem, "seconds": round(seconds, 1), "started": wall_start,
            "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "setup_seconds": round(elapsed(timing), 1), "setup_index": setup, "probes": probes,
            "imported_before_setup": marker["COLAB-LANE-IMPORTED"], "versions_after_setup": marker["COLAB-LANE-VERSIONS"],
            "pip_after": versions, "pip_check_after": check,
            "cells": [{"outputs": c.get("outputs", []), "tags": c.metadata.get("tags", []),
                       "seconds": round(elapsed(c.metadata.get("execution", {})), 2),
                       "busy": c.metadata.get("execution", {}).get("iopub.status.busy"),
                       "idle": c.metadata.get("execution", {}).get("iopub.status.idle")}
                      if c.cell_type == "code" else None for c in nb.cells]}


def elapsed(timing):
    """Seconds between a cell's execute_input and its idle status (nbclient's record_timing)."""
    try:
        start, end = timing["iopub.execute_input"], timing["shell.execute_reply"]
    except KeyError:
        return float("nan")
    parse = lambda stamp: datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


# --- comparing -----------------------------------------------------------------------------------

def sanitizers(book):
    from nbval.plugin import get_sanitize_patterns
    return [(re.compile(regex), replace)
            for regex, replace in get_sanitize_patterns((book / "tests" / "sanitize.cfg").read_text())]


def comparable(outputs, rules):
    """An output list as nbval compares it: streams coalesced and keyed by name, data flattened,
    skipped keys dropped, every string sanitised; {key: [values]}."""
    import nbformat
    from nbval.plugin import coalesce_streams, transform_streams_for_comparison
    outputs = coalesce_streams([nbformat.from_dict(json.loads(json.dumps(o))) for o in outputs])
    flat = defaultdict(list)
    for output in transform_streams_for_comparison(outputs):
        for key, value in output.items():
            if key in SKIP_COMPARE:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for name, item in items:
                if name in SKIP_COMPARE:
                    continue
                if isinstance(item, list) and key != "data":
                    item = "".join(item)
                if isinstance(item, str):
                    for regex, replace in rules:
                        item = regex.sub(replace, item)
                flat[name].append(item)
    return dict(flat)


def compared_cells(stored_nb, result, rules):
    """[(cell index, stored, new)] of the compared cells whose outputs differ as nbval would see it."""
    differing = []
    for index, (cell, new) in enumerate(zip(stored_nb.cells, result["cells"])):
        if cell.cell_type != "code" or new is None or index == result["setup_index"]:
            continue
        tags = set(cell.metadata.get("tags", []))
        if tags & {"nbval-ignore-output", "nbval-skip"} or cell.get("execution_count") is None:
            continue
        old, fresh = comparable(cell.get("outputs", []), rules), comparable(new["outputs"], rules)
        if old != fresh:
            differing.append((index, old, fresh))
    return differing


def unexpected_errors(stored_nb, result):
    """[(cell index, 'Ename: evalue')] of errors in cells not tagged to raise."""
    found = []
    for index, (cell, new) in enumerate(zip(stored_nb.cells, result["cells"])):
        if new is None:
            continue
        tags = set(cell.metadata.get("tags", []))
        for out in new["outputs"]:
            if out.get("output_type") == "error" and not tags & {"raises-exception", "nbval-raises-exception"}:
                found.append((index, f"{out.get('ename')}: {out.get('evalue', '')[:300]}"))
    return found


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def output_lines(outputs):
    """Every line a cell printed or raised, as text."""
    text = []
    for out in outputs:
        text.append("".join(out.get("text", "")))
        text.append("".join(out.get("data", {}).get("text/plain", "")))
        text += [f"{out.get('ename', '')}: {out.get('evalue', '')}"] if out.get("output_type") == "error" else []
        text += out.get("traceback", [])
    return [line for chunk in text for line in re.sub(r"\x1b\[[0-9;]*m", "", chunk).splitlines() if line.strip()]


def nbformat_read(path):
    import nbformat
    return nbformat.read(path, as_version=4)


def page_text(nb):
    """The chapter's prose, whitespace collapsed, where a reviewed sentence must appear."""
    return " ".join(" ".join(c.source for c in nb.cells if c.cell_type == "markdown").split())


def load_differences(path=DIFFERENCES):
    import yaml
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    return bool(data.get("enforce", True)), data.get("differences") or []


def cell_index(nb, cell):
    """(index, None) of the code cell an entry names, by index or by a line of its source (which
    survives cells inserted above it); (None, why) when no cell or more than one matches."""
    if isinstance(cell, int):
        return cell, None
    matches = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and cell in c.source]
    if len(matches) != 1:
        return None, f"{len(matches)} code cells contain {cell!r} (one must)"
    return matches[0], None


def verdict(stored, results, reviewed, base_versions):
    """Every problem of the run, one line each."""
    import nbformat
    problems, explained = [], set()
    listed = defaultdict(list)
    notebooks = {name: nbformat.read(path, as_version=4) for name, path in stored.items()}
    for entry in reviewed:  # "chapter" is one file stem or a list of them (the same cell in each)
        for chapter in ([entry["chapter"]] if isinstance(entry["chapter"], str) else entry["chapter"]):
            if chapter not in notebooks:
                continue
            index, problem = cell_index(notebooks[chapter], entry["cell"])
            if problem:
                problems.append(f"{chapter}: colab/differences.yml entry {entry['differs']!r}: {problem}")
            else:
                listed[(chapter, index)].append(entry)
    for name, result in sorted(results.items()):
        nb = notebooks[name]
        rules = sanitizers(stored[name].parent.parent)
        for index, message in unexpected_errors(nb, result):
            problems.append(f"{name} [{index}]: unexpected error {message}")
        for line in dict.fromkeys(output_lines(result["cells"][result["setup_index"]]["outputs"])):
            if SETUP_CELL_FAILURES.search(line):
                problems.append(f"{name} [{result['setup_index']}]: setup cell printed: {line.strip()[:200]}")
        changed = {normalized(n) for n, v in result["pip_after"].items() if base_versions.get(n) != v}
        moved = [d for d in result["imported_before_setup"] or [] if normalized(d) in changed]
        if moved:
            problems.append(f"{name}: the setup cell moved distributions the kernel had imported: {moved}")
        text = page_text(nb)
        for index, old, fresh in compared_cells(nb, result, rules):
            entries = listed.get((name, index))
            if not entries:
                problems.append(f"{name} [{index}]: output differs and colab/differences.yml does not list it: "
                                f"{describe(old, fresh)}")
                continue
            for entry in entries:
                explained.add(id(entry))
                shown = entry.get("colab")
                if shown and shown not in json.dumps(fresh, ensure_ascii=False) and shown not in str(fresh):
                    problems.append(f"{name} [{index}]: listed difference, but the Colab output does not show "
                                    f"{shown!r}: {describe(old, fresh)}")
                if " ".join(entry["sentence"].split()) not in text:
                    problems.append(f"{name} [{index}]: the page lacks the listed sentence: {entry['sentence']!r}")
    chapters_of = lambda e: [e["chapter"]] if isinstance(e["chapter"], str) else e["chapter"]  # noqa: E731
    stale = [e for e in reviewed if id(e) not in explained and set(chapters_of(e)) & set(results)]
    return problems, stale


def describe(old, fresh):
    """The first differing field, stored against Colab, shortened."""
    for key in sorted(set(old) | set(fresh)):
        if old.get(key) != fresh.get(key):
            a, b = str(old.get(key, "(none)")), str(fresh.get(key, "(none)"))
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lo = max(0, i - 60)
            return f"{key}: stored …{a[lo:i + 100]!r} / Colab …{b[lo:i + 100]!r}"
    return "(no difference)"


# --- main ----------------------------------------------------------------------------------------

def one(args):
    """Child process: run one chapter, write its result as JSON."""
    result = run_chapter(Path(args.one), Path(args.base), Path(args.work))
    Path(args.result).write_text(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="file stems (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--stack", type=Path, default=STACK)
    parser.add_argument("--differences", type=Path, default=DIFFERENCES)
    parser.add_argument("--rev", default="HEAD", help="the commit to snapshot (default HEAD)")
    parser.add_argument("--as-committed", action="store_true", help="keep the setup cells as committed")
    parser.add_argument("--report", type=Path, help="write the full report (JSON) here")
    parser.add_argument("--prepare", type=Path, help="a Python script run with the snapshot's folder as its "
                        "argument before the chapters run, to try a change that is not committed")
    parser.add_argument("--one"), parser.add_argument("--base"), parser.add_argument("--work")
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    if args.one:
        return one(args)
    started = time.perf_counter()
    from notebook_kernel import prepare_environment
    prepare_environment()  # PYTHONSTARTUP, TMPDIR and the Keras cache, inherited by every kernel
    enforce, reviewed = load_differences(args.differences)
    try:
        base = environment(args.stack)
    except (RuntimeError, subprocess.CalledProcessError) as error:
        return finish([f"cannot build Colab's stack: {error}"], enforce, started, 0)
    base_versions, base_check = pip_state(base)
    CACHE.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))  # same file system: hard links work
    try:
        book = snapshot(run_dir / "book", args.rev)
        if args.prepare:
            subprocess.run([sys.executable, str(args.prepare), str(book)], check=True)
        notebooks = prepare_book(book, rewrite=not args.as_committed)
        chosen = {k: v for k, v in notebooks.items() if not args.chapters or k in args.chapters}
        results, failed = {}, []

        def launch(name):
            out = run_dir / f"{name}.json"
            command = [sys.executable, __file__, "--one", str(chosen[name]), "--base", str(base),
                       "--work", str(run_dir / "chapters" / name), "--result", str(out)]
            finished = subprocess.run(command, capture_output=True, text=True)
            if finished.returncode:
                return {"chapter": name, "failed": finished.stderr[-3000:]}
            return json.loads(out.read_text())

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(launch, chosen):
                if "failed" in result:
                    failed.append(f"{result['chapter']}: the lane could not run it: {result['failed']}")
                    print(failed[-1], flush=True)
                    continue
                results[result["chapter"]] = result
                changed = {n: (base_versions.get(n), v) for n, v in result["pip_after"].items()
                           if base_versions.get(n) != v}
                print(f"{result['chapter']}: {result['seconds']:.0f} s (setup cell {result['setup_seconds']:.0f} s); "
                      f"setup changed {len(changed)}: " + ", ".join(
                          f"{n} {a or '-'}->{b}" for n, (a, b) in sorted(changed.items())[:8]), flush=True)
        problems, stale = verdict({n: chosen[n] for n in results}, results, reviewed, base_versions)
        problems = failed + problems
        details = {}
        for name, result in results.items():
            nb = nbformat_read(chosen[name])
            rules = sanitizers(chosen[name].parent.parent)
            details[name] = {"setup_output": output_lines(result["cells"][result["setup_index"]]["outputs"]),
                             "differing": {index: {"stored": old, "colab": fresh}
                                           for index, old, fresh in compared_cells(nb, result, rules)}}
        report = {"stack": str(args.stack), "base": base_versions, "base_pip_check": base_check,
                  "details": details,
                  "chapters": {n: {**{k: v for k, v in r.items() if k != "cells"}, "slowest_cells": sorted(
                      ((c["seconds"], i) for i, c in enumerate(r["cells"]) if c), reverse=True)[:5]}
                      for n, r in results.items()},
                  "problems": problems, "stale": stale, "seconds": round(time.perf_counter() - started)}
        if args.report:
            args.report.write_text(json.dumps(report, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    for entry in stale:
        print(f"note: listed difference no longer seen: {entry['chapter']} [{entry['cell']}] {entry['differs']}")
    return finish(problems, enforce, started, len(results))


def finish(problems, enforce, started, chapters):
    """Print the verdict; the exit status: 1 on any problem, unless colab/differences.yml says enforce: false."""
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"colab lane: {chapters} chapters, {len(problems)} problems, {time.perf_counter() - started:.0f} s")
    if problems and not enforce:
        print("colab lane: colab/differences.yml says enforce: false, so these are reported, not failed")
        return 0
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
