"""helpers._child: the one way the helpers run a CLI or Python code in a child process."""
import json
import os
import sys
from pathlib import Path

import pytest

from helpers import _child
from helpers._child import last_error, run, run_python


def test_environment_is_this_one_plus_the_callers_extras_only(monkeypatch):
    """Nothing behind the reader's back: the child gets exactly os.environ plus `env`."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    result = run_python("""
        import json, os
        print(json.dumps(dict(os.environ)))
    """, env={"BOOK_EXTRA": "yes"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**os.environ, "BOOK_EXTRA": "yes"}


def test_package_env_is_quiet_and_finds_the_helpers():
    """The one helper that adds TF_CPP_MIN_LOG_LEVEL says so in its name's docstring and here."""
    env = _child.package_env()
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(_child.__file__).resolve().parent.parent)


def test_arguments_are_passed_as_text():
    result = run([sys.executable, "-c", "import sys; print(sys.argv[1:])", 1, 2.5])
    assert result.stdout == "['1', '2.5']\n"


def test_a_string_command_is_refused():
    with pytest.raises(TypeError, match="non-empty list"):
        run("python -c 'print(1)'")


def test_timeout_names_the_command():
    with pytest.raises(RuntimeError, match=r"^python -c \.\.\. did not finish within 1 s$"):
        run_python("import time; time.sleep(30)", timeout=1)


def test_failure_reports_the_final_error_line():
    result = run_python("""
        def inner():
            raise ValueError("the shapes differ:\\nmore detail")
        inner()
    """)
    assert result.returncode == 1
    assert last_error(result.stderr) == "ValueError: the shapes differ: more detail."


@pytest.mark.parametrize("stderr, expected", [
    ("Traceback...\ntensorflow.python.framework.errors_impl.FailedPreconditionError: "
     "Graph execution error:\n\nCould not find variable x/y. This could mean more.\n",
     "FailedPreconditionError: Graph execution error: Could not find variable x/y."),
    ("Traceback...\ntensorflow.python.framework.errors_impl.NotFoundError: file a.b. missing\n",
     "NotFoundError: file a.b. missing"),
    ("W0000 noise\nLLVM ERROR: Failed to infer result type(s).\n", "LLVM ERROR: Failed to infer result type(s)."),
    ("usage: saved_model_cli.py run [-h]\n    [--dir DIR]\nsaved_model_cli.py run: error: flag "
     "--signature_def=None: Flag --signature_def must have a value other than None.\n",
     "saved_model_cli.py run: error: flag --signature_def=None: Flag --signature_def must have a "
     "value other than None."),
    ("some warning\nthe last line\n", "the last line"),
    ("", "no message"),
])
def test_last_error(stderr, expected):
    assert last_error(stderr) == expected


def test_the_three_callers_use_it():
    """saved_model_cli, convert_saved_model and run_with_legacy_keras build no subprocess of their own."""
    import inspect

    from helpers import legacy, litert, savedmodel
    for module in (savedmodel, litert, legacy):
        source = inspect.getsource(module)
        assert "subprocess" not in source and "_child.run" in source, module.__name__
