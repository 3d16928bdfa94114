"""Save and load times of every format against the disk's own limit (chapter 9).

Four rules make the numbers honest:
- timings come from `timeit.Timer.repeat` (one call per repeat, the first repeats thrown away as
  warm-up, GC left on as in a real program) and are reported as median, min and max;
- a save counts as done when its bytes are on the disk: `durable` = the API call + `fsync` of every
  file and folder it wrote (`returned` keeps the time the API call alone took);
- every load runs in a fresh child process, timed inside the child around the load call only
  (not the TensorFlow import; for the weights and checkpoint formats not the model building either,
  which their load needs done first, while `load_model` and the SavedModel loads build what they
  load inside the clock), after the artifact's pages were dropped from the page cache (`drop_cache`);
- the limit is the same number of bytes written as one raw file and fsync'ed, read back cold and warm.

`measure` drives it all; `python -m helpers.benchmark save|load ...` is what runs in the children.
"""
import argparse
import ctypes
import gc
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import NamedTuple

from helpers._child import package_env

FORMATS = (".weights.h5", "sharded .weights.json", "Checkpoint.write", "Checkpoint.write async",
           ".keras", "model.export", "tf.saved_model.save", "raw file")
SAME_FILES_AS = {"Checkpoint.write async": "Checkpoint.write"}  # loaded like the sync checkpoint


class Stats(NamedTuple):
    """Seconds over the kept repeats (warm-up dropped): median, min, max, and every sample."""
    median: float
    min: float
    max: float
    samples: tuple

    @classmethod
    def of(cls, samples):
        samples = tuple(float(s) for s in samples)
        if not samples:
            raise ValueError("no samples to summarise")
        return cls(statistics.median(samples), min(samples), max(samples), samples)


def repeat(stmt, setup=None, repeats=5, warmup=1):
    """Time `stmt()` with `timeit.Timer.repeat`, one call per repeat; `setup()` runs untimed
    before each call. Returns the seconds of the last `repeats` calls (the `warmup` first dropped)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")

    def prepare():  # timeit turns GC off while timing; programs that save have it on
        gc.enable()
        if setup is not None:
            setup()

    timer = timeit.Timer(stmt, setup=prepare, timer=time.perf_counter)
    return timer.repeat(repeat=warmup + repeats, number=1)[warmup:]


def files_under(path):
    """Every file of an artifact: the file itself, or all files under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' does not exist")
    return sorted(p for p in path.rglob("*") if p.is_file())


def fsync_tree(path):
    """fsync every file and folder under `path`, and the folder that holds it, so that the
    data and the names pointing to it are on the disk (what no save API here does itself)."""
    path = Path(path)
    targets = files_under(path) + [path] + [p for p in path.rglob("*") if p.is_dir()]
    for target in targets + [path.parent]:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_cache(path):
    """Write out, then evict an artifact's pages from the page cache (POSIX_FADV_DONTNEED on each
    file), so the next read comes from the disk below; other files' pages are left alone."""
    for file in files_under(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages would only be queued for writing, not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_fraction(path):
    """The fraction of an artifact's pages that are in the page cache now (mincore(2)), to check
    that `drop_cache` did evict them."""
    page, resident, total = mmap.PAGESIZE, 0, 0
    for file in files_under(path):
        size = file.stat().st_size
        if size == 0:
            continue
        pages = (size + page - 1) // page
        fd = os.open(file, os.O_RDONLY)
        try:
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap failed for '{file}'")
            try:
                vector = ctypes.create_string_buffer(pages)
                if _libc.mincore(address, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore failed for '{file}'")
                resident += sum(b & 1 for b in vector.raw)
            finally:
                _libc.munmap(address, size)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else 0.0


def reset_peak_memory():
    """Set this process's peak resident memory (VmHWM) back to its current size (Linux
    clear_refs); return the current resident bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def resident_memory():
    """This process's resident bytes now (VmRSS): what it holds at this moment, peak aside."""
    return _status_bytes("VmRSS")


def peak_memory():
    """This process's peak resident bytes since start or the last `reset_peak_memory` (VmHWM)."""
    return _status_bytes("VmHWM")


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field")


# --- the model and the formats ------------------------------------------------------------------

def variable_bytes(width, layers):
    """float32 bytes of `layers` Dense(width) layers on a width-wide input: kernels and biases."""
    return 4 * layers * (width * width + width)


def make_model(width, layers, seed=0, zeros=False):
    """A Sequential of `layers` Dense(width) layers: the benchmark's model, cheap to build at any
    size. Seeded random kernels and biases (so a load that skips a bias shows), or all zeros: a
    model to load into."""
    import keras
    if width < 1 or layers < 1:
        raise ValueError(f"width and layers must be positive, got width={width}, layers={layers}")
    keras.utils.set_random_seed(seed)
    kernel, bias = ("zeros", "zeros") if zeros else ("glorot_uniform", "random_normal")
    return keras.Sequential(
        [keras.Input((width,), name="x")]
        + [keras.layers.Dense(width, kernel_initializer=kernel, bias_initializer=bias)
           for _ in range(layers)])


def probe(width):
    """The input every save and load is checked with: one row of fixed values."""
    import numpy as np
    return np.linspace(-1, 1, width, dtype=np.float32)[None, :]


def shard_gb(width, layers):
    """max_shard_size (GB, as Keras counts: 1024**3 bytes) that splits the weights into about
    `layers` files: one kernel and one bias per shard."""
    per_layer = 4 * (width * width + width)
    return per_layer * 1.01 / 1024**3


def save_call(fmt, model, folder):
    """The save of `fmt` into `folder` (a fresh folder), as a zero-argument callable."""
    import tensorflow as tf
    folder = Path(folder)
    width = model.inputs[0].shape[1]
    layers = len(model.layers)
    calls = {
        ".weights.h5": lambda: model.save_weights(folder / "model.weights.h5"),
        "sharded .weights.json": lambda: model.save_weights(
            folder / "model.weights.json", max_shard_size=shard_gb(width, layers)),
        "Checkpoint.write": lambda: tf.train.Checkpoint(model=model).write(str(folder / "ckpt")),
        ".keras": lambda: model.save(folder / "model.keras"),
        "model.export": lambda: model.export(
            str(folder / "export"), verbose=False,
            input_signature=[tf.TensorSpec([None, width], tf.float32, name="x")]),
        "tf.saved_model.save": lambda: tf.saved_model.save(model, str(folder / "saved_model")),
    }
    if fmt not in calls:
        raise ValueError(f"unknown format {fmt!r} for save_call; expected one of {sorted(calls)}")
    return calls[fmt]


def load_call(fmt, folder, width, layers):
    """The load of `fmt` from `folder` as a zero-argument callable returning a function of x;
    a model to load into (weights and checkpoints) is built here, before any clock starts."""
    import keras
    import tensorflow as tf
    folder = Path(folder)
    fmt = SAME_FILES_AS.get(fmt, fmt)
    tf.constant(1.0).numpy()  # start TensorFlow's runtime before the clock, for every format
    if fmt in (".weights.h5", "sharded .weights.json", "Checkpoint.write"):
        model = make_model(width, layers, zeros=True)
        if fmt == "Checkpoint.write":
            def load():
                tf.train.Checkpoint(model=model).read(str(folder / "ckpt")).assert_consumed()
                return model
        else:
            name = "model.weights.h5" if fmt == ".weights.h5" else "model.weights.json"
            def load():
                model.load_weights(folder / name)
                return model
        return load
    if fmt == ".keras":
        return lambda: keras.saving.load_model(folder / "model.keras")
    if fmt == "model.export":
        def load():
            loaded = tf.saved_model.load(str(folder / "export"))
            return lambda x: loaded.serve(x).numpy()  # `loaded` owns the variables: keep it
        return load
    if fmt == "tf.saved_model.save":
        def load():
            loaded = tf.saved_model.load(str(folder / "saved_model"))
            return lambda x: loaded.signatures["serving_default"](tf.constant(x))["output_0"].numpy()
        return load
    raise ValueError(f"unknown format {fmt!r} for load_call; expected one of {FORMATS[:-1]}")


# --- the child processes --------------------------------------------------------------------------

def save_child(fmt, width, layers, folder, repeats, warmup):
    """In this process: build the model, save it `warmup + repeats` times into `folder` (emptied
    before each, untimed), each save followed by fsync_tree. Returns a JSON-ready dict."""
    folder = Path(folder)
    if fmt == "raw file":
        return _raw_save(width, layers, folder, repeats, warmup)
    import tensorflow as tf
    model = make_model(width, layers)
    output = model(probe(width)).numpy()
    returned, written, checkpoint = [], [], []

    def setup():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        checkpoint[:] = [tf.train.Checkpoint(model=model)]  # async: one write per Checkpoint object

    if fmt == "Checkpoint.write async":
        options = tf.train.CheckpointOptions(enable_async=True)

        def stmt():
            start = time.perf_counter()
            checkpoint[0].write(str(folder / "ckpt"), options=options)
            returned.append(time.perf_counter() - start)
            checkpoint[0].sync()
            written.append(time.perf_counter() - start)
            fsync_tree(folder)
    else:
        def stmt():
            start = time.perf_counter()
            save()
            returned.append(time.perf_counter() - start)
            fsync_tree(folder)
        save = save_call(fmt, model, folder)

    base = reset_peak_memory()
    durable = repeat(stmt, setup, repeats, warmup)
    result = {"durable": durable, "returned": returned[warmup:], "bytes": _bytes(folder),
              "files": len(files_under(folder)), "memory_base": base,
              "memory_peak": peak_memory(), "output": output[0, :8].tolist()}
    if written:
        result["written"] = written[warmup:]
    return result


def _raw_save(width, layers, folder, repeats, warmup):
    import numpy as np
    data = np.random.default_rng(0).integers(0, 256, variable_bytes(width, layers), dtype=np.uint8)
    returned = []

    def setup():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def stmt():
        start = time.perf_counter()
        with open(folder / "raw.bin", "wb", buffering=0) as f:
            f.write(memoryview(data))
            returned.append(time.perf_counter() - start)
            os.fsync(f.fileno())
        fsync_tree(folder)

    base = reset_peak_memory()
    durable = repeat(stmt, setup, repeats, warmup)
    return {"durable": durable, "returned": returned[warmup:], "bytes": _bytes(folder),
            "files": 1, "memory_base": base, "memory_peak": peak_memory()}


def load_child(fmt, width, layers, folder):
    """In this process (a fresh one): prepare, then time one load; check it with the probe input."""
    folder = Path(folder)
    if fmt == "raw file":
        size = (folder / "raw.bin").stat().st_size
        buffer = bytearray(b"\xff") * size  # filled, so its pages exist before the clock starts
        base = reset_peak_memory()
        start = time.perf_counter()
        with open(folder / "raw.bin", "rb", buffering=0) as f:
            read = f.readinto(buffer)
        seconds = time.perf_counter() - start
        if read != size:
            raise RuntimeError(f"read {read} of {size} bytes from '{folder / 'raw.bin'}'")
        return {"seconds": seconds, "memory_base": base, "memory_peak": peak_memory()}
    import numpy as np
    load = load_call(fmt, folder, width, layers)
    x = probe(width)
    base = reset_peak_memory()
    start = time.perf_counter()
    fn = load()
    seconds = time.perf_counter() - start
    peak = peak_memory()
    return {"seconds": seconds, "memory_base": base, "memory_peak": peak,
            "output": [float(v) for v in np.asarray(fn(x))[0, :8]]}


def _bytes(folder):
    return sum(f.stat().st_size for f in files_under(folder))


def run_child(args, timeout=900):
    """Run `python -m helpers.benchmark ARGS` in a fresh process; return its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "helpers.benchmark", *map(str, args)],
                          capture_output=True, text=True, env=package_env(), timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"benchmark child {' '.join(map(str, args[:2]))} failed "
                           f"(exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(fmt, width, layers, folder, repeats=5, warmup=1, cold=True):
    """Benchmark one format at one size: saves in one child, then `warmup + repeats` loads, each
    in its own child, cold (`drop_cache` before each) or warm. Returns a JSON-ready dict."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    folder = Path(folder)
    saved = run_child(["save", fmt, width, layers, folder, repeats, warmup])
    result = {"format": fmt, "width": width, "layers": layers,
              "variable_bytes": variable_bytes(width, layers), "bytes": saved["bytes"],
              "files": saved["files"], "repeats": repeats, "warmup": warmup,
              "save": {key: Stats.of(saved[key])._asdict()
                       for key in ("returned", "written", "durable") if key in saved},
              "save_memory": {"base": saved["memory_base"], "peak": saved["memory_peak"]}}
    if fmt in SAME_FILES_AS:
        return result
    loads = []
    for _ in range(warmup + repeats):
        if cold:
            drop_cache(folder)
        loads.append(run_child(["load", fmt, width, layers, folder]))
    if "output" in saved:  # every load, the warm-up's too, must give the saved model's output
        import numpy as np
        for r in loads:
            if not np.allclose(r["output"], saved["output"], rtol=1e-5, atol=1e-6):
                raise AssertionError(f"{fmt}: loaded model gives {r['output'][:3]}..., "
                                     f"saved model gave {saved['output'][:3]}...")
    loads = loads[warmup:]
    result["load" if cold else "load_warm"] = Stats.of([r["seconds"] for r in loads])._asdict()
    result["load_memory"] = {"base": max(r["memory_base"] for r in loads),
                             "peak": max(r["memory_peak"] for r in loads)}
    return result


def measure_warm_read(width, layers, folder, repeats=5, warmup=1):
    """The raw file read back with its pages still cached: the warm limit (fresh child each time)."""
    reads = [run_child(["load", "raw file", width, layers, folder])["seconds"]
             for _ in range(warmup + repeats)][warmup:]
    return Stats.of(reads)._asdict()


def fraction_of_limit(limit_seconds, seconds):
    """How close a format comes to the raw limit: limit time / format time (1 = at the limit)."""
    if limit_seconds <= 0 or seconds <= 0:
        raise ValueError(f"times must be positive, got limit={limit_seconds}, format={seconds}")
    return limit_seconds / seconds


def summary(size):
    """One size of the data file as rows per format: size on disk, save and load medians, and
    each as a fraction of the raw file's (fsync'ed write, cold read); memory as multiples of
    the variables' bytes."""
    raw = size["formats"]["raw file"]
    limit_save, limit_load = raw["save"]["durable"]["median"], raw["load"]["median"]
    rows = {}
    for fmt, r in size["formats"].items():
        load = r.get("load") or size["formats"][SAME_FILES_AS[fmt]]["load"]
        save = r["save"]
        row = {"bytes": r["bytes"], "size_ratio": r["bytes"] / r["variable_bytes"],
               "returned": save["returned"]["median"], "durable": save["durable"]["median"],
               "durable_min": save["durable"]["min"], "durable_max": save["durable"]["max"],
               "save_fraction": fraction_of_limit(limit_save, save["durable"]["median"]),
               "returned_fraction": fraction_of_limit(limit_save, save["returned"]["median"]),
               "fsync_share": 1 - save["returned"]["median"] / save["durable"]["median"],
               "load": load["median"], "load_min": load["min"], "load_max": load["max"],
               "load_fraction": fraction_of_limit(limit_load, load["median"]),
               "save_memory": (r["save_memory"]["peak"] - r["save_memory"]["base"]) / r["variable_bytes"]}
        if "written" in save:
            row["written"] = save["written"]["median"]
        if "load_memory" in r:
            row["load_memory"] = (r["load_memory"]["peak"] - r["load_memory"]["base"]) / r["variable_bytes"]
        rows[fmt] = row
    return rows


def load_results(path=None):
    """The committed benchmark data: `path` if given, else benchmarks/formats.json as
    `helpers.measurements` finds it (this checkout, or the copy shipped inside the installed
    package), so no chapter needs the repository or the network for it."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' does not exist: run scripts/benchmark_formats.py --out {path}")
        return json.loads(path.read_text())
    from helpers import measurements
    return measurements.load("formats")


def main(argv=None):
    parser = argparse.ArgumentParser(description="child side of helpers.benchmark")
    parser.add_argument("side", choices=["save", "load"])
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("width", type=int)
    parser.add_argument("layers", type=int)
    parser.add_argument("folder")
    parser.add_argument("repeats", type=int, nargs="?", default=5)
    parser.add_argument("warmup", type=int, nargs="?", default=1)
    args = parser.parse_args(argv)
    if args.side == "save":
        result = save_child(args.format, args.width, args.layers, args.folder, args.repeats, args.warmup)
    else:
        result = load_child(args.format, args.width, args.layers, args.folder)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
