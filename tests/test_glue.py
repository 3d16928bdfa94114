"""helpers.glue sends exactly what myst-nb's glue sends, with or without myst-nb installed."""
import builtins
import importlib
import sys
from unittest import mock

import pytest


def captured(glue, *args, **kwargs):
    shown = []
    with mock.patch("IPython.display.display", lambda *a, **k: shown.append((a, k))), \
            mock.patch("IPython.core.display_functions.display", lambda *a, **k: shown.append((a, k))):
        glue(*args, **kwargs)
    return shown


@pytest.mark.parametrize("display", [True, False])
def test_fallback_sends_what_myst_nb_sends(display):
    import myst_nb.ext.glue as real
    real_import = builtins.__import__

    def no_myst_nb(name, *args, **kwargs):
        if name.startswith("myst_nb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    sys.modules.pop("helpers.glue", None)
    with mock.patch("builtins.__import__", no_myst_nb):
        fallback = importlib.import_module("helpers.glue")
    sys.modules.pop("helpers.glue", None)
    assert fallback.glue is not real.glue
    with mock.patch.object(real, "ipy_display", lambda *a, **k: shown.append((a, k))):
        shown = []
        real.glue("size", 17.0, display=display)
    expected = shown
    with mock.patch.object(fallback, "_display", lambda *a, **k: got.append((a, k))):
        got = []
        fallback.glue("size", 17.0, display=display)
    assert got == expected and expected
