"""helpers.sandbox: each limit stops what it should, and the child touches nothing outside its folder.

Chapter 11's canary cells assert the rest, for both boundaries: an absolute-path write, the home
that `pwd` names, detached processes, a child that never exits, a nested namespace, memfd files
and three children under the per-process memory limit. Without bubblewrap the tests that need it are skipped, except in CI,
where they fail."""
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import sandbox
from helpers.sandbox import BOUNDARIES, bubblewrap_problem, network_isolation, run_sandboxed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def needs_bubblewrap():
    if bubblewrap_problem():
        if os.environ.get("CI"):
            pytest.fail(f"bubblewrap does not work here: {bubblewrap_problem()}")
        pytest.skip(bubblewrap_problem())


@pytest.fixture(params=BOUNDARIES)
def boundary(request):
    if request.param == "bubblewrap":
        request.getfixturevalue("needs_bubblewrap")
    return request.param


def listing(folder):
    """Names and modification times of a folder's entries (not recursive); {} if it is missing."""
    folder = Path(folder)
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


def alive(pid):
    """Whether process `pid` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_memory_limit_ends_the_child_with_memory_error(tmp_path, boundary):
    result = run_sandboxed("greedy = bytearray(2**30)", tmp_path, memory_mb=512, boundary=boundary)
    assert (result.returncode, result.outcome, result.boundary) == (1, "MemoryError", boundary)


def test_without_the_limit_the_same_allocation_succeeds(tmp_path, boundary):
    result = run_sandboxed("greedy = bytearray(2**30); print(len(greedy))", tmp_path,
                           memory_mb=2048, boundary=boundary)
    assert result.ok and result.stdout == f"{2**30}\n"


def test_the_box_holds_the_system_python_and_its_folder_only(tmp_path, needs_bubblewrap):
    (tmp_path / "secret.txt").write_text("hunter2")  # beside the work folder, as in chapter 11
    work = tmp_path / "work"
    work.mkdir()
    python = [Path(folder) for folder in sandbox.python_folders()]
    mine = [str(tmp_path / "secret.txt")] + [  # and your home's files, but a path to Python
        str(p) for p in Path.home().iterdir() if not any(p == f or p in f.parents for f in python)]
    result = run_sandboxed(f"""
        import json, os, sys
        writes = {{}}
        for path in ("/box/here.txt", "/tmp/here.txt", "/dev/shm/here.txt", "/canary.txt",
                     "/usr/canary.txt", "/dev/canary.txt", sys.prefix + "/canary.txt",
                     {str(tmp_path / "canary.txt")!r}):
            try:
                open(path, "w").write("x")
                writes[path] = "written"
            except OSError as error:
                writes[path] = type(error).__name__
        print(json.dumps({{"top": sorted(os.listdir("/")), "cwd": os.getcwd(), "writes": writes,
                          "seen": [path for path in {mine!r} if os.path.exists(path)]}}))
    """, work, boundary="bubblewrap")
    assert result.ok, result.stderr
    report = json.loads(result.stdout)
    allowed = set(sandbox.SYSTEM) | {"box", "dev", "etc", "proc", "tmp"}
    allowed |= {Path(folder).parts[1] for folder in sandbox.python_folders()}
    assert set(report["top"]) <= allowed and report["cwd"] == "/box"
    assert report["seen"] == []  # neither the file beside the folder nor anything of your home
    assert [outcome == "written" for outcome in report["writes"].values()] == [True] * 3 + [False] * 5
    assert len(list(work.rglob("here.txt"))) == 3  # /box, /tmp and /dev/shm are folders on disk
    assert not (tmp_path / "canary.txt").exists()


def test_processes_in_a_nested_namespace_do_not_escape_the_memory_total(tmp_path, needs_bubblewrap):
    # The memory total reads the box's own PID namespace; a process in a namespace made inside the
    # box would be missed, so the box allows none (bwrap --disable-userns).
    result = run_sandboxed("""
        import subprocess, sys, time
        hold = "import sys; block = b'x' * (300 * 2**20); print('holding', flush=True); sys.stdin.read()"
        nested = ["unshare", "--user", "--pid", "--fork", sys.executable, "-c", hold]
        children = [subprocess.Popen(nested, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for _ in range(3)]
        held = [child.stdout.readline().strip() for child in children]
        time.sleep(2)  # all that started hold at once: time for the memory poll to see them
        for child in children:
            child.stdin.close()
        print(held.count("holding"), "held;", [child.wait() for child in children])
    """, tmp_path, memory_mb=400, timeout=30, boundary="bubblewrap")
    assert result.stopped == "memory" or result.stdout.startswith("0 held"), (result.outcome, result.stdout)


def test_timeout_kills_the_whole_process_group(tmp_path):
    result = run_sandboxed("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(grandchild.pid, flush=True)
        time.sleep(60)
    """, tmp_path, timeout=2, boundary="process limits only")
    assert result.timed_out and result.outcome == "timed out"
    grandchild = int(result.stdout.split()[0])
    time.sleep(0.2)
    survived = alive(grandchild)
    if survived:
        os.kill(grandchild, 9)
    assert not survived  # killed with the child's process group


def test_file_size_limit(tmp_path, boundary):
    result = run_sandboxed("open('big.bin', 'wb').write(bytes(2 * 2**20))", tmp_path, file_mb=1,
                           boundary=boundary)
    assert "File too large" in result.outcome


def test_environment_holds_no_parent_variable_and_a_fresh_home(tmp_path, monkeypatch, boundary):
    monkeypatch.setenv("BOOK_SECRET_TOKEN", "do-not-leak")
    result = run_sandboxed("""
        import os, tempfile
        print(sorted(os.environ))
        print(os.environ["HOME"], tempfile.gettempdir(), os.environ["HTTPS_PROXY"])
    """, tmp_path, boundary=boundary)
    names, paths = result.stdout.splitlines()
    assert "BOOK_SECRET_TOKEN" not in names and "do-not-leak" not in result.stdout
    home, temp, proxy = paths.split()
    assert result.home.parent == tmp_path and proxy == sandbox.NOWHERE
    if boundary == "bubblewrap":  # the same folders, as the box sees them
        assert (home, temp) == (f"/box/{result.home.name}", "/tmp")
    else:
        assert Path(home) == result.home and temp == home


def test_a_module_planted_in_the_work_folder_is_not_imported(tmp_path, boundary):
    (tmp_path / "json.py").write_text("open('canary-planted.txt', 'w').write('imported')\n")
    plain = subprocess.run([sys.executable, "-c", "import json"], cwd=tmp_path)  # no -I: it fires
    assert plain.returncode == 0 and (tmp_path / "canary-planted.txt").exists()
    (tmp_path / "canary-planted.txt").unlink()
    assert run_sandboxed("import json", tmp_path, boundary=boundary).ok
    assert not (tmp_path / "canary-planted.txt").exists()


def test_no_network_in_the_namespace_but_network_when_allowed(tmp_path, boundary):
    if boundary == "process limits only" and network_isolation() != "namespace":
        pytest.skip("unshare --net is not allowed here")
    with socket.socket() as server:  # a listener on this machine's loopback: nothing leaves it
        server.bind(("127.0.0.1", 0))
        server.listen()
        code = f"""
            import socket
            with socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=5):
                print("connected")
        """
        allowed = run_sandboxed(code, tmp_path, network=True, boundary=boundary)
        blocked = run_sandboxed(code, tmp_path, boundary=boundary)
    assert (allowed.stdout, allowed.network) == ("connected\n", "network allowed")
    assert blocked.network == "namespace" and not blocked.ok  # no route, or a loopback of its own
    assert blocked.outcome.split(":")[0] in ("OSError", "ConnectionRefusedError"), blocked.outcome


def test_nothing_outside_the_work_folder_is_touched(tmp_path, monkeypatch, boundary):
    token = uuid.uuid4().hex
    real_home = Path.home()
    parent_home = tmp_path / "parent-home"  # stands for your HOME: the child must not use it
    parent_home.mkdir()
    monkeypatch.setenv("HOME", str(parent_home))
    work = tmp_path / "work"
    work.mkdir()
    watched = [real_home, Path("/tmp"), ROOT,
               ROOT / "notebooks", ROOT / "helpers", parent_home]
    before = {folder: listing(folder) for folder in watched}
    result = run_sandboxed(f"""
        import os, tempfile
        open("canary-{token}-relative.txt", "w").write("x")
        open(os.path.expanduser("~/canary-{token}-home.txt"), "w").write("x")
        tempfile.NamedTemporaryFile(prefix="canary-{token}-", delete=False).write(b"x")
    """, work, boundary=boundary)
    assert result.ok, result.stderr
    written = sorted(str(p.relative_to(work)) for p in work.rglob(f"canary-{token}*"))
    assert len(written) == 3 and all(not name.startswith("..") for name in written)
    assert listing(parent_home) == {}
    for folder in watched:
        after = listing(folder)
        assert not [name for name in after if token in name or name.startswith("canary-")], folder
        if folder in (parent_home, ROOT, real_home):
            assert set(after) == set(before[folder]), folder


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(NotADirectoryError, match="'.*missing' is not a directory"):
        run_sandboxed("pass", tmp_path / "missing")
    with pytest.raises(ValueError, match="memory_mb must be a number >= 256, got 10"):
        run_sandboxed("pass", tmp_path, memory_mb=10)
    with pytest.raises(TypeError, match="code must be Python source text"):
        run_sandboxed(["print", 1], tmp_path)
    with pytest.raises(ValueError, match="boundary must be one of"):
        run_sandboxed("pass", tmp_path, boundary="docker")


def test_asking_for_bubblewrap_where_it_is_missing_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.bubblewrap_problem.cache_clear()
    try:
        assert sandbox.strongest_boundary() == "process limits only"
        with pytest.raises(RuntimeError, match="bwrap is not installed"):
            run_sandboxed("pass", tmp_path, boundary="bubblewrap")
        assert run_sandboxed("pass", tmp_path).boundary == "process limits only"
    finally:
        sandbox.bubblewrap_problem.cache_clear()


def test_outcome_names_a_signal(tmp_path, boundary):
    result = run_sandboxed("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path,
                           boundary=boundary)
    assert (result.returncode, result.outcome) == (-9, "killed by SIGKILL")


def test_a_python_installed_under_tmp_runs_in_the_box(tmp_path, needs_bubblewrap):
    """The box's /tmp is a folder of its own: a venv under the real /tmp must stay visible in it."""
    import shutil
    import tempfile
    under_tmp = Path(tempfile.mkdtemp(prefix="venv-under-tmp-", dir="/tmp"))
    try:
        venv = under_tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = [p for p in sys.path if p.endswith("site-packages")]
        root = str(Path(__file__).resolve().parent.parent)
        (tmp_path / "work").mkdir()
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "from helpers.sandbox import run_sandboxed\n"
             "r = run_sandboxed('print(6 * 7)', 'work', boundary='bubblewrap')\n"
             "print(r.ok, r.stdout.strip(), r.stderr.strip()[-300:])"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([root, *site])})
    finally:
        shutil.rmtree(under_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.startswith("True 42"), done.stdout
