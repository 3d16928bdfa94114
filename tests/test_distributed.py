"""Chapter 12's claims beyond what the chapter runs, and its cluster harness.

The chapter's own asserted cells already check the custom loop killed and resumed (equal to a run
nobody interrupted), the chief-only save's failure, tf_keras's BackupAndRestore with `save_freq=2`,
the preempted cluster's save, and the restore of a two-device checkpoint on one, two and three
devices. Here: a checkpoint trained on three devices restores bit for bit on none to four; the
chapter's own worker scripts (read from the notebook) run the custom loop under tf_keras, resume
tf_keras's per-epoch BackupAndRestore after the chief is killed, and restart the preempted cluster
from its save; and `run_cluster` passes each worker its options and exactly this environment plus
its `TF_CONFIG`, waits its grace period, and leaves no worker or listening port behind, also when
it gives up (these with tiny worker scripts that start no TensorFlow); its launcher runs each
worker as `python SCRIPT ARGS` would, forks it before any TensorFlow op, reuses itself while the
environment is the same, and ends, with its workers, when its parent dies."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from helpers import distributed
from helpers.distributed import run_cluster, tf_config, write_directory
from helpers.model_server import free_port, port_is_open

CHAPTER = Path(__file__).resolve().parent.parent / "notebooks" / "12_distributed_checkpoints.ipynb"

# Logical devices must be configured before TensorFlow initialises its devices, which this test
# process may already have done: the device-count test runs in a fresh Python.
DEVICE_COUNTS = """
import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
from helpers.distributed import build_model


def strategy(devices):
    if devices == 0:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])


def compiled(devices):
    with strategy(devices).scope():
        model = build_model()
        model.compile(tf.keras.optimizers.Adam(0.01), loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def values(model):
    return [v.numpy() for v in model.weights + model.optimizer.variables]


x = tf.reshape(tf.range(96, dtype=tf.float32) / 96, (24, 4))
y = tf.reduce_sum(x, 1, keepdims=True)
results = {}
tf.keras.utils.set_random_seed(3)
model = compiled(3)
model.fit(x, y, epochs=2, batch_size=6, verbose=0)
path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save("ckpt_3/ckpt")
for restored_on in (0, 1, 2, 3, 4):
    copy = compiled(restored_on)
    tf.train.Checkpoint(model=copy, optimizer=copy.optimizer).restore(path).assert_consumed()
    mine, theirs = values(copy), values(model)
    results[f"3->{restored_on}"] = (
        len(mine) == len(theirs) > 4 and int(copy.optimizer.iterations.numpy()) == 8
        and all(np.array_equal(a, b) for a, b in zip(mine, theirs)))
print(json.dumps(results))
"""


def test_restore_across_device_counts_is_bit_identical(tmp_path):
    """Trained on 3 devices (the chapter trains on 2); restored with no strategy, on 1, 2, 3 and 4.
    It runs forked from chapter 12's launcher, which has initialised no device yet."""
    script, out, err = tmp_path / "device_counts.py", tmp_path / "out", tmp_path / "err"
    script.write_text(DEVICE_COUNTS)
    out.touch()
    err.touch()
    child = distributed._launcher(dict(os.environ)).start([sys.executable, str(script)], dict(os.environ),
                                                          stdout=str(out), stderr=str(err), cwd=str(tmp_path))
    assert child.wait(timeout=300) == 0, err.read_text()[-3000:]
    results = json.loads(out.read_text().strip().splitlines()[-1])
    assert len(results) == 5 and all(results.values()), results


def chapter_script(name, folder):
    """Write the chapter's `%%writefile NAME` cell into `folder`, as the chapter does; its path."""
    for cell in nbformat.read(CHAPTER, as_version=4).cells:
        if cell.cell_type == "code" and cell.source.startswith(f"%%writefile {name}\n"):
            path = folder / name
            path.write_text(cell.source.split("\n", 1)[1] + "\n")
            return str(path)
    raise LookupError(f"chapter 12 has no %%writefile {name} cell")


def _no_trace(run):
    """No process of `run` is alive, and none of its ports accepts connections."""
    alive = [pid for pid in run.pids if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    listening = [port for port in run.ports if port_is_open(port)]
    return alive == [] and listening == []


def test_tf_config_and_write_directory(tmp_path):
    config = json.loads(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert config == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                      "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="worker index 2"):
        tf_config(["127.0.0.1:1", "127.0.0.1:2"], 2)
    with pytest.raises(ValueError, match="task_type"):
        write_directory("ckpt", _resolver({"ps": ["a:1"], "worker": ["b:1"]}, "ps", 0))
    with pytest.raises(FileNotFoundError, match="no worker script 'nope.py'"):
        run_cluster("nope.py", tmp_path)
    script = tmp_path / "worker.py"
    script.write_text("")
    with pytest.raises(ValueError, match=r"worker_options names workers \[2\]"):
        run_cluster(str(script), tmp_path, worker_options={2: {"kill_at": 1}})


def _resolver(cluster, task_type, task_id):
    import tensorflow as tf

    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


@pytest.mark.parametrize("cluster", [{"worker": ["a:1", "b:1", "c:1"]},
                                     {"chief": ["a:1"], "worker": ["b:1", "c:1"]}])
def test_write_directory_picks_the_chief_as_tensorflow_does(cluster):
    """The chief writes into the folder, every other worker into its own `workertemp_<id>`: the
    chief is the 'chief' task, and worker 0 only in a cluster without one (TensorFlow's
    `multi_worker_util.is_chief`, compared task by task)."""
    from tensorflow.python.distribute import multi_worker_util

    for task_type, addresses in cluster.items():
        for task_id in range(len(addresses)):
            resolver = _resolver(cluster, task_type, task_id)
            written = write_directory("ckpt", resolver)
            chief = multi_worker_util.is_chief(resolver.cluster_spec(), task_type, task_id)
            assert written == ("ckpt" if chief else os.path.join("ckpt", f"workertemp_{task_id}"))
    assert write_directory("ckpt", _resolver(cluster, "worker", 0)) == (
        "ckpt" if "chief" not in cluster else os.path.join("ckpt", "workertemp_0"))


# A worker that starts no TensorFlow: it listens on its TF_CONFIG port as a real worker's gRPC
# server does, reports its options, then either SIGKILLs itself, exits with a code, or sleeps.
FAKE_WORKER = """
import json, os, socket, sys, time

from helpers.distributed import die, report

config = json.loads(os.environ["TF_CONFIG"])
port = int(config["cluster"]["worker"][config["task"]["index"]].split(":")[1])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
options = json.loads(sys.argv[2])
for line in (sys.argv[1:2], "[0.1 0.2]", 3):  # the script's own prints, not reports
    print(line, flush=True)
report("options", config["task"]["index"], sys.argv[1], options)
if options.get("die"):
    die()
if options.get("env"):
    report("env", dict(os.environ))
if "exit" in options:
    sys.exit(options["exit"])
time.sleep(options.get("sleep", 600))
report("woke")
"""


@pytest.fixture
def fake_worker(tmp_path):
    path = tmp_path / "fake_worker.py"
    path.write_text(textwrap.dedent(FAKE_WORKER))
    return str(path)


def test_each_worker_gets_its_options_and_the_cluster_its_ports(tmp_path, fake_worker):
    run = run_cluster(fake_worker, tmp_path / "run", workers=3, worker_options={1: {"exit": 3}},
                      grace=5, sleep=0.5, shared="yes")
    assert run.reports[0] == [["options", 0, str(tmp_path / "run"), {"sleep": 0.5, "shared": "yes"}],
                              ["woke"]]
    assert run.reports[1] == [["options", 1, str(tmp_path / "run"),
                               {"sleep": 0.5, "shared": "yes", "exit": 3}]]
    assert run.exit_codes == [0, 3, 0] and len(set(run.ports)) == 3
    assert run.commands[1] == [sys.executable, fake_worker, str(tmp_path / "run"),
                               '{"sleep": 0.5, "shared": "yes", "exit": 3}']
    assert _no_trace(run)


@pytest.mark.parametrize("legacy_keras", [False, True])
def test_workers_get_this_environment_plus_their_tf_config_only(tmp_path, fake_worker, monkeypatch,
                                                                 legacy_keras):
    """Chapter 12 says what `run_cluster` adds to the notebook's environment: `TF_CONFIG`, and
    `TF_USE_LEGACY_KERAS=1` with `legacy_keras=True`; nothing else (no quieting log level)."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    run = run_cluster(fake_worker, tmp_path, legacy_keras=legacy_keras, env=True, exit=0)
    assert run.exit_codes == [0, 0]
    for worker in (0, 1):
        seen = run.first(worker, "env")[0]
        added = {name: value for name, value in seen.items() if os.environ.get(name) != value}
        assert json.loads(added.pop("TF_CONFIG"))["task"]["index"] == worker
        assert added == ({"TF_USE_LEGACY_KERAS": "1"} if legacy_keras else {})
        assert set(os.environ) <= set(seen)


def test_the_others_get_the_grace_period_then_are_killed(tmp_path, fake_worker):
    start = time.monotonic()
    run = run_cluster(fake_worker, tmp_path, worker_options={1: {"die": True}}, grace=1.5)
    took = time.monotonic() - start
    assert run.exit_codes == [-9, -9] and run.reports[1][-1][0] == "options"
    assert run.reports[0] == [["options", 0, str(tmp_path), {}]]  # killed before it woke
    assert 1.5 <= took < 20 and _no_trace(run)


def test_no_worker_or_port_survives_a_timeout(tmp_path, monkeypatch, fake_worker):
    ports = []

    def recorded_free_port():
        ports.append(free_port())
        return ports[-1]

    monkeypatch.setattr(distributed, "free_port", recorded_free_port)
    with pytest.raises(RuntimeError, match="did not finish within 2 s"):
        run_cluster(fake_worker, tmp_path, timeout=2)  # both workers listen and sleep
    launcher = distributed._LAUNCHERS[None].process.pid  # the workers' parent
    assert psutil.Process(launcher).children() == []
    assert len(ports) == 2 and [port for port in ports if port_is_open(port)] == []


# What a worker can see of how it was started: `run_cluster` forks it from a launcher, and it must
# run as `python SCRIPT ARGS...` would. Each line below is compared between the two ways.
SEEN_BY_A_SCRIPT = """
import os, signal, sys
print(sys.argv, __file__, os.getcwd(), sys.path[0], os.environ.get("SEEN"), sys.stdin.read(),
      "SIGINT ignored:", signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGINT),
      flush=True)
print("to stderr", file=sys.stderr)
{ending}
"""


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
@pytest.mark.parametrize("ending", ["pass", "sys.exit()", "sys.exit(3)", "sys.exit('bye')",
                                    "raise ValueError('wrong')", "os.kill(os.getpid(), 9)",
                                    "os.kill(os.getpid(), signal.SIGINT); time.sleep(1)"])
def test_a_forked_worker_runs_as_python_script_would(tmp_path, monkeypatch, ending, sigint):
    """Same argv, __file__, folder, sys.path[0] (the real folder of a linked script), environment,
    empty stdin, SIGINT handler, stdout, stderr and exit code (an uncaught KeyboardInterrupt: death
    by SIGINT); output files named relative to this folder, as the caller's, and created. Both
    with SIGINT handled and with SIGINT ignored by the parent (as in pytest started as a background
    job of a non-interactive shell), which a new Python inherits and keeps."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "seen.py").write_text("import time\n" + SEEN_BY_A_SCRIPT.format(ending=ending))
    script = tmp_path / "scripts" / "seen.py"
    script.parent.mkdir()
    script.symlink_to(tmp_path / "real" / "seen.py")
    monkeypatch.chdir(tmp_path)
    argv = [sys.executable, os.path.join("scripts", "seen.py"), "one", '{"two": 2}']
    env = {**os.environ, "SEEN": "yes"}
    here = signal.signal(signal.SIGINT, signal.default_int_handler if sigint == "handled" else signal.SIG_IGN)
    try:  # both children inherit it: a handler becomes the default action, an ignored signal stays so
        python = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=60)
        launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
    finally:
        signal.signal(signal.SIGINT, here)
    try:
        out, err = tmp_path / "out", tmp_path / "err"
        forked = launcher.start(argv, env, stdout="out", stderr="err")
        assert forked.wait(timeout=60) == python.returncode
        assert out.read_text() == python.stdout and "yes" in python.stdout
        assert ("SIGINT ignored: True" in python.stdout) == (sigint == "ignored")
        assert err.read_text() == python.stderr  # a traceback too, frame for frame
    finally:
        launcher.close()


WORKER_SEES_ITS_PROCESS = """
import os
from tensorflow.python.eager import context
from helpers.distributed import report
report("process", os.getpid(), os.getppid(), context.context()._initialized)
"""


@pytest.mark.parametrize("legacy_keras", [False, True])
def test_each_worker_is_its_own_process_forked_before_any_tensorflow_op(tmp_path, legacy_keras):
    """Chapter 12: the launcher runs no TensorFlow op before it forks, so each worker starts its
    own runtime; each worker is a child of the launcher, not of this process."""
    if legacy_keras:
        pytest.importorskip("tf_keras")
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SEES_ITS_PROCESS)
    run = run_cluster(str(script), tmp_path / "run", legacy_keras=legacy_keras)
    launcher = distributed._LAUNCHERS["1" if legacy_keras else None].process.pid
    seen = [run.first(worker, "process") for worker in (0, 1)]
    assert [pid for pid, _, _ in seen] == run.pids and len({launcher, os.getpid(), *run.pids}) == 4
    assert [(parent, initialized) for _, parent, initialized in seen] == [(launcher, False)] * 2


KILLED_PARENT = """
import json, os, sys, time
from helpers import distributed
launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
worker = launcher.start([sys.executable, sys.argv[1], sys.argv[3], "{}"],  # the fake worker sleeps
                        dict(os.environ, TF_CONFIG=sys.argv[2]), stdout=os.devnull, stderr=os.devnull)
print(json.dumps([launcher.process.pid, worker.pid]), flush=True)
time.sleep(600)
"""


def test_a_launcher_and_its_workers_end_when_their_parent_is_killed(tmp_path, fake_worker):
    """Chapter 12: a launcher ends with the kernel that started it, and kills what it started."""
    config = tf_config([f"127.0.0.1:{free_port()}"], 0)
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, fake_worker, config, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        launcher, worker = json.loads(parent.stdout.readline())
        time.sleep(1)
        assert psutil.Process(worker).status() != psutil.STATUS_ZOMBIE  # asleep, as the parent is
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs([psutil.Process(launcher)], timeout=30)
        assert alive == [] and not psutil.pid_exists(worker)
    finally:
        parent.kill()
        parent.wait()


def test_a_launcher_whose_parent_is_gone_still_reaps_every_worker(tmp_path):
    """Its parent dead (stdin at its end, no reader for its answers): the launcher kills and reaps
    every worker, the answers it can no longer give are dropped, and it ends cleanly."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", "from helpers.distributed import serve_workers; serve_workers(tensorflow=False)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=distributed._HELPERS_PARENT)
    script = tmp_path / "sleeps.py"
    script.write_text("import time\ntime.sleep(600)\n")
    try:
        assert launcher.stdout.readline() == b"ready\n"
        for request in (1, 2):
            launcher.stdin.write(json.dumps(["start", {
                "id": request, "argv": [sys.executable, str(script)], "env": dict(os.environ),
                "cwd": str(tmp_path), "stdout": os.devnull, "stderr": os.devnull}]).encode() + b"\n")
            launcher.stdin.flush()
        workers = [int(launcher.stdout.readline().split()[2]) for _ in (1, 2)]
        launcher.stdout.close()  # as if the parent had died: nobody reads the "exit" answers
        launcher.stdin.close()
        assert launcher.wait(timeout=30) == 0, launcher.stderr.read().decode()[-2000:]
        assert not any(psutil.pid_exists(pid) for pid in workers)  # reaped, not zombies
    finally:
        launcher.kill()
        launcher.wait()


KILLS_ITS_LAUNCHER = """
import os, signal, sys, time
with open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w"):
    pass
if sys.argv[2] == '{"kill_launcher": true}':
    time.sleep(0.5)
    os.kill(os.getppid(), signal.SIGKILL)  # as the out-of-memory killer would
time.sleep(60)
"""


def test_no_worker_outlives_a_launcher_that_died(tmp_path, monkeypatch):
    """Chapter 12's "whatever happens, no worker outlives the call": a worker SIGKILLs the
    launcher; the call fails and says so, and no worker is left (they die with their launcher)."""
    original = distributed.WorkerLauncher
    monkeypatch.setattr(distributed, "_LAUNCHERS", {})  # a launcher of this test's own, without TF
    monkeypatch.setattr(distributed, "WorkerLauncher", lambda env: original(env, tensorflow=False))
    script = tmp_path / "worker.py"
    script.write_text(KILLS_ITS_LAUNCHER)
    with pytest.raises(RuntimeError, match=r"launcher process \d+, ended with exit code -9") as failed:
        run_cluster(str(script), tmp_path / "run", worker_options={1: {"kill_launcher": True}}, timeout=30)
    assert failed.value.__context__ is None  # said once, not again by the cleanup
    distributed._LAUNCHERS[None].close()
    workers = [int(path.name.split("-")[1]) for path in (tmp_path / "run").glob("worker-*")]
    time.sleep(0.5)
    assert len(workers) == 2
    assert [pid for pid in workers if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE] == []


def test_a_launcher_that_cannot_start_says_why(tmp_path):
    """A launcher whose TensorFlow import fails reports the import's error, not its own."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
    with pytest.raises(RuntimeError, match=r"(?s)did not start.*exit code 1.*no TensorFlow here"):
        distributed.WorkerLauncher({**os.environ, "PYTHONPATH": str(tmp_path)})


def test_an_interrupted_start_leaves_no_worker(tmp_path, fake_worker):
    """An interrupt after the launcher was asked to fork, before it answered: the worker it forked
    anyway is killed, not left running unknown to the caller."""
    launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
    try:
        answer = launcher._changed.wait_for
        calls = []

        def interrupted_once(predicate, timeout=None):
            calls.append(timeout)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return answer(predicate, timeout)

        launcher._changed.wait_for = interrupted_once
        config = tf_config([f"127.0.0.1:{free_port()}"], 0)
        with pytest.raises(KeyboardInterrupt):
            launcher.start([sys.executable, fake_worker, str(tmp_path), "{}"],  # it would sleep 600 s
                           {**os.environ, "TF_CONFIG": config}, stdout=os.devnull, stderr=os.devnull)
        launcher._changed.wait_for = answer
        with launcher._changed:
            assert launcher._changed.wait_for(lambda: len(launcher._exits) == 1, 10)
        assert list(launcher._exits.values()) == [-9]
    finally:
        launcher.close()


def test_a_start_the_launcher_answers_too_late_leaves_no_worker(tmp_path, fake_worker):
    """A launcher that answers after the caller gave up (here: stopped, then continued) still forks
    the worker; it is killed as soon as its PID arrives, and a later start gets its own worker."""
    launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False, answer_timeout=0.5)
    try:
        config = tf_config([f"127.0.0.1:{free_port()}"], 0)
        argv = [sys.executable, fake_worker, str(tmp_path), '{"exit": 0}']
        os.kill(launcher.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RuntimeError, match="did not answer within 0.5 s"):
                launcher.start(argv, {**os.environ, "TF_CONFIG": config}, stdout=os.devnull, stderr=os.devnull)
        finally:
            os.kill(launcher.process.pid, signal.SIGCONT)
        with launcher._changed:
            assert launcher._changed.wait_for(lambda: len(launcher._exits) == 1, 10)
        assert list(launcher._exits.values()) == [-9]
        later = launcher.start(argv, {**os.environ, "TF_CONFIG": config}, stdout=os.devnull, stderr=os.devnull)
        assert later.request not in launcher._exits and later.wait(timeout=30) == 0
    finally:
        launcher.close()


def test_a_launcher_ignores_the_interrupt_its_kernel_gets(tmp_path, fake_worker):
    """Jupyter interrupts a kernel by signalling its process group, the launcher included: the
    launcher lives on (the workers it forks get the SIGINT disposition the launcher's Python started
    with: the comparison test above). Started with SIGINT handled: one started with it ignored
    would pass without the launcher doing anything."""
    here = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
    finally:
        signal.signal(signal.SIGINT, here)
    try:
        os.kill(launcher.process.pid, signal.SIGINT)
        time.sleep(0.5)
        assert launcher.alive()
        config = tf_config([f"127.0.0.1:{free_port()}"], 0)
        worker = launcher.start([sys.executable, fake_worker, str(tmp_path), '{"exit": 0}'],
                                {**os.environ, "TF_CONFIG": config}, stdout=os.devnull, stderr=os.devnull)
        assert worker.wait(timeout=30) == 0
    finally:
        launcher.close()


@pytest.mark.parametrize("moment", ["while the request is written", "once the request is written",
                                    "as start returns"])
def test_an_interrupt_as_a_worker_starts_leaves_no_worker(tmp_path, fake_worker, monkeypatch, moment):
    """Chapter 12's "whatever happens": an interrupt after a worker was asked for, before
    `run_cluster` holds it, still leaves no worker by the time the call has raised."""
    monkeypatch.setattr(distributed, "_LAUNCHERS", {})
    launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
    try:
        monkeypatch.setattr(distributed, "_launcher", lambda env: launcher)
        real_send, real_start = launcher._send, launcher.start

        def send_then_interrupted(command, value):
            real_send(command, value)
            if command == "start":
                raise KeyboardInterrupt

        class InterruptedPipe:  # SIGINT arrives just before the start request is written
            def __init__(self, pipe):
                self.pipe = pipe

            def write(self, data):
                if data.startswith(b'["start"'):
                    os.kill(os.getpid(), signal.SIGINT)
                return self.pipe.write(data)

            def flush(self):
                self.pipe.flush()

            def close(self):
                self.pipe.close()

        def start_then_interrupted(*args, **kwargs):
            real_start(*args, **kwargs)
            raise KeyboardInterrupt

        if moment == "while the request is written":
            monkeypatch.setattr(launcher.process, "stdin", InterruptedPipe(launcher.process.stdin))
        elif moment == "once the request is written":
            monkeypatch.setattr(launcher, "_send", send_then_interrupted)
        else:
            monkeypatch.setattr(launcher, "start", start_then_interrupted)
        here = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a kernel
        try:
            with pytest.raises(KeyboardInterrupt):
                run_cluster(fake_worker, tmp_path / "run")  # the fake worker would sleep 600 s
        finally:
            signal.signal(signal.SIGINT, here)
        assert list(launcher._exits.values()) == [-9]  # already reaped when the call raised
        assert psutil.Process(launcher.process.pid).children() == []
    finally:
        launcher.close()


HOOKED = """
import sys
sys.excepthook = lambda kind, error, tb: print("hooked:", error, file=sys.stderr)
raise ValueError("wrong")
"""


def test_a_worker_reports_its_error_through_sys_excepthook(tmp_path):
    """As Python does: a script's own `sys.excepthook` reports its uncaught exception."""
    script, err = tmp_path / "hooked.py", tmp_path / "err"
    script.write_text(HOOKED)
    python = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    forked = distributed._launcher(dict(os.environ)).start([sys.executable, str(script)], dict(os.environ),
                                                           stdout=os.devnull, stderr=str(err))
    assert forked.wait(timeout=60) == python.returncode == 1
    assert err.read_text() == python.stderr == "hooked: wrong\n"


REUSED_PID = """
import json, os, sys
from helpers import distributed
launcher = distributed.WorkerLauncher(dict(os.environ), tensorflow=False)
env = dict(os.environ, TF_CONFIG=sys.argv[2])
first = launcher.start([sys.executable, sys.argv[1], ".", '{"exit": 3}'], env, os.devnull, os.devnull)
first.wait(timeout=30)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # the next PID handed out: the same one again
    f.write(str(first.pid - 1))
second = launcher.start([sys.executable, sys.argv[1], ".", "{}"], env, os.devnull, os.devnull)  # sleeps
print(json.dumps([first.pid, second.pid, first.returncode, second.poll()]))
launcher.close()
"""


def test_a_reused_pid_does_not_pass_for_the_earlier_worker(tmp_path, fake_worker):
    """Exit codes are kept per start request, not per PID: a new worker given an earlier worker's
    PID (forced here in a PID namespace of its own) is still running, not 'ended with 3'."""
    config = tf_config([f"127.0.0.1:{free_port()}"], 0)
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", REUSED_PID,
                           fake_worker, config], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if done.returncode != 0 and ("unshare" in done.stderr or "ns_last_pid" in done.stderr):
        pytest.skip(f"no PID namespace with a writable ns_last_pid here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, first_code, second_code = json.loads(done.stdout.splitlines()[-1])
    assert first == second and first_code == 3 and second_code is None


def test_a_launcher_is_reused_until_the_environment_changes(monkeypatch):
    """A new launcher when a variable TensorFlow could read at import changed, one per Keras, and
    the same one when only pytest's bookkeeping variable changed (each worker still gets the
    environment as it is then: test_workers_get_this_environment_plus_their_tf_config_only)."""
    class Recorded:
        def __init__(self, env):
            self.env, self.closed = env, False

        def alive(self):
            return not self.closed

        def close(self):
            self.closed = True

    monkeypatch.setattr(distributed, "WorkerLauncher", Recorded)
    monkeypatch.setattr(distributed, "_LAUNCHERS", {})
    env = {"PATH": "/bin", "PYTEST_CURRENT_TEST": "a"}
    first = distributed._launcher(env)
    assert distributed._launcher({**env, "PYTEST_CURRENT_TEST": "b"}) is first
    changed = distributed._launcher({**env, "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert changed is not first and first.closed
    legacy = distributed._launcher({**env, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_USE_LEGACY_KERAS": "1"})
    assert legacy is not changed and not changed.closed
    assert distributed._launcher({**env, "TF_ENABLE_ONEDNN_OPTS": "0"}) is changed


def test_the_custom_loop_runs_under_keras_2_too(tmp_path):
    """Chapter 12: unlike Keras 3's `fit`, its `train_worker.py` runs on both Keras versions (it
    uses `apply_gradients`; tf_keras's optimizers have no `apply`); and each worker's gRPC server
    listens on every interface, whatever host TF_CONFIG names."""
    pytest.importorskip("tf_keras")
    chapter_script("train_worker.py", tmp_path)
    wrapper = tmp_path / "keras_reporting_worker.py"  # the chapter's `train`, after naming its Keras
    wrapper.write_text("import json, os\n"
                       "import psutil\n"
                       "import tensorflow as tf\n"
                       "from helpers.distributed import report, run_worker\n"
                       "from train_worker import train\n"
                       "report('keras', tf.keras.__name__.split('.')[0])\n"
                       "def train_then_report_the_listening_address(directory, **options):\n"
                       "    train(directory, **options)\n"
                       "    config = json.loads(os.environ['TF_CONFIG'])\n"
                       "    port = int(config['cluster']['worker'][config['task']['index']].rsplit(':', 1)[1])\n"
                       "    report('listening', sorted({c.laddr.ip for c in psutil.Process().connections('inet')\n"
                       "                                if c.status == 'LISTEN' and c.laddr.port == port}))\n"
                       "run_worker(train_then_report_the_listening_address)\n")
    legacy = run_cluster(str(wrapper), tmp_path / "run", legacy_keras=True)
    assert legacy.exit_codes == [0, 0], (legacy.reports, legacy.stderr)
    assert _no_trace(legacy)
    assert legacy.first(0, "keras") == legacy.first(1, "keras") == ["tf_keras"]
    for worker in (0, 1):
        assert legacy.first(worker, "saved")[:2] == [5, "ckpt-1" if worker == 0 else "workertemp_1/ckpt-1"]
        assert legacy.first(worker, "done")[:2] == [12, 48.0]
    assert legacy.first(0, "done") == legacy.first(1, "done")
    # Chapter 12: TensorFlow takes only the port from a worker's 127.0.0.1 address; its gRPC server
    # listens on every interface.
    for worker in (0, 1):
        addresses = legacy.first(worker, "listening")[0]
        assert addresses and set(addresses) <= {"::", "0.0.0.0"}, addresses


def test_a_preempted_cluster_restarts_at_its_save(tmp_path):
    """Chapter 12 warns worker 1 with SIGTERM at step 7 and shows both workers saving at 8 and
    exiting with 42; here the cluster then starts again, unwarned: every worker's new handler
    restores the chief's checkpoint, and both finish from step 8."""
    from tensorflow.python.distribute.failure_handling import failure_handling_util

    if failure_handling_util.detect_platform().name.startswith("GCE"):
        pytest.skip("on Google Cloud the handler does not catch SIGTERM")
    script = chapter_script("preempted_worker.py", tmp_path)
    warned = run_cluster(script, tmp_path / "run", worker_options={1: {"sigterm_at": 7}})
    assert warned.exit_codes == [42, 42], (warned.reports, warned.stderr)
    again = run_cluster(script, tmp_path / "run")
    assert again.exit_codes == [0, 0], (again.reports, again.stderr)
    assert again.first(0, "start") == again.first(1, "start") == [8]
    assert again.first(0, "done") == again.first(1, "done") == [12]
    assert _no_trace(warned) and _no_trace(again)


def test_keras2_backup_and_restore_per_epoch_resumes_at_the_killed_epoch(tmp_path):
    """The chapter kills worker 1 with `save_freq=2` and resumes at the batch after the backup;
    here the chief dies with the default `save_freq="epoch"`, and the killed epoch runs again."""
    pytest.importorskip("tf_keras")
    script = chapter_script("keras2_worker.py", tmp_path)
    stopped = run_cluster(script, tmp_path / "run", worker_options={0: {"kill_at": "1.2"}},
                          legacy_keras=True, grace=0)
    assert stopped.exit_codes[0] == -9 and stopped.first(0, "killed") == ["1.2"] and _no_trace(stopped)
    assert (tmp_path / "run" / "backup" / "chief" / "checkpoint").exists()
    restarted = run_cluster(script, tmp_path / "run", legacy_keras=True)
    assert restarted.exit_codes == [0, 0], (restarted.reports, restarted.stderr)
    assert _no_trace(restarted)
    for worker in (0, 1):
        batches = [values[0] for values in restarted.events(worker, "batch")]
        assert batches == ["1.0", "1.1", "1.2", "1.3", "2.0", "2.1", "2.2", "2.3", "3.0", "3.1", "3.2", "3.3"]
    assert restarted.first(0, "done") == restarted.first(1, "done")


@pytest.mark.parametrize("call,code", [("sys.exit()", 0), ("sys.exit(42)", 42), ("sys.exit('bye')", 1)])
def test_run_worker_ends_with_the_code_python_would(tmp_path, call, code):
    """sys.exit() is a clean exit (0), an integer is kept, a message is 1: what Python itself does."""
    script = tmp_path / "worker.py"
    script.write_text(f"import sys\nfrom helpers.distributed import run_worker\nrun_worker(lambda d: {call})\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code, done.stderr[-500:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["exit", code], done.stdout
