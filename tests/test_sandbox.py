"""helpers.sandbox: each limit stops what it should, and the child touches nothing outside its folder."""
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import sandbox
from helpers.sandbox import network_isolation, run_sandboxed

ROOT = Path(__file__).resolve().parent.parent


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


def test_memory_limit_ends_the_child_with_memory_error(tmp_path):
    result = run_sandboxed("greedy = bytearray(2 * 2**30)", tmp_path, memory_mb=512)
    assert (result.returncode, result.outcome) == (1, "MemoryError")


def test_without_the_limit_the_same_allocation_succeeds(tmp_path):
    result = run_sandboxed("greedy = bytearray(2 * 2**30); print(len(greedy))", tmp_path, memory_mb=4096)
    assert result.ok and result.stdout == f"{2 * 2**30}\n"


def test_timeout_kills_the_whole_process_group(tmp_path):
    result = run_sandboxed("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(grandchild.pid, flush=True)
        time.sleep(60)
    """, tmp_path, timeout=2)
    assert result.timed_out and result.outcome == "timed out"
    grandchild = int(result.stdout.split()[0])
    time.sleep(0.2)
    survived = alive(grandchild)
    if survived:
        os.kill(grandchild, 9)
    assert not survived  # killed with the child's process group


def test_file_size_limit(tmp_path):
    result = run_sandboxed("open('big.bin', 'wb').write(bytes(2 * 2**20))", tmp_path, file_mb=1)
    assert "File too large" in result.outcome


def test_environment_holds_no_parent_variable_and_a_fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_SECRET_TOKEN", "do-not-leak")
    result = run_sandboxed("""
        import os, tempfile
        print(sorted(os.environ))
        print(os.environ["HOME"], tempfile.gettempdir(), os.environ["HTTPS_PROXY"])
    """, tmp_path)
    names, paths = result.stdout.splitlines()
    assert "BOOK_SECRET_TOKEN" not in names and "do-not-leak" not in result.stdout
    home, temp, proxy = paths.split()
    assert Path(home) == result.home and Path(home).parent == tmp_path and temp == home
    assert proxy == sandbox.NOWHERE


def test_a_module_planted_in_the_work_folder_is_not_imported(tmp_path):
    (tmp_path / "json.py").write_text("open('canary-planted.txt', 'w').write('imported')\n")
    plain = subprocess.run([sys.executable, "-c", "import json"], cwd=tmp_path)  # no -I: it fires
    assert plain.returncode == 0 and (tmp_path / "canary-planted.txt").exists()
    (tmp_path / "canary-planted.txt").unlink()
    assert run_sandboxed("import json", tmp_path).ok
    assert not (tmp_path / "canary-planted.txt").exists()


@pytest.mark.skipif(network_isolation() != "namespace", reason="unshare --net is not allowed here")
def test_no_network_in_the_namespace_but_network_when_allowed(tmp_path):
    with socket.socket() as server:  # a listener on this machine's loopback: nothing leaves it
        server.bind(("127.0.0.1", 0))
        server.listen()
        code = f"""
            import socket
            with socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=5):
                print("connected")
        """
        allowed = run_sandboxed(code, tmp_path, network=True)
        blocked = run_sandboxed(code, tmp_path)
    assert (allowed.stdout, allowed.network) == ("connected\n", "network allowed")
    assert blocked.network == "namespace" and not blocked.ok and "OSError" in blocked.outcome


def test_nothing_outside_the_work_folder_is_touched(tmp_path, monkeypatch):
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
    """, work)
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


def test_outcome_names_a_signal(tmp_path):
    result = run_sandboxed("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path)
    assert result.outcome == "killed by SIGKILL"
