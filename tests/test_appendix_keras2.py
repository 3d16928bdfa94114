"""The Keras 2 appendix types the study note's Net in its legacy-Keras code: keep it helpers.toy.Net."""
import ast
import inspect
import textwrap
from pathlib import Path

import nbformat

from helpers.toy import Net

APPENDIX = Path(__file__).resolve().parent.parent / "notebooks" / "appendix_keras2.ipynb"


def legacy_nets():
    """The `ast` dump of every `class Net` in the code strings the appendix runs under tf_keras."""
    found = []
    for cell in nbformat.read(APPENDIX, as_version=4).cells:
        if cell.cell_type != "code" or "run_with_legacy_keras(" not in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run_with_legacy_keras":
                code = textwrap.dedent(node.args[0].value)
                found += [ast.dump(n) for n in ast.parse(code).body
                          if isinstance(n, ast.ClassDef) and n.name == "Net"]
    return found


def test_legacy_net_is_the_book_net_without_build():
    tree = ast.parse(inspect.getsource(Net))
    tree.body[0].body = [n for n in tree.body[0].body
                         if not (isinstance(n, ast.FunctionDef) and n.name == "build")]
    expected = ast.dump(tree.body[0])
    nets = legacy_nets()
    assert len(nets) == 2, "the appendix types Net in two legacy-Keras cells"
    assert all(net == expected for net in nets), "the appendix's legacy Net differs from helpers.toy.Net"


def test_the_install_advice_pins_tf_keras_to_the_installed_tensorflow(monkeypatch):
    """Colab runs TensorFlow 2.19 with tf-keras 2.19: the advice follows TensorFlow's minor version."""
    import importlib.metadata
    import importlib.util

    import pytest
    import tensorflow as tf

    from helpers import legacy

    assert legacy.tf_keras_install_command("2.19.0") == "pip install --no-deps 'tf-keras==2.19.*'"
    here = legacy.tf_keras_install_command()
    assert here == f"pip install --no-deps 'tf-keras=={'.'.join(tf.__version__.split('.')[:2])}.*'"
    installed = importlib.metadata.version("tf-keras")  # the advice matches what this book installs
    assert here.endswith(f"=={'.'.join(installed.split('.')[:2])}.*'")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"not installed: pip install --no-deps 'tf-keras==\d+\.\d+\.\*'"):
        legacy.run_with_legacy_keras("print(1)")
