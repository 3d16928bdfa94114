"""Running a command line or Python code in a child process that runs to completion.

`saved_model_cli` (a separate program), legacy Keras (which must be chosen before TensorFlow is
imported) and the LiteRT converter (which can abort the whole process) run their child through `run`,
each with its own time limit, and report a failure the same way: the final `SomeError: message` of the
child's traceback (`last_error`). The sandbox starts its child itself but reports with `last_error`
and adds `QUIET`; the formats benchmark borrows `package_env`. Helpers that keep a child running
(servers, clusters, the trainer chapter 10 kills) start it with `subprocess.Popen` themselves. `run`
gives the child this process's environment plus exactly the variables its caller names, nothing
else, so a helper runs what its page says it runs. TensorFlow's start-up log lines go to the
child's stderr, which `run` captures and the helpers print only as that final error line.
"""
import os
import subprocess
import sys
import textwrap

# TensorFlow's C++ log level 3: hides its INFO/WARNING/ERROR lines, though not the absl and oneDNN
# lines printed at start-up. Only `package_env` (and callers that name it) add it; `run` does not.
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def package_env():
    """This environment plus `QUIET` (TF_CPP_MIN_LOG_LEVEL=3), with the book's package folder first
    on PYTHONPATH, so a child run as `python -m helpers.X` imports these helpers from any working
    folder and its captured stderr is not filled with TensorFlow's C++ log lines."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, **QUIET, "PYTHONPATH": os.pathsep.join(path)}


def run(args, env=None, timeout=600):
    """Run `args` with this environment plus `env` (nothing else); return the `CompletedProcess`.

    Output is captured as text; a child still running after `timeout` seconds is killed and
    reported as a `RuntimeError` naming the command.
    """
    if isinstance(args, str) or not args:
        raise TypeError(f"args must be a non-empty list of program and arguments, got {args!r}")
    args = [str(arg) for arg in args]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{describe(args)} did not finish within {timeout} s") from None


def run_python(code, env=None, timeout=600):
    """Run `code` (dedented) with this notebook's Python interpreter, as `run` does."""
    return run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout)


def describe(args):
    """A short name for a command line in messages: `python -c ...` instead of the whole program."""
    if len(args) > 2 and args[1] == "-c":
        return "python -c ..."
    return " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(args))


def last_error(stderr):
    """The final `SomeError: message` of a traceback in `stderr` (joined with the message's first
    line if the error line ends with ':'), else the last line, else 'no message'."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        head = lines[i].split(":")[0]
        if "Error" in head or head.endswith("ERROR"):
            text = head.rsplit(".", 1)[-1] + lines[i][len(head):]  # no module path before the name
            if text.endswith(":") and i + 1 < len(lines):
                text += " " + lines[i + 1].split(". ")[0].rstrip(".") + "."
            return text
    return lines[-1] if lines else "no message"
