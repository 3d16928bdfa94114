"""Test-session setup shared by the helper tests and the notebooks (nbval kernels inherit it).

Keras downloads files (`get_file`) into $KERAS_HOME/datasets. On the book's own offline machines a
prepared cache sits at ../shared/assets/keras; when KERAS_HOME is not set and that cache exists,
point KERAS_HOME at a writable copy of it, so the chapters' unchanged get_file calls find their
files. Elsewhere (a reader's machine, online) nothing changes.
"""
import os
import shutil
import tempfile
from pathlib import Path

SHARED_KERAS_CACHE = Path(__file__).resolve().parent.parent / "shared" / "assets" / "keras"

if "KERAS_HOME" not in os.environ and SHARED_KERAS_CACHE.is_dir():
    keras_home = Path(tempfile.mkdtemp(prefix="keras-home-")) / "keras"
    shutil.copytree(SHARED_KERAS_CACHE, keras_home)
    os.environ["KERAS_HOME"] = str(keras_home)
