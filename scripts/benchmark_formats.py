#!/usr/bin/env python
"""Save and load time, size and memory of every format at three model sizes, against the raw disk.

    .venv/bin/python scripts/benchmark_formats.py                    # the book's run, ~15 minutes
    .venv/bin/python scripts/benchmark_formats.py --widths 64 --repeats 1 --out /tmp/try.json

Each size is a Sequential of 4 Dense(width, width) layers (float32): width 512 is 4.2 MB of
variables, 2048 is 67 MB, 8192 is 1.07 GB. For each format (helpers.benchmark.FORMATS) the saves
run in one child process, then every load in a fresh child with the artifact evicted from the page
cache; the raw file is read back cold and warm. Writes benchmarks/formats.json (the chapter reads
it) after every measurement, so an interrupted run keeps what it measured.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import benchmark  # noqa: E402


def machine_facts(workdir):
    """What the numbers depend on: CPU, memory, the file system written to, versions, load."""
    df = subprocess.run(["df", "-T", "-B1", str(workdir)], capture_output=True, text=True).stdout
    device, fstype = df.splitlines()[-1].split()[:2]
    block = Path("/sys/block") / Path(device).name
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "ram_bytes": psutil.virtual_memory().total,
        "disk": {"device": device, "filesystem": fstype,
                 "df": " ".join(df.splitlines()[-1].split()[:3]),
                 "rotational": (block / "queue" / "rotational").read_text().strip()
                 if (block / "queue" / "rotational").exists() else "unknown"},
        "dirty_background_ratio": Path("/proc/sys/vm/dirty_background_ratio").read_text().strip(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    for name in ("tensorflow", "keras", "h5py", "numpy"):
        try:
            facts[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts[name] = importlib.metadata.version(f"{name}-cpu") if name == "tensorflow" else "?"
    return facts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--formats", nargs="+", default=list(benchmark.FORMATS),
                        choices=benchmark.FORMATS, metavar="FORMAT")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "formats.json")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where artifacts are written (default: a temporary folder)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="formats-", dir=args.workdir))
    data = {"machine": machine_facts(work),
            "method": {"layers": args.layers, "repeats": args.repeats, "warmup": args.warmup,
                       "timer": "timeit.Timer.repeat(number=1), time.perf_counter",
                       "durable": "API call + fsync of every file and folder written",
                       "load": "fresh process per load, timed around the load call, after "
                               "posix_fadvise(DONTNEED) of every file of the artifact"},
            "load_average": {"start": os.getloadavg()}, "sizes": []}
    tasks = [(w, f) for w in args.widths for f in args.formats]
    bar = tqdm(tasks, unit="format", file=sys.stderr)
    try:
        for width in args.widths:
            size = {"width": width, "variable_bytes": benchmark.variable_bytes(width, args.layers),
                    "load_average": os.getloadavg(), "formats": {}}
            data["sizes"].append(size)
            for fmt in args.formats:
                bar.set_postfix_str(f"{fmt} @ {benchmark.variable_bytes(width, args.layers) / 1e6:,.0f} MB")
                folder = work / f"{width}-{fmt.replace(' ', '_')}"
                size["formats"][fmt] = benchmark.measure(fmt, width, args.layers, folder,
                                                         args.repeats, args.warmup)
                if fmt == "raw file":
                    size["raw_read_warm"] = benchmark.measure_warm_read(
                        width, args.layers, folder, args.repeats, args.warmup)
                shutil.rmtree(folder, ignore_errors=True)
                bar.update()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(data, indent=1) + "\n")
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    data["load_average"]["end"] = os.getloadavg()
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
