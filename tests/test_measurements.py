"""helpers.measurements: the committed benchmark data, from this checkout and from an installed wheel."""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import measurements

ROOT = Path(__file__).resolve().parent.parent


def test_load_reads_the_committed_files():
    for path in sorted((ROOT / "benchmarks").glob("*.json")):
        assert measurements.load(path.stem) == json.loads(path.read_text())


def test_an_unknown_name_lists_the_measurements_there_are():
    with pytest.raises(FileNotFoundError, match=r"'servng'.*there are: formats, production, serving"):
        measurements.load("servng")


def test_the_wheel_ships_them_and_an_installed_package_reads_them(tmp_path):
    """What pip installs from the repository (Colab's setup cell) carries benchmarks/ as helpers/benchmarks."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "helpers", "benchmarks"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"helpers/benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.json")} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "installed")
    # -S: no site-packages, so this checkout's editable install cannot answer instead of the wheel's copy
    read = subprocess.run([sys.executable, "-S", "-c", "import json, helpers.measurements as m; "
                           "print(m.HERE); print(json.dumps(m.load('serving')))"],
                          cwd=tmp_path / "installed", capture_output=True, text=True, check=True)
    where, data = read.stdout.splitlines()
    assert Path(where) == tmp_path / "installed" / "helpers"
    assert json.loads(data) == json.loads((ROOT / "benchmarks" / "serving.json").read_text())
