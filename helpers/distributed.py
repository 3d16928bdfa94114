"""Chapter 12's multi-worker runs: a `MultiWorkerMirroredStrategy` cluster of Python processes that
address each other at 127.0.0.1 (TensorFlow's gRPC server in each still listens on every interface).

A worker is a script the chapter writes on the page (`%%writefile train_worker.py`). `run_cluster`
runs it once per worker, as ``python SCRIPT abspath(DIRECTORY) OPTIONS_JSON`` would, with that
worker's own `TF_CONFIG` (ports picked free at run time), collects the JSON lines each worker
prints, and leaves no worker behind (the launcher stays for the next run). Each worker is its own process, forked from a launcher that
has already imported TensorFlow (chapter 10's idea): a fork takes milliseconds, an import seconds.
A worker script imports from here `report` (one JSON line for the parent), `die` (SIGKILL itself:
a lost machine), `write_directory` (where a worker saves), `run_worker` (its options, its error,
its exit) and `build_model` (the chapter's small Keras model). Each worker decides itself when it
dies (at a step or batch it was given), so a run's outcome does not depend on how busy the machine
is.
"""
import atexit
import builtins
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types

from .model_server import free_port


def tf_config(addresses, index):
    """The `TF_CONFIG` JSON of worker `index` in a cluster of `addresses` ('host:port')."""
    if not 0 <= index < len(addresses):
        raise ValueError(f"worker index {index} is not in a cluster of {len(addresses)} workers")
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def write_directory(directory, cluster_resolver):
    """Where this worker writes a save: the chief into `directory`, every other worker into a
    `workertemp_<id>` folder inside it that it deletes after the save (tf_keras's layout). The
    chief is the task of type 'chief', or worker 0 in a cluster without one (as here), as in
    TensorFlow's `multi_worker_util.is_chief`; `cluster_resolver` is the strategy's."""
    task_type, task_id = cluster_resolver.task_type, cluster_resolver.task_id
    if task_type not in ("worker", "chief"):
        raise ValueError(f"task_type must be 'worker' or 'chief', got {task_type!r}")
    has_chief = "chief" in cluster_resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return directory if is_chief else os.path.join(directory, f"workertemp_{task_id}")


def build_model():
    """The chapter's model: 4 inputs, a hidden layer of 3, one output (Keras 3 or tf_keras)."""
    import tensorflow as tf
    return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, activation="relu"),
                                tf.keras.layers.Dense(1)])


def report(*values):
    """Tell the parent something: one JSON line on standard output (`run_cluster` collects them)."""
    print(json.dumps(values), flush=True)


def die():
    """SIGKILL this process: no `finally`, no exit handler runs (a lost machine)."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def run_worker(work):
    """Run `work(DIRECTORY, **OPTIONS)` from this script's command line as the worker's whole job.

    An exception is reported as ("error", "Type: message") and ends the process with code 1; a
    `sys.exit(code)` (PreemptionCheckpointHandler's default exit) as ("exit", code), ending it with
    that code. After a normal return the worker waits until every worker has finished, then ends
    with code 0. Each ending is immediate (`os._exit`): a clean `MultiWorkerMirroredStrategy`
    shutdown takes seconds, and nothing is left to do.
    """
    directory, options = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        work(directory, **options)
    except SystemExit as exit_:
        # as Python does: sys.exit() and sys.exit(None) end with 0, a non-integer (a message) with 1
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        report("exit", code)
        os._exit(code)
    except Exception as error:  # noqa: BLE001 (reported to the parent, then a quick exit)
        report("error", f"{type(error).__name__}: {str(error).strip()[:2000]}")
        os._exit(1)
    _leave_together()
    sys.stdout.flush()
    os._exit(0)


def _leave_together(timeout_s=120):
    """Wait until every worker has finished before this one exits: a worker that leaves at once
    can still owe the others data of the last all-reduce (they pull it from its gRPC server), and
    they fail with `UnavailableError ... Connection reset by peer`. The chief hosts the barrier
    (TF's coordination service), so it stays a moment longer for the answers to reach the others."""
    from tensorflow.python.eager import context

    context.context().wait_at_barrier("helpers.distributed: finished", int(timeout_s * 1000))
    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
        time.sleep(0.5)


class ClusterRun:
    """What one `run_cluster` call saw: per worker, its command line (the argument list it ran as),
    reports, exit code, PID and stderr tail."""

    def __init__(self, commands, ports, pids, reports, exit_codes, stderr):
        self.commands, self.ports, self.pids, self.reports = commands, ports, pids, reports
        self.exit_codes, self.stderr = exit_codes, stderr

    def events(self, worker, name):
        """The values of every report `name` of `worker`, in order."""
        return [values[1:] for values in self.reports[worker] if values[0] == name]

    def first(self, worker, name):
        """The first report `name` of `worker` (its values), or None."""
        found = self.events(worker, name)
        return found[0] if found else None


def run_cluster(script, directory, workers=2, worker_options=None, legacy_keras=False, grace=10,
                timeout=180, **options):
    """Run the worker `script` on `workers` local processes, one cluster, to the end.

    Worker i runs `script` as the command ``[sys.executable, script, abspath(directory), OPTIONS]``
    (its `commands[i]`) would: that `sys.argv`, this process's working folder, and this process's
    environment plus a `TF_CONFIG` naming it worker i, where OPTIONS is the JSON of `options` plus
    `worker_options[i]`; `legacy_keras` also sets `TF_USE_LEGACY_KERAS=1`, so that `tf.keras` is
    Keras 2. The workers are forked by a `WorkerLauncher` that imported TensorFlow in that same
    environment, and end with `os._exit` when the script is done: unlike that command, no atexit
    handler runs and no thread still running is waited for. Once one worker has ended, the others
    get `grace` seconds to end too (a synchronous job fails without any of its workers) and are
    then killed, as a cluster manager restarts a whole job. Every worker still running is killed,
    and reaped by its launcher, before this returns, also on timeout (RuntimeError) or on an
    exception; if the launcher itself dies, its workers die with it (RuntimeError).
    """
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no worker script {script!r} (write it first, e.g. with %%writefile)")
    worker_options = dict(worker_options or {})
    if any(not isinstance(i, int) or not 0 <= i < workers for i in worker_options):
        raise ValueError(f"worker_options names workers {sorted(worker_options)}, "
                         f"but the cluster has workers 0 to {workers - 1}")
    os.makedirs(directory, exist_ok=True)
    ports = [free_port() for _ in range(workers)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"} if legacy_keras else dict(os.environ)
    launcher = _launcher(env)
    first_request = launcher.requests + 1  # every worker forked for this call, known here or not
    commands, processes, outputs = [], [], []
    try:
        for index in range(workers):
            arguments = json.dumps({**options, **worker_options.get(index, {})})
            commands.append([sys.executable, script, os.path.abspath(directory), arguments])
            out, err = (tempfile.NamedTemporaryFile("w+", prefix=f"worker{index}-", suffix=suffix)
                        for suffix in (".out", ".err"))
            outputs.append((out, err))
            processes.append(launcher.start(commands[-1], {**env, "TF_CONFIG": tf_config(addresses, index)},
                                            stdout=out.name, stderr=err.name))
        _wait(processes, timeout, grace)
        reports, stderr = [], []
        for out, err in outputs:
            out.seek(0)
            err.seek(0)
            reports.append(_reports(out))
            stderr.append(err.read()[-3000:])
        return ClusterRun(commands, ports, [p.pid for p in processes], reports,
                          [p.returncode for p in processes], stderr)
    finally:
        try:
            if launcher.alive():  # a launcher that died took its workers with it (PR_SET_PDEATHSIG)
                launcher.kill_started_since(first_request)
                for process in processes:
                    process.wait()
        finally:
            for out, err in outputs:
                out.close()
                err.close()


def _reports(lines):
    """The JSON lists among a worker's output lines (`report`'s); other lines, such as a printed
    Python list, are the script's own output and are skipped."""
    found = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, list):
            found.append(value)
    return found


def _wait(processes, timeout, grace):
    """Wait until every process ended; once one has, kill the others still running after `grace`
    seconds, and every one still running after `timeout` seconds (RuntimeError)."""
    start, first_end = time.monotonic(), None
    while any(p.poll() is None for p in processes):
        now = time.monotonic()
        if first_end is None and any(p.poll() is not None for p in processes):
            first_end = now
        if first_end is not None and now - first_end >= grace:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        if now - start > timeout:
            for p in processes:
                if p.poll() is None:
                    p.kill()
            raise RuntimeError(f"the cluster did not finish within {timeout} s; its workers were killed")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# The launcher: importing TensorFlow costs seconds of CPU per process; the launcher pays it once and
# forks each worker from there (a fork takes milliseconds). A forked worker is still a process of its
# own: its own TensorFlow runtime and gRPC server, its own exit code, killed alone by SIGKILL.

_HELPERS_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve_workers(tensorflow=True):
    """The launcher's process: import TensorFlow (no op runs before a fork), then read requests from
    stdin, one JSON line each: ["start", {"id": ID, ...}] forks a worker and answers "pid ID PID";
    ["kill", ID] SIGKILLs that request's worker if not yet reaped. Each reaped worker is reported as
    "exit ID CODE": by request, since a PID can be reused by a later worker.
    At the end of stdin (the parent closed it, or died) every worker left is killed and reaped, then
    it ends (answers the parent can no longer read are dropped). It ignores SIGINT: interrupting the notebook's kernel (jupyter signals the kernel's
    whole process group) interrupts a cluster's workers, not the launcher.
    (`tensorflow=False`: import nothing first, for tests of the launcher itself.)"""
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Python set at start-up, for the workers
    if tensorflow:
        import tensorflow as tf

        tf.distribute.MultiWorkerMirroredStrategy, tf.keras.Sequential  # noqa: B018 (load lazy modules)
    def answer(line):
        try:
            os.write(1, line.encode() + b"\n")
        except BrokenPipeError:  # the parent is gone: its workers are still reaped
            pass

    answer("ready")
    workers, pending, reading = {}, b"", True  # request id -> PID, until reaped
    while reading or workers:
        if reading and select.select([0], [], [], 0.02 if workers else None)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                reading = False
                for pid in workers.values():
                    os.kill(pid, signal.SIGKILL)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                command, value = json.loads(line)
                if command == "start":
                    launcher, request = os.getpid(), value.pop("id")
                    pid = os.fork()
                    if pid == 0:
                        _run_as_worker(**value, launcher=launcher, sigint=sigint)  # never returns
                    workers[request] = pid
                    answer(f"pid {request} {pid}")
                elif command == "kill" and value in workers:
                    os.kill(workers[value], signal.SIGKILL)
        elif not reading:
            time.sleep(0.02)
        for request, pid in list(workers.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del workers[request]
                answer(f"exit {request} {os.waitstatus_to_exitcode(status)}")


def _run_as_worker(argv, env, cwd, stdout, stderr, launcher, sigint):
    """In the forked child: run SCRIPT as ``python SCRIPT ARGS...`` (argv) would (its sys.argv, an
    absolute `__file__`, sys.path[0], folder, environment, SIGINT handler, outputs and exit code),
    then end at once with `os._exit`: atexit handlers do not run and non-daemon threads are not
    waited for. The worker dies with its launcher (PR_SET_PDEATHSIG), so no worker outlives a
    launcher that died. The output files are created if missing, and appended to."""
    code = 1
    try:
        _die_with_parent(launcher)
        signal.signal(signal.SIGINT, sigint)  # Python's at start-up: its handler, or ignored if inherited so
        written = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, stdout, written), (2, stderr, written)):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)  # stdin is not the launcher's pipe; stdout and stderr the files
            os.close(opened)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv[1:])
        sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))  # as `python SCRIPT` sets it
        _run_as_main(os.path.abspath(sys.argv[0]))
        code = 0
    except SystemExit as exit_:  # as Python does: None is 0, an integer is kept, a message is printed, 1
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt as error:  # as Python does: the traceback, then death by SIGINT (-2)
        _print_from_script(error)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as error:  # noqa: BLE001 (printed to the worker's stderr, as Python does)
        _print_from_script(error)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _print_from_script(error):
    """Report `error` as Python would for the script: through `sys.excepthook`, with a traceback
    that starts at the script's frame (without this module's)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    sys.excepthook(type(error), error.with_traceback(tb), tb)  # the default hook prints error's own


def _run_as_main(path):
    """Run the script at `path` as Python runs `python SCRIPT`: a fresh `__main__` module whose
    `__file__` is the absolute path (sys.argv[0] stays as given)."""
    main = types.ModuleType("__main__")
    main.__file__, main.__cached__, main.__builtins__ = path, None, builtins
    sys.modules["__main__"] = main
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec")
    exec(code, main.__dict__)


def _die_with_parent(parent):
    """Have the kernel SIGKILL this process when its parent ends (Linux); if the parent `parent` has
    already ended, end now."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


@contextlib.contextmanager
def _interrupts_deferred():
    """In the main thread: a SIGINT that arrives inside the block takes effect once it has ended
    (KeyboardInterrupt there, with Python's handler). Elsewhere, signals are not delivered anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived:
            signal.raise_signal(signal.SIGINT)


class WorkerLauncher:
    """A process that imported TensorFlow once, in environment `env`, and forks workers on request."""

    def __init__(self, env, tensorflow=True, timeout=120, answer_timeout=30):
        self.env, self.answer_timeout = dict(env), answer_timeout
        self._log = tempfile.TemporaryFile()
        self._changed = threading.Condition()
        self._ready, self._ended, self._pids, self._exits = False, False, {}, {}  # by request id
        self.requests, self._abandoned = 0, set()  # start requests sent; those nobody waits for
        self._send_lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from helpers.distributed import serve_workers; "
                                   f"serve_workers({'' if tensorflow else 'tensorflow=False'})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=self.env,
            cwd=_HELPERS_PARENT)
        threading.Thread(target=self._read_answers, daemon=True).start()
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._ended, timeout)
        if not self._ready:
            log = self.log_tail()
            self.close()
            raise RuntimeError(f"the worker launcher did not start within {timeout} s ({self._state()}); "
                               "its log ends:\n" + log)

    def _read_answers(self):
        for line in self.process.stdout:
            event, *values = line.decode().split()
            with self._changed:
                if event == "ready":
                    self._ready = True
                elif event == "pid":  # a worker forked for a caller who gave up: killed at once
                    request, pid = map(int, values)
                    if request in self._abandoned:
                        self.kill(request)
                    self._pids[request] = pid
                elif event == "exit":
                    self._exits[int(values[0])] = int(values[1])
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _send(self, command, value):
        with self._send_lock:
            self.process.stdin.write(json.dumps([command, value]).encode() + b"\n")
            self.process.stdin.flush()

    def start(self, argv, env, stdout, stderr, cwd=None):
        """Fork a worker that runs argv[1] (a script) as the command `argv` would, in environment `env`,
        its standard output and error appended to the files `stdout` and `stderr`; its `ForkedWorker`."""
        with self._changed:
            try:
                with _interrupts_deferred():  # a counted request is a sent request, sent whole
                    self.requests += 1
                    request = self.requests
                    self._send("start", {"id": request, "argv": list(argv), "env": dict(env),
                                         "cwd": os.path.abspath(cwd or os.getcwd()),
                                         "stdout": os.path.abspath(stdout), "stderr": os.path.abspath(stderr)})
            except BrokenPipeError:
                raise self._ended_error() from None
            answered = False
            try:  # an interrupt here leaves answered False: the launcher forks the worker anyway
                answered = self._changed.wait_for(lambda: request in self._pids or self._ended,
                                                  self.answer_timeout)
            finally:
                if not answered:  # kill the worker now, or as soon as its PID arrives
                    self._abandoned.add(request)
                    if request in self._pids:
                        self.kill(request)
            if request not in self._pids:
                if self._ended:
                    raise self._ended_error()
                raise RuntimeError(f"the worker launcher did not answer within {self.answer_timeout} s "
                                   f"({self._state()}); the worker it may still fork will be killed")
            return ForkedWorker(self, request, self._pids[request])

    def kill_started_since(self, first_request, timeout=30):
        """SIGKILL every worker of start request `first_request` or later that is still running,
        also one whose PID has not arrived yet (killed when it does), and wait until the launcher
        has reaped each of them (RuntimeError after `timeout` seconds)."""
        requests = range(first_request, self.requests + 1)
        with self._changed:
            for request in requests:
                self._abandoned.add(request)
                if request in self._pids and request not in self._exits:
                    self.kill(request)
            if not self._changed.wait_for(lambda: self._ended or all(
                    request in self._exits for request in requests), timeout):
                raise RuntimeError(f"the worker launcher ({self._state()}) did not reap the workers of "
                                   f"start requests {list(requests)} within {timeout} s")

    def _ended_error(self, what_else=""):
        """The RuntimeError for a launcher that ended: its PID, exit code and log."""
        self.process.wait(timeout=10)
        return RuntimeError(f"the worker launcher {self._state()}{what_else}; its log ends:\n" + self.log_tail())

    def _state(self):
        """'process PID, running' or 'process PID, ended with exit code CODE' (-9: SIGKILL)."""
        code = self.process.poll()
        return f"process {self.process.pid}, " + ("running" if code is None else f"ended with exit code {code}")

    def exit_code(self, request):
        """The exit code of start request `request`'s worker, or None while it runs."""
        with self._changed:
            if request not in self._exits and self._ended:
                raise self._ended_error(f", and with it worker {self._pids.get(request)} "
                                        "(each worker dies with its launcher)")
            return self._exits.get(request)

    def kill(self, request):
        """SIGKILL start request `request`'s worker, unless the launcher has already reaped it (so
        never a later process that was given the same PID)."""
        self._send("kill", request)

    def wait(self, request, timeout=None):
        with self._changed:
            if not self._changed.wait_for(lambda: request in self._exits or self._ended, timeout):
                raise subprocess.TimeoutExpired(f"worker {self._pids.get(request)}", timeout)
        return self.exit_code(request)

    def alive(self):
        return self.process.poll() is None and not self._ended

    def close(self):
        """End the launcher: it kills and reaps any worker left, then exits."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_tail(self, lines=15):
        """The last `lines` lines of the launcher's standard error, or "(nothing)"."""
        self._log.seek(0)
        return "".join(self._log.read().decode(errors="replace").splitlines(True)[-lines:]) or "(nothing)"


class ForkedWorker:
    """One worker forked by a `WorkerLauncher`, with the part of `subprocess.Popen`'s interface that
    `run_cluster` uses: `pid`, `returncode`, `poll()`, `kill()` (SIGKILL), `wait()`."""

    def __init__(self, launcher, request, pid):
        self._launcher, self.request, self.pid, self.returncode = launcher, request, pid, None

    def poll(self):
        self.returncode = self._launcher.exit_code(self.request)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            self._launcher.kill(self.request)

    def wait(self, timeout=None):
        self.returncode = self._launcher.wait(self.request, timeout)
        return self.returncode


_LAUNCHERS = {}  # TF_USE_LEGACY_KERAS value -> the WorkerLauncher for that Keras
_BOOKKEEPING = ("PYTEST_CURRENT_TEST",)  # changes with every test; TensorFlow never reads it


def _launcher(env):
    """The launcher for environment `env`: the running one if it was started in the same environment,
    else a new one (what TensorFlow read from the environment at import must be the workers' own).
    Each worker still gets `env` itself, pytest's bookkeeping variable included."""
    def compared(variables):
        return {name: value for name, value in variables.items() if name not in _BOOKKEEPING}

    key = env.get("TF_USE_LEGACY_KERAS")
    launcher = _LAUNCHERS.get(key)
    if launcher is not None and (compared(launcher.env) != compared(env) or not launcher.alive()):
        launcher.close()
        launcher = None
    if launcher is None:
        launcher = _LAUNCHERS[key] = WorkerLauncher(env)
    return launcher


@atexit.register
def _close_launchers():
    while _LAUNCHERS:
        _LAUNCHERS.popitem()[1].close()
