"""helpers.colab: the constraints pip gets in a chapter's first cell, and what the installer reports."""
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import colab

ROOT = Path(__file__).resolve().parent.parent

PIP_RESOLUTION_IMPOSSIBLE = """\
ERROR: Cannot install onnx==1.23.2 because these package versions have conflicting dependencies.

The conflict is caused by:
    onnx 1.23.2 depends on protobuf>=6.0
    The user requested (constraint) protobuf<6.0.0dev,>=3.20.3

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def fake_distribution(site, name, version, requires=(), extras=()):
    """A minimal installed distribution (.dist-info with METADATA) in the folder `site`."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Provides-Extra: {extra}" for extra in extras]
    lines += [f"Requires-Dist: {line}" for line in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder searched first for distributions, like a site-packages holding fakes."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


TF_REQUIRES = [
    "protobuf!=4.21.0,<6.0.0dev,>=3.20.3",
    "numpy<2.2.0,>=1.26.0",
    "keras>=3.5.0",
    "packaging",                                            # no version: nothing to constrain
    "tensorflow-intel==2.19.0 ; platform_system == \"Never\"",  # marker false here
    "nvidia-cublas-cu12==12.5.3.2 ; extra == 'and-cuda'",   # an extra: not installed with TF
    "psutil<9",
]


def test_requirements_of_keeps_only_what_applies_here(site):
    fake_distribution(site, "faketf", "2.19.0", TF_REQUIRES)
    tf = importlib.metadata.distribution("faketf")
    names = [r.name for r in colab.requirements_of(tf)]
    assert names == ["protobuf", "numpy", "keras", "packaging", "psutil"]
    assert [r.name for r in colab.requirements_of(tf, extra="and-cuda")] == ["nvidia-cublas-cu12"]


def test_constraints_pin_tensorflow_keep_its_ranges_and_pin_what_is_imported(site):
    fake_distribution(site, "faketf", "2.19.0", TF_REQUIRES)
    fake_distribution(site, "psutil", "5.9.5")
    fake_distribution(site, "numpy", "2.1.3")
    fake_distribution(site, "protobuf", "5.29.6")
    fake_distribution(site, "keras", "3.13.2")
    fake_distribution(site, "grpcio-status", "1.71.2", ["protobuf<6.0dev,>=5.26.1"])
    fake_distribution(site, "numba", "0.61.2", ["numpy<2.3,>=1.24", "llvmlite<0.45,>=0.44"])  # llvmlite absent
    fake_distribution(site, "stale", "1.0", ["numpy<2.0"])  # already unmet here: it constrains nothing
    installed = list(importlib.metadata.distributions(path=[str(site)]))
    packages = {"tensorflow": ["faketf"], "psutil": ["psutil"], "helpers": [colab.DISTRIBUTION]}
    lines = colab.constraints(modules={"psutil": None, "psutil._pslinux": None, "helpers": None},
                              packages=packages, distributions=installed)
    # psutil: imported, so pinned where it is, not merely kept below 9 as TensorFlow asks
    assert lines == ["faketf==2.19.0", "keras>=3.5.0", "numpy<2.2.0,>=1.26.0,<2.3,>=1.24",
                     "protobuf!=4.21.0,<6.0.0dev,>=3.20.3,<6.0dev,>=5.26.1", "psutil==5.9.5"]


def test_tensorflow_without_a_protobuf_cap_is_held_by_the_packages_that_cap_it(site):
    """TensorFlow 2.20 asks protobuf>=5.28.0 only; Colab's grpcio-status keeps it below 6."""
    fake_distribution(site, "faketf", "2.20.0", ["protobuf>=5.28.0"])
    fake_distribution(site, "protobuf", "5.29.6")
    fake_distribution(site, "grpcio-status", "1.71.2", ["protobuf<6.0dev,>=5.26.1"])
    installed = list(importlib.metadata.distributions(path=[str(site)]))
    lines = colab.constraints(modules={}, packages={"tensorflow": ["faketf"]}, distributions=installed)
    assert lines == ["faketf==2.20.0", "protobuf>=5.28.0,<6.0dev,>=5.26.1"]


def test_constraints_without_tensorflow_say_so(site):
    with pytest.raises(RuntimeError, match="TensorFlow is not installed"):
        colab.constraints(modules={}, packages={})


def test_book_requirements_are_the_tested_keras_and_the_extras(site, monkeypatch):
    fake_distribution(site, "fakebook", "0.1.0", extras=["tested-keras", "onnx", "litert"], requires=[
        "numpy", 'keras==3.15.1; extra == "tested-keras"', 'tf2onnx; extra == "onnx"',
        'onnxruntime>=1.20; extra == "onnx"', 'ai-edge-litert; extra == "litert"'])
    monkeypatch.setattr(colab, "DISTRIBUTION", "fakebook")
    assert colab.book_requirements() == ["keras==3.15.1"]
    assert colab.book_requirements("onnx") == ["keras==3.15.1", "tf2onnx", "onnxruntime>=1.20"]
    with pytest.raises(ValueError, match="no extra 'serving'.*litert, onnx, tested-keras"):
        colab.book_requirements("serving")


def test_the_tested_keras_is_the_keras_of_requirements_txt():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = re.search(r"^keras==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert extras[colab.TESTED_KERAS_EXTRA] == [f"keras=={pinned}"]


def test_what_changed_is_one_line():
    before = {"keras": "3.13.2", "numpy": "2.1.3", "psutil": "5.9.5"}
    after = {"keras": "3.15.1", "numpy": "2.1.3", "onnx": "1.22.0", "tf2onnx": "1.17.0"}
    assert colab.what_changed(before, after) == \
        "keras 3.13.2 -> 3.15.1; added onnx 1.22.0, tf2onnx 1.17.0; removed psutil"
    assert colab.what_changed(before, before) == "nothing changed"
    many = {**before, **{f"p{i}": "1" for i in range(9)}}
    assert colab.what_changed(before, many, limit=2) == "added p0 1, p1 1 and 7 more"


@pytest.fixture
def book(site, monkeypatch):
    """A fake installed book and TensorFlow, so the installer runs without touching this environment."""
    fake_distribution(site, "fakebook", "0.1.0", extras=["tested-keras"],
                      requires=['keras==3.15.1; extra == "tested-keras"'])
    fake_distribution(site, "faketf", "2.19.0", TF_REQUIRES)
    monkeypatch.setattr(colab, "DISTRIBUTION", "fakebook")
    monkeypatch.setattr(colab.importlib.metadata, "packages_distributions", lambda: {"tensorflow": ["faketf"]})
    monkeypatch.delitem(sys.modules, "keras", raising=False)


def test_installer_hands_pip_the_constraints_and_names_the_conflict(book):
    seen = {}

    def pip(command, **kwargs):
        seen["command"] = command
        seen["constraints"] = Path(command[command.index("--constraint") + 1]).read_text()
        return subprocess.CompletedProcess(command, 1, "", PIP_RESOLUTION_IMPOSSIBLE)

    with pytest.raises(RuntimeError) as error:
        colab.install_tested_keras(run=pip)
    assert seen["command"][:4] == [sys.executable, "-m", "pip", "install"]
    assert seen["command"][-1] == "keras==3.15.1" and "--progress-bar" in seen["command"]
    assert "faketf==2.19.0\n" in seen["constraints"] and "protobuf!=4.21.0,<6.0.0dev" in seen["constraints"]
    message = str(error.value)
    assert message.startswith("pip could not install keras==3.15.1 without moving")
    assert "onnx 1.23.2 depends on protobuf>=6.0" in message
    assert "The user requested (constraint) protobuf<6.0.0dev,>=3.20.3" in message
    assert "loosen the range" not in message


def test_installer_prints_one_line_and_shows_pip_warnings(book, capsys):
    def pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, "", "ERROR: pip's dependency resolver does not currently "
                                           "take into account all the packages that are installed. This "
                                           "behaviour is the source of the following dependency conflicts.\n"
                                           "keras-hub 0.26.0 requires keras>=3.16, but you have keras 3.15.1 "
                                           "which is incompatible.\n")
    colab.install_tested_keras(run=pip)
    out, err = capsys.readouterr()
    assert re.fullmatch(r"Installed in \d+ s: nothing changed\n", out)
    assert "keras-hub 0.26.0 requires keras>=3.16, but you have keras 3.15.1" in err


def test_installer_refuses_when_keras_is_already_imported(book, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", object())
    monkeypatch.setattr(colab.importlib.metadata, "version", lambda name: "3.13.2")
    with pytest.raises(RuntimeError, match="Keras 3.13.2 is already imported.*restart the runtime"):
        colab.install_tested_keras(run=lambda *a, **k: pytest.fail("pip must not run"))


@pytest.fixture
def serve_book(site, monkeypatch):
    """A fake book whose production extra asks for a package installed alone first (as kserve is)."""
    fake_distribution(site, "fakebook", "0.1.0", extras=["tested-keras", "production"], requires=[
        'keras==3.15.1; extra == "tested-keras"', 'fakeserve; extra == "production"'])
    fake_distribution(site, "faketf", "2.20.0", ["protobuf>=5.28.0"])
    fake_distribution(site, "psutil", "5.9.5")
    monkeypatch.setattr(colab, "DISTRIBUTION", "fakebook")
    monkeypatch.setattr(colab.importlib.metadata, "packages_distributions", lambda: {"tensorflow": ["faketf"]})
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    # the same rule under another name: this environment has a real kserve
    monkeypatch.setattr(colab, "WITHOUT_DEPENDENCIES", {"fakeserve": colab.WITHOUT_DEPENDENCIES["kserve"]})
    calls = []

    def pip(command, **kwargs):
        calls.append((("--no-deps" in command), command[command.index("--constraint") + 2:]))
        if len(calls) == 1:  # fakeserve alone, as pip would install it
            fake_distribution(site, "fakeserve", "0.21.0", ["protobuf<7.0.0,>=6.33.5", "psutil<6.0.0,>=5.9.6",
                                                         "fastapi<1.0.0,>=0.115.3", "uvicorn[standard]>=0.30.6"])
            return subprocess.CompletedProcess(command, 0, "", "")
        return subprocess.CompletedProcess(command, 0, "", (
            "ERROR: pip's dependency resolver does not currently take into account all the packages that are "
            "installed. This behaviour is the source of the following dependency conflicts.\n"
            "fakeserve 0.21.0 requires protobuf<7.0.0,>=6.33.5, but you have protobuf 5.29.6 which is incompatible.\n"
            "fakeserve 0.21.0 requires psutil<6.0.0,>=5.9.6, but you have psutil 5.9.5 which is incompatible.\n"))
    return site, pip, calls


def test_kserve_goes_in_alone_then_without_what_colab_holds_lower(serve_book, capsys):
    """Colab: kserve 0.21 asks protobuf>=6.33.5 and psutil>=5.9.6, which Colab's runtime holds lower."""
    site, pip, calls = serve_book
    fake_distribution(site, "protobuf", "5.29.6")
    colab.install_tested_keras("production", run=pip)
    assert calls == [(True, ["fakeserve"]),
                     (False, ["keras==3.15.1", "fastapi<1.0.0,>=0.115.3", "uvicorn[standard]>=0.30.6"])]
    out, err = capsys.readouterr()
    assert out.rstrip().endswith("added fakeserve 0.21.0; without its requirements protobuf<7.0.0,>=6.33.5, "
                                 "psutil<6.0.0,>=5.9.6 (this runtime keeps its own)")
    assert err == ""  # pip's complaint about exactly those two requirements is expected, not shown


def test_a_requirement_the_runtime_already_meets_is_kept(serve_book, capsys):
    """The book's own stack: protobuf 6.33 meets kserve's range, so it stays a requirement."""
    site, pip, calls = serve_book
    fake_distribution(site, "protobuf", "6.33.6")
    colab.install_tested_keras("production", run=pip)
    assert calls[1] == (False, ["keras==3.15.1", "protobuf<7.0.0,>=6.33.5", "fastapi<1.0.0,>=0.115.3",
                                "uvicorn[standard]>=0.30.6"])
    assert "without its requirements psutil<6.0.0,>=5.9.6 (this runtime" in capsys.readouterr().out


def test_a_conflict_without_a_no_dependencies_package_is_not_retried(book):
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", PIP_RESOLUTION_IMPOSSIBLE)

    with pytest.raises(RuntimeError, match="onnx 1.23.2 depends on protobuf>=6.0"):
        colab.install_tested_keras(run=pip)
    assert len(calls) == 1


def test_a_requirement_on_an_imported_distribution_is_left_out_too(serve_book, monkeypatch, capsys):
    """Were Pillow imported at kernel start, kserve's pillow>=12.3 could not take effect without a restart."""
    site, pip, calls = serve_book
    fake_distribution(site, "protobuf", "6.33.6")
    fake_distribution(site, "pillow", "11.3.0")
    (site / "fakepil").mkdir()
    monkeypatch.setattr(colab.importlib.metadata, "packages_distributions",
                        lambda: {"tensorflow": ["faketf"], "fakepil": ["pillow"]})
    monkeypatch.setitem(sys.modules, "fakepil", object())

    def pip_with_pillow(command, **kwargs):
        result = pip(command, **kwargs)
        if len(calls) == 1:
            info = next(site.glob("fakeserve-0.21.0.dist-info"))
            (info / "METADATA").write_text((info / "METADATA").read_text() + "Requires-Dist: pillow>=12.3.0\n")
        return result
    colab.install_tested_keras("production", run=pip_with_pillow)
    assert "pillow>=12.3.0" not in calls[1][1]
    assert "without its requirements psutil<6.0.0,>=5.9.6, pillow>=12.3.0 (this runtime" in capsys.readouterr().out
