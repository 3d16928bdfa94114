"""Loading a model you did not write in a child process with a time limit, a memory limit and no network.

This is what one machine can do without privileges, and what chapter 11 shows by hand first: the
child runs `python -I` (the work folder is not on `sys.path`, `PYTHON*` variables are ignored) in
the work folder, with an environment that holds none of the parent's variables (no credentials), a
fresh HOME and TMPDIR inside the work folder, `resource` limits on address space, CPU time, file
size and core dumps, and a wall-clock timeout that kills its whole process group. Network: where
Linux lets this user open a network namespace (`unshare --net --map-root-user`), the child has no
network at all; elsewhere the proxy variables point at a closed port, which stops only the clients
that honour them. The child still runs as you and can read and write every file you can: for
production use a real sandbox (nsjail, gVisor, a container with no network and a read-only root).
"""
import dataclasses
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from . import _child

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there
PROXIES_NOWHERE = {name: NOWHERE for name in (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}
PROXIES_NOWHERE.update({"NO_PROXY": "", "no_proxy": ""})
UNSHARE = [shutil.which("unshare") or "unshare", "--net", "--map-root-user"]


@functools.lru_cache(maxsize=None)
def network_isolation():
    """'namespace' if `unshare --net` works for this user here, else 'proxies only'."""
    if shutil.which("unshare") is None:
        return "proxies only"
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "proxies only"
    return "namespace" if probe.returncode == 0 else "proxies only"


@dataclasses.dataclass
class SandboxResult:
    """What a sandboxed child did: exit status, output, whether the timeout killed it, its folders."""
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    workdir: Path
    home: Path
    network: str

    @property
    def ok(self):
        return self.returncode == 0 and not self.timed_out

    @property
    def outcome(self):
        """One line: 'ok', 'timed out', 'killed by SIGKILL' or the child's final error line."""
        if self.timed_out:
            return "timed out"
        if self.returncode == 0:
            return "ok"
        if self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        return _child.last_error(self.stderr)


def _limit(memory_mb, cpu_seconds, file_mb):
    """The function the child runs before Python starts: set its `resource` limits."""
    def apply():
        for kind, value in ((resource.RLIMIT_AS, memory_mb * 2**20),
                            (resource.RLIMIT_CPU, cpu_seconds),
                            (resource.RLIMIT_FSIZE, file_mb * 2**20),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))
    return apply


def environment(home):
    """The child's whole environment: no parent variables, HOME/TMPDIR in `home`, proxies nowhere."""
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home),
            "CUDA_VISIBLE_DEVICES": "",  # a GPU driver reserves more address space than the limit
            **_child.QUIET, **PROXIES_NOWHERE}


def run_sandboxed(code, workdir, memory_mb=3072, timeout=60, file_mb=64, network=False):
    """Run Python `code` (dedented) in a limited child process in `workdir`; return a `SandboxResult`.

    `memory_mb` caps the address space (TensorFlow and Keras need about 1.6 GB to import and load a
    small model), `timeout` the wall-clock seconds, `file_mb` the size of any file it writes. CPU
    time is capped at twice `timeout` plus one second: a backstop that holds even if this process
    dies before its timer fires. `network=False` removes the network where
    `network_isolation()` says 'namespace'. A fresh HOME is made inside `workdir`.
    """
    workdir = Path(workdir)
    if not isinstance(code, str):
        raise TypeError(f"code must be Python source text, got {type(code).__name__}")
    if not workdir.is_dir():
        raise NotADirectoryError(f"sandbox work folder '{workdir}' is not a directory")
    for name, value, minimum in (("memory_mb", memory_mb, 256), ("timeout", timeout, 1),
                                 ("file_mb", file_mb, 1)):
        if not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    isolation = "network allowed" if network else network_isolation()
    prefix = UNSHARE if isolation == "namespace" else []
    process = subprocess.Popen(
        [*prefix, sys.executable, "-I", "-c", textwrap.dedent(code)], cwd=workdir,
        env=environment(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_limit(memory_mb, int(2 * timeout) + 1, file_mb), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the child and anything it started
        stdout, stderr = process.communicate()
        timed_out = True
    return SandboxResult(process.returncode, stdout, stderr, timed_out, workdir, home, isolation)
