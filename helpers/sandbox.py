"""Loading a model you did not write in a box: a child process with a time limit, a memory limit,
no network, and, where bubblewrap works, nothing of this machine's files but the system and Python.

`run_sandboxed` uses the strongest of two boundaries this machine offers, and `SandboxResult.boundary`
says which one a run had:

- "bubblewrap" (Debian's `bubblewrap` package, the `bwrap` command; used where it is installed and
  can create namespaces). The child runs in new Linux namespaces with every capability dropped.
  Its file system holds only the system (/usr and its /bin, /lib links, a few files of /etc:
  `ETC`) and Python's installation, read-only, and its work folder, read-write, as /box. Its HOME
  is a fresh folder in /box, its /tmp and /dev/shm are folders in that HOME, and everything else
  (root, /dev) is read-only: your home, your other folders and their files do not exist for it
  (a Python installed under your home is there, read-only, and nothing else of that home).
  It has no network (a loopback of its own), and its own process IDs: when the child ends or is
  killed, every process it started is killed with it, detached or not, and the box dies if this
  process dies (`--die-with-parent`). It cannot make namespaces of its own (`--disable-userns`).
  Memory: each process's address space is capped (RLIMIT_AS), and this process adds up the
  resident memory of the processes in the box's PID namespace every 0.1 s and kills the box when
  the total passes `memory_mb`. Memory that no process holds as resident memory escapes that
  count: a memfd file filled with write() is in no process's resident memory.
- "process limits only" (where bwrap is missing or cannot run). The child runs as you with the
  same per-process limits, an environment of its own, a fresh HOME and TMPDIR in the work folder,
  and no network where `unshare --net` is allowed (elsewhere the proxy variables point at a closed
  port, which stops only the clients that honour them). It can read and write every file you can
  (by absolute path; `pwd` names your real home unless the network namespace maps the child to root), a process it starts in a new session outlives
  it, and the memory limit holds for each process, not for all of them together.

In both, the run returns at the timeout whatever the child left running, and each file the child
writes is capped at `file_mb`. What the bubblewrap box still allows: reading the system's and
Python's files, writing any number of files in its work folder, starting processes (the resident
memory total and each one's address-space limit are their only caps), holding memory outside
processes (a memfd file), and every system call this kernel allows an unprivileged process (there
is no seccomp filter; the box shares this machine's kernel, so a kernel bug is a way out). For a
service that loads strangers' models, use a sandbox built for it (nsjail, gVisor, a VM).
"""
import dataclasses
import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from . import _child

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there
PROXIES_NOWHERE = {name: NOWHERE for name in (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}
PROXIES_NOWHERE.update({"NO_PROXY": "", "no_proxy": ""})
UNSHARE = [shutil.which("unshare") or "unshare", "--net", "--map-root-user"]
BOUNDARIES = ("bubblewrap", "process limits only")
BOX = "/box"  # where the work folder appears inside the bubblewrap box
SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The files of /etc a Python program reads (users, name lookup, the dynamic linker, time zone,
# fonts, public CA certificates); /etc's other files (shadow, ssh keys, ...) are not in the box.
ETC = ("passwd", "group", "nsswitch.conf", "host.conf", "hosts", "resolv.conf", "localtime",
       "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "ssl/certs")
POLL_SECONDS = 0.1


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


def python_folders():
    """The folders of this Python installation (prefixes, symlinks resolved too), outermost only."""
    folders = set()
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                 os.path.dirname(sys.executable)):
        folders.update({os.path.abspath(path), os.path.realpath(path)})
    folders.add(os.path.dirname(os.path.realpath(sys.executable)))
    outermost = []
    for folder in sorted(folders):
        if folder in ("/", "/usr") or folder.startswith("/usr/"):
            continue  # already in the box as part of the system
        if not any(folder.startswith(outer + os.sep) for outer in outermost):
            outermost.append(folder)
    return outermost


def bubblewrap_command(workdir, home, network=False):
    """The `bwrap` command line (without the program to run) for a box around `workdir`, whose
    HOME is `home`, a folder inside `workdir`: see this module's docstring for what it holds."""
    workdir, home = Path(workdir).resolve(), Path(home).resolve()
    # --disable-userns (it needs --unshare-user): no user namespace, so no PID namespace, can be
    # made inside the box, where the memory count, which reads the box's PID namespace, would miss it.
    command = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if network:
        command.append("--share-net")
    for name in SYSTEM:
        path = "/" + name
        if os.path.islink(path):  # /bin -> usr/bin on a merged-/usr system
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for name in ETC:
        command += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    command += ["--bind", str(workdir), BOX,
                "--bind", str(home / "tmp"), "/tmp",
                "--proc", "/proc", "--dev", "/dev",
                "--bind", str(home / "shm"), "/dev/shm"]
    # Python's folders after /tmp's: a Python installed under /tmp (a venv there) stays visible
    for folder in python_folders():
        command += ["--ro-bind", folder, folder]
    command += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX]
    return command


def _make_home(workdir):
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    (home / "tmp").mkdir()
    (home / "shm").mkdir()
    return home


@functools.lru_cache(maxsize=None)
def bubblewrap_problem():
    """None if a bubblewrap box runs Python here; else why not, in one line."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian and Ubuntu: apt-get install bubblewrap)"
    with tempfile.TemporaryDirectory() as folder:
        command = [*bubblewrap_command(folder, _make_home(folder)), sys.executable, "-I", "-c", "pass"]
        try:
            probe = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                   env=environment(folder), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap did not run: {error}"
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return f"bwrap failed: {lines[-1] if lines else f'exit status {probe.returncode}'}"
    return None


def strongest_boundary():
    """'bubblewrap' where it works here, else 'process limits only'."""
    return "bubblewrap" if bubblewrap_problem() is None else "process limits only"


@dataclasses.dataclass
class SandboxResult:
    """What a sandboxed child did: exit status, output, what stopped it, its boundary and folders."""
    returncode: int
    stdout: str
    stderr: str
    stopped: str  # None, "timeout" or "memory"
    workdir: Path
    home: Path
    network: str
    boundary: str
    resident_mb: int = 0  # the box's total resident memory when the memory limit stopped it

    @property
    def timed_out(self):
        return self.stopped == "timeout"

    @property
    def ok(self):
        return self.returncode == 0 and self.stopped is None

    @property
    def outcome(self):
        """One line: 'ok', 'timed out', 'over the memory limit', 'killed by SIGKILL' or the child's
        final error line."""
        if self.stopped == "timeout":
            return "timed out"
        if self.stopped == "memory":
            return "over the memory limit"
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
    """The child's whole environment, none of it from this process: PATH, LANG, HOME and TMPDIR
    (`home`), proxies pointing nowhere, TensorFlow's C++ log level 3 and no GPU."""
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home),
            "CUDA_VISIBLE_DEVICES": "",  # a GPU driver reserves more address space than the limit
            **_child.QUIET, **PROXIES_NOWHERE}


def _namespace_processes(namespace):
    """Host PIDs of the live processes in PID namespace `namespace` (an inode number); a zombie,
    ended and waiting for its parent to collect its exit status, holds no memory and is left out."""
    link, pids = f"pid:[{namespace}]", []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == link:
                    with open(f"/proc/{name}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(name)
            except (OSError, IndexError):  # ended meanwhile, or not ours to look at
                pass
    return pids


def _resident_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * resource.getpagesize()
        except (OSError, IndexError, ValueError):
            pass
    return total


def _read_info(fd):
    """bwrap's --info-fd JSON (its namespaces), written once the box is set up; {} if it failed."""
    data, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:  # bwrap ended before the box was set up
                    return {}
                data += chunk
                try:
                    return json.loads(data)
                except ValueError:  # not all of it yet
                    pass
        return {}
    finally:
        os.close(fd)


def run_sandboxed(code, workdir, memory_mb=3072, timeout=60, file_mb=64, network=False,
                  boundary=None):
    """Run Python `code` (dedented) in a box around `workdir`; return a `SandboxResult`.

    `boundary` is "bubblewrap", "process limits only", or None for the strongest this machine
    offers (`strongest_boundary()`); asking for "bubblewrap" where it does not work raises
    `RuntimeError` with the reason. `memory_mb` caps each process's address space (TensorFlow and
    Keras need over 1 GB of it to import and load a small model) and, with bubblewrap, the
    resident memory of the box's processes together (a poll: memory held outside processes, such
    as a memfd file's, escapes it). `timeout` is the wall-clock limit in
    seconds; CPU time is capped at twice `timeout` plus one second per process, a backstop that
    holds even if this process dies before its timer fires. `file_mb` caps the size of each file
    written. `network=False` removes the network (see the module docstring for where it cannot).
    A fresh HOME is made inside `workdir`.
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
    if boundary is None:
        boundary = strongest_boundary()
    elif boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES} or None, got {boundary!r}")
    elif boundary == "bubblewrap" and bubblewrap_problem():
        raise RuntimeError(f"bubblewrap is not available here: {bubblewrap_problem()}")
    home = _make_home(workdir)
    program = [sys.executable, "-I", "-c", textwrap.dedent(code)]
    pass_fds = ()
    if boundary == "bubblewrap":
        isolation = "network allowed" if network else "namespace"
        info_read, info_write = os.pipe()
        command = [*bubblewrap_command(workdir, home, network), "--info-fd", str(info_write), *program]
        env = environment(Path(BOX) / home.name) | {"TMPDIR": "/tmp"}
        pass_fds = (info_write,)
    else:
        isolation = "network allowed" if network else network_isolation()
        command = [*(UNSHARE if isolation == "namespace" else []), *program]
        env = environment(home)
    # Output goes to files, not pipes: a process the child leaves running cannot hold the return.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            preexec_fn=_limit(memory_mb, int(2 * timeout) + 1, file_mb), start_new_session=True,
            pass_fds=pass_fds)
        namespace = None
        if pass_fds:
            os.close(info_write)
            namespace = _read_info(info_read).get("pid-namespace")
        stopped, resident, deadline = None, 0, time.monotonic() + timeout
        # Not reaped while it runs (WNOWAIT): its PID, the group's ID, is not reused before killpg.
        while not os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() >= deadline:
                stopped = "timeout"
                break
            if namespace is not None:
                resident = _resident_bytes(_namespace_processes(namespace))
                if resident > memory_mb * 2**20:
                    stopped = "memory"
                    break
            time.sleep(POLL_SECONDS)
        try:  # the child's process group: the whole box with bubblewrap, else what is left of it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        give_up = time.monotonic() + 10
        while namespace is not None and _namespace_processes(namespace) and time.monotonic() < give_up:
            time.sleep(0.01)  # the kernel is killing the box's last processes
        out.seek(0), err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    returncode = process.returncode
    if boundary == "bubblewrap" and returncode > 128:  # bwrap, like a shell, exits with 128 + N
        returncode = 128 - returncode                   # when its child dies of signal N
    return SandboxResult(returncode, stdout, stderr, stopped, workdir, home, isolation, boundary,
                         round(resident / 2**20) if stopped == "memory" else 0)
