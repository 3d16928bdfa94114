"""Chapter 12's multi-worker runs: a `MultiWorkerMirroredStrategy` cluster of Python processes that
address each other at 127.0.0.1 (TensorFlow's gRPC server in each still listens on every interface).

A worker is a script the chapter writes on the page (`%%writefile train_worker.py`). `run_cluster`
starts it once per worker, as ``[sys.executable, SCRIPT, abspath(DIRECTORY), OPTIONS_JSON]``, with
that worker's own `TF_CONFIG` (ports picked free at run time), collects the JSON lines each worker
prints, and leaves no process behind. A worker script imports from here `report` (one JSON line for
the parent), `die` (SIGKILL itself: a lost machine), `write_directory` (where a worker saves),
`run_worker` (its options, its error, its exit) and `build_model` (the chapter's small Keras model). Each worker decides
itself when it dies (at a step or batch it was given), so a run's outcome does not depend on how
busy the machine is.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

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
    """What one `run_cluster` call saw: per worker, its command line (the argument list it was started
    with), reports, exit code, PID and stderr tail."""

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

    Worker i runs ``[sys.executable, script, abspath(directory), OPTIONS]`` (its `commands[i]`) with
    `TF_CONFIG` naming it worker i, where OPTIONS is the JSON of `options` plus `worker_options[i]`;
    `legacy_keras` also sets `TF_USE_LEGACY_KERAS=1`, so that `tf.keras` is Keras 2. Once one worker
    has ended, the others get `grace` seconds to end too (a synchronous job fails without any of its
    workers) and are then killed, as a cluster manager restarts a whole job. Every process still
    running is killed, and every process reaped, before this returns, also on timeout (RuntimeError)
    or on an exception.
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
    commands, processes, outputs = [], [], []
    try:
        for index in range(workers):
            arguments = json.dumps({**options, **worker_options.get(index, {})})
            commands.append([sys.executable, script, os.path.abspath(directory), arguments])
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            outputs.append((out, err))
            processes.append(subprocess.Popen(commands[-1], stdout=out, stderr=err,
                                              env={**env, "TF_CONFIG": tf_config(addresses, index)}))
        _wait(processes, timeout, grace)
        reports, stderr = [], []
        for out, err in outputs:
            out.seek(0)
            err.seek(0)
            reports.append([json.loads(line) for line in out if line.startswith("[")])
            stderr.append(err.read()[-3000:])
        return ClusterRun(commands, ports, [p.pid for p in processes], reports,
                          [p.returncode for p in processes], stderr)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for out, err in outputs:
            out.close()
            err.close()


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
