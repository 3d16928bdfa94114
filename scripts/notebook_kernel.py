"""The environment of the kernels that store (scripts/execute_notebooks.py) or check (pytest) outputs.

One place for both, so a stored output and its re-run come from the same set-up:
- PYTHONSTARTUP runs `kernel_startup.py` (working folder, warning format, `%xmode`);
- TMPDIR is a folder of this run, removed when the run ends, so no chapter leaves files behind;
- KERAS_HOME: on the book's offline machines a prepared Keras download cache sits in
  ../shared/assets (`keras/`: the guide's image and labels; `keras-imagenet/`: the ImageNet
  MobileNet weights). Where KERAS_HOME is not set and that cache exists, a writable copy of both is
  used, so the chapters' unchanged `get_file` and `weights="imagenet"` calls find their files.
  Elsewhere (a reader's machine, online) KERAS_HOME is left alone.
"""
import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP = Path(__file__).resolve().with_name("kernel_startup.py")
SHARED_KERAS_CACHES = [ROOT.parent / "shared" / "assets" / name for name in ("keras", "keras-imagenet")]


def _writable_copy(sources, destination):
    for source in sources:
        shutil.copytree(source, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
    for path in [destination, *destination.rglob("*")]:  # the shared copy may be read-only
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def prepare_environment():
    """Set PYTHONSTARTUP, TMPDIR and (offline) KERAS_HOME in os.environ, for kernels started later."""
    run_dir = Path(tempfile.mkdtemp(prefix="book-run-"))
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    os.environ["PYTHONSTARTUP"] = str(STARTUP)
    kernel_tmp = run_dir / "tmp"
    kernel_tmp.mkdir()
    os.environ["TMPDIR"] = str(kernel_tmp)
    caches = [path for path in SHARED_KERAS_CACHES if path.is_dir()]
    if "KERAS_HOME" not in os.environ and caches:
        keras_home = run_dir / "keras"
        _writable_copy(caches, keras_home)
        os.environ["KERAS_HOME"] = str(keras_home)
    return run_dir
