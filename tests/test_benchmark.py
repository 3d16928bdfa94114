"""helpers.benchmark on a tiny model, so the chapter-9 benchmark cannot rot; and the committed data."""
import gc
import json
import time
from pathlib import Path

import pytest

from helpers import benchmark

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "formats.json"


def test_repeat_drops_warmup_runs_setup_untimed_and_keeps_gc_on():
    calls, gc_on = [], []

    def setup():
        calls.append("setup")
        time.sleep(0.05)  # not timed

    def stmt():
        calls.append("run")
        gc_on.append(gc.isenabled())

    times = benchmark.repeat(stmt, setup, repeats=3, warmup=2)
    assert calls == ["setup", "run"] * 5
    assert len(times) == 3 and all(t < 0.05 for t in times)
    assert all(gc_on)


def test_repeat_rejects_no_repeats():
    with pytest.raises(ValueError, match="need repeats >= 1"):
        benchmark.repeat(lambda: None, repeats=0)


def test_drop_cache_evicts_the_pages_that_a_read_brought_in(tmp_path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 300_000)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"y" * 100_000)
    benchmark.fsync_tree(folder)
    for f in benchmark.files_under(folder):
        f.read_bytes()
    assert benchmark.resident_fraction(folder) == 1.0
    benchmark.drop_cache(folder)
    assert benchmark.resident_fraction(folder) == 0.0


def test_files_under_names_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing' does not exist"):
        benchmark.files_under(tmp_path / "nothing")


def test_raw_file_end_to_end_in_child_processes(tmp_path):
    result = benchmark.measure("raw file", 32, 2, tmp_path / "raw", repeats=2, warmup=1)
    assert result["bytes"] == result["variable_bytes"] == benchmark.variable_bytes(32, 2) == 8448
    save = result["save"]
    assert len(save["durable"]["samples"]) == 2
    assert save["returned"]["median"] <= save["durable"]["median"]
    assert result["load"]["median"] > 0
    warm = benchmark.measure_warm_read(32, 2, tmp_path / "raw", repeats=2, warmup=0)
    assert len(warm["samples"]) == 2


def test_saves_and_loads_check_each_other(tmp_path):
    import numpy as np
    folder = tmp_path / "h5"
    saved = benchmark.save_child(".weights.h5", 16, 2, folder, repeats=2, warmup=1)
    assert [f.name for f in benchmark.files_under(folder)] == ["model.weights.h5"]
    assert len(saved["durable"]) == len(saved["returned"]) == 2
    assert all(r <= d for r, d in zip(saved["returned"], saved["durable"]))
    assert saved["memory_peak"] >= saved["memory_base"] > 0
    loaded = benchmark.load_child(".weights.h5", 16, 2, folder)
    np.testing.assert_allclose(loaded["output"], saved["output"], rtol=1e-6)
    assert loaded["output"] != [0.0] * 8  # the zero-initialised model really was overwritten


def test_async_checkpoint_reports_blocking_written_and_durable(tmp_path):
    saved = benchmark.save_child("Checkpoint.write async", 16, 2, tmp_path / "a", repeats=2, warmup=1)
    for returned, written, durable in zip(saved["returned"], saved["written"], saved["durable"]):
        assert returned <= written <= durable
    assert sorted(f.name for f in benchmark.files_under(tmp_path / "a")) == [
        "ckpt.data-00000-of-00001", "ckpt.index"]


def test_summary_compares_each_format_with_the_raw_file():
    def entry(returned, durable, load, nbytes=200):
        stats = lambda t: {"median": t, "min": t, "max": t, "samples": [t]}  # noqa: E731
        return {"bytes": nbytes, "variable_bytes": 100, "save": {"returned": stats(returned),
                "durable": stats(durable)}, "load": stats(load),
                "save_memory": {"base": 0, "peak": 300}, "load_memory": {"base": 0, "peak": 50}}
    size = {"formats": {"raw file": entry(0.1, 1.0, 0.5, 100), "Checkpoint.write": entry(0.5, 2.0, 2.0)}}
    size["formats"]["Checkpoint.write async"] = entry(0.2, 4.0, 0)
    del size["formats"]["Checkpoint.write async"]["load"]
    rows = benchmark.summary(size)
    ckpt = rows["Checkpoint.write"]
    assert ckpt["save_fraction"] == 0.5 and ckpt["returned_fraction"] == 2.0
    assert ckpt["load_fraction"] == 0.25 and ckpt["size_ratio"] == 2.0 and ckpt["fsync_share"] == 0.75
    assert ckpt["save_memory"] == 3.0 and ckpt["load_memory"] == 0.5
    assert rows["Checkpoint.write async"]["load"] == 2.0  # the files of the sync checkpoint
    assert rows["raw file"]["save_fraction"] == 1.0


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown format 'pickle'"):
        benchmark.measure("pickle", 8, 1, "unused")


def test_committed_data_covers_every_format_at_three_sizes_up_to_a_gigabyte():
    data = json.loads(DATA.read_text())
    sizes = data["sizes"]
    assert len(sizes) >= 3 and max(s["variable_bytes"] for s in sizes) >= 1e9
    assert data["method"]["repeats"] >= 5 and data["method"]["warmup"] >= 1
    for size in sizes:
        assert set(size["formats"]) == set(benchmark.FORMATS), size["width"]
        for fmt, r in size["formats"].items():
            assert len(r["save"]["durable"]["samples"]) == data["method"]["repeats"], fmt
            assert ("load" in r) == (fmt not in benchmark.SAME_FILES_AS), fmt


def test_load_results_reads_the_shipped_measurements_without_the_network(tmp_path, monkeypatch):
    """Chapters 9 and 12 read benchmarks/formats.json through helpers.measurements (package data):
    no repository checkout and no download is needed."""
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("load_results went to the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert benchmark.load_results() == json.loads(DATA.read_text())
    other = tmp_path / "mine.json"
    other.write_text('{"sizes": []}')
    assert benchmark.load_results(other) == {"sizes": []}
    with pytest.raises(FileNotFoundError, match="nothing.json' does not exist"):
        benchmark.load_results(tmp_path / "nothing.json")


def test_resident_memory_sees_pages_that_are_touched():
    import numpy as np
    before = benchmark.resident_memory()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page written
    assert benchmark.resident_memory() - before > 48 * 2**20
    assert benchmark.peak_memory() >= benchmark.resident_memory()
    del block


def test_an_installed_package_reads_its_own_copy_of_the_data(tmp_path):
    """As pip installs it (helpers/ with benchmarks/ inside, no checkout around it), load_results
    still finds formats.json: the copy the wheel ships (pyproject.toml's package data)."""
    import shutil
    import subprocess
    import sys
    root = DATA.parent.parent
    installed = tmp_path / "site" / "helpers"
    shutil.copytree(root / "helpers", installed, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "benchmarks", installed / "benchmarks")
    # -S: no site-packages, so this checkout's own install cannot answer instead of the copy
    read = subprocess.run([sys.executable, "-S", "-c", "import json; from helpers import benchmark; "
                           "print(json.dumps(benchmark.load_results()))"],
                          cwd=tmp_path / "site", capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr[-500:]
    assert json.loads(read.stdout) == json.loads(DATA.read_text())


def test_measure_checks_the_warmup_load_output_too(tmp_path, monkeypatch):
    """A warm-up load that gives another output is an error, though its time is thrown away."""
    answers = iter([{"bytes": 1, "files": 1, "returned": [0.1], "durable": [0.2], "memory_base": 1,
                     "memory_peak": 2, "output": [1.0] * 8},
                    {"seconds": 0.1, "memory_base": 1, "memory_peak": 2, "output": [9.0] * 8},  # warm-up
                    {"seconds": 0.1, "memory_base": 1, "memory_peak": 2, "output": [1.0] * 8}])
    monkeypatch.setattr(benchmark, "run_child", lambda args: next(answers))
    with pytest.raises(AssertionError, match=r"\.weights\.h5: loaded model gives \[9\.0"):
        benchmark.measure(".weights.h5", 8, 1, tmp_path, repeats=1, warmup=1, cold=False)
