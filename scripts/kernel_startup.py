"""Start-up of every kernel that stores or checks the book's outputs.

`scripts/execute_notebooks.py` and the tests (nbval) point PYTHONSTARTUP at this file, so the
stored outputs and the re-run outputs come from kernels set up the same way, and no chapter has to
carry this in a cell. A reader who runs a notebook by hand does not run it and sees TensorFlow's
ordinary output: warnings with the path of the library file, full tracebacks, files written next
to the notebook.
"""
import logging
import os
import tempfile
import warnings

# The chapters write relative paths: work in a scratch folder, never next to the notebook. It lives
# under the kernel's TMPDIR, which the runner removes when the run ends (a kernel stopped by nbval
# is killed, so its own exit handlers cannot be relied on to clean up).
os.chdir(tempfile.mkdtemp(prefix="chapter-"))

# "UserWarning: message" instead of "/site-packages/.../file.py:123: UserWarning: message".
warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"

# TensorFlow's Python logger writes to stderr and also propagates to the root logger, which
# IPython shows as a second copy: keep one.
logging.getLogger("tensorflow").propagate = False

# Errors that several cells raise on purpose print their message, not the library's internals.
get_ipython().run_line_magic("xmode", "Minimal")  # noqa: F821 (IPython defines get_ipython)
