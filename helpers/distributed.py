"""Chapter 12's multi-worker runs: a 2-worker `MultiWorkerMirroredStrategy` cluster on 127.0.0.1.

`run_cluster` starts one Python process per worker with its own `TF_CONFIG` (ports picked free at
run time), collects what each worker reports, and always leaves no process behind: a worker that
kills itself (the chapter's stand-in for a lost machine) takes the cluster down, as a cluster
manager does with a synchronous job, and every process still running at the end or after
`timeout` is killed.

The workers are functions of this module, run as ``python -m helpers.distributed WORKER DIRECTORY
[--kill-at K]`` by `run_cluster`. Each one decides itself when it dies (at a step or batch it was
given), so a run's outcome does not depend on how busy the machine is.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ._child import package_env
from .model_server import free_port

STEPS, INTERVAL, GLOBAL_BATCH = 12, 5, 4  # `train`: steps in all, a save every INTERVAL steps
EPOCHS, BATCHES = 4, 4  # `keras2_fit`: epochs of 4 batches
WORKERS = ("train", "keras2_fit", "preempted")


def tf_config(addresses, index):
    """The `TF_CONFIG` JSON of worker `index` in a cluster of `addresses` ('host:port')."""
    if not 0 <= index < len(addresses):
        raise ValueError(f"worker index {index} is not in a cluster of {len(addresses)} workers")
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def write_directory(directory, task_type, task_id):
    """Where this worker writes a save: the chief (task type 'chief', or worker 0 in a cluster of
    workers only, as here) into `directory`, every other worker into a `workertemp_<id>` folder
    inside it that it deletes after the save (tf_keras's layout)."""
    if task_type not in ("worker", "chief"):
        raise ValueError(f"task_type must be 'worker' or 'chief', got {task_type!r}")
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0)
    return directory if is_chief else os.path.join(directory, f"workertemp_{task_id}")


def build_model():
    """The chapter's model: 4 inputs, a hidden layer of 3, one output (Keras 3 or tf_keras)."""
    import tensorflow as tf
    return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, activation="relu"),
                                tf.keras.layers.Dense(1)])


def _report(*values):
    print(json.dumps(values), flush=True)


def _die():
    """SIGKILL this process: no `finally`, no exit handler runs (a lost machine)."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _dataset(tf):
    x = tf.reshape(tf.range(16 * STEPS, dtype=tf.float32) / 64, (-1, 4))
    return tf.data.Dataset.from_tensor_slices((x, tf.reduce_sum(x, 1, keepdims=True)))


def train(directory, kill_at=None, chief_only_save=False, try_fit=False):
    """A custom training loop under MultiWorkerMirroredStrategy, saved by a CheckpointManager.

    Every worker calls `manager.save()` every INTERVAL steps; only the chief's folder holds
    checkpoints, another worker writes into `write_directory` and deletes it afterwards. A restart
    restores the chief's latest checkpoint. With `kill_at` the worker SIGKILLs itself before that
    step; with `chief_only_save` only the chief saves; with `try_fit` each worker first tries
    Keras 3's `model.fit` and reports its error.
    """
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task_type, task_id = strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model()
        optimizer = tf.keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64)
        # summed over the workers when read: reading it is a collective operation
        seen = tf.Variable(0.0, synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.SUM)
    if try_fit:
        model.compile(optimizer, loss="mse")
        try:
            model.fit(_dataset(tf).batch(GLOBAL_BATCH), epochs=1, verbose=0)
            _report("fit", "no error")
        except Exception as error:  # noqa: BLE001 (the error is what the chapter shows)
            _report("fit", f"{type(error).__name__}: {str(error).strip()[:2000]}")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, seen=seen)
    manager = tf.train.CheckpointManager(
        checkpoint, write_directory(directory, task_type, task_id), max_to_keep=2)
    latest = tf.train.latest_checkpoint(directory)  # the chief's: every worker restores the same
    checkpoint.restore(latest)
    _report("start", int(step.numpy()), os.path.relpath(latest, directory) if latest else None)
    data = _dataset(tf).repeat().batch(GLOBAL_BATCH).skip(int(step.numpy()))
    batches = iter(strategy.experimental_distribute_dataset(data))

    @tf.function
    def train_step(batch):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(x) - y)) / GLOBAL_BATCH
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # Keras 3 and tf_keras
            seen.assign_add(tf.cast(tf.shape(x)[0], tf.float32))
        strategy.run(replica_step, batch)

    while int(step.numpy()) < STEPS:
        if kill_at == int(step.numpy()):
            _report("killed", int(step.numpy()))
            _die()
        train_step(next(batches))
        step.assign_add(1)
        if int(step.numpy()) % INTERVAL == 0 and (task_id == 0 or not chief_only_save):
            path = manager.save()
            if manager.directory != directory:
                shutil.rmtree(manager.directory)  # a non-chief worker's copy is not kept
            _report("saved", int(step.numpy()), os.path.relpath(path, directory))
    _report("done", int(step.numpy()), float(seen.numpy()),
            [w.numpy().round(6).tolist() for w in model.weights])


def preempted(directory, kill_at=None):
    """A loop run by `PreemptionCheckpointHandler`: with `kill_at`, this worker sends itself
    SIGTERM (the platform's warning) before that step; the handler then has every worker save at
    the same step and call `exit_fn`, which exits with code 42. A restart resumes there."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64)
    config = tf.distribute.experimental.TerminationConfig(exit_fn=lambda: _exit(42))
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, tf.train.Checkpoint(step=step), directory, config)
    _report("start", int(step.numpy()))

    @tf.function
    def train_step():  # an all-reduce, as in training, keeps the workers in step
        def replica_step():
            workers = tf.distribute.get_replica_context().all_reduce("SUM", tf.ones([]))
            step.assign_add(tf.cast(workers / strategy.num_replicas_in_sync, tf.int64))
        strategy.run(replica_step)

    while int(step.numpy()) < STEPS:
        if kill_at == int(step.numpy()):
            _report("sigterm", int(step.numpy()))
            os.kill(os.getpid(), signal.SIGTERM)
        handler.run(train_step)
    _report("done", int(step.numpy()))


def _exit(code):
    """`exit_fn` of `preempted`: report, then end the process with `code` at once."""
    _report("exit", code)
    sys.stdout.flush()
    os._exit(code)


def keras2_fit(directory, kill_at=None, save_freq="epoch"):
    """`fit` with `BackupAndRestore(save_freq=...)` under MultiWorkerMirroredStrategy, run with
    tf_keras (Keras 2).

    Reports every batch it starts; with `kill_at` ('epoch.batch') it SIGKILLs itself at the start
    of that batch.
    """
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model()
        model.compile(tf.keras.optimizers.SGD(0.05), loss="mse")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = _dataset(tf).take(BATCHES * GLOBAL_BATCH).batch(GLOBAL_BATCH).with_options(options)

    class Reports(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            _report("batch", f"{self.epoch}.{batch}")
            if kill_at == f"{self.epoch}.{batch}":
                _report("killed", kill_at)
                _die()

    backup = tf.keras.callbacks.BackupAndRestore(os.path.join(directory, "backup"), save_freq=save_freq)
    model.fit(data, epochs=EPOCHS, verbose=0, callbacks=[backup, Reports()])
    _report("done", EPOCHS, None, [w.numpy().round(6).tolist() for w in model.weights])


class ClusterRun:
    """What one `run_cluster` call saw: per worker, its reports, exit code, PID and stderr tail."""

    def __init__(self, ports, pids, reports, exit_codes, stderr):
        self.ports, self.pids, self.reports = ports, pids, reports
        self.exit_codes, self.stderr = exit_codes, stderr

    def events(self, worker, name):
        """The values of every report `name` of `worker`, in order."""
        return [values[1:] for values in self.reports[worker] if values[0] == name]

    def first(self, worker, name):
        """The first report `name` of `worker` (its values), or None."""
        found = self.events(worker, name)
        return found[0] if found else None


def run_cluster(worker, directory, workers=2, kill=None, legacy_keras=False, timeout=180, **options):
    """Run `worker` (a name in WORKERS) on `workers` local processes, one MWMS cluster, to the end.

    `kill=(index, at)` makes worker `index` SIGKILL itself at `at`; the other workers are then
    killed at once, as a cluster manager restarts a whole job (the rest of a synchronous cluster
    can only wait for the lost worker or fail). When a worker ends otherwise, the others get 20 s
    to end too. Every process is killed and reaped before this returns, also on timeout
    (RuntimeError) or on an exception.
    """
    if worker not in WORKERS:
        raise ValueError(f"worker must be one of {WORKERS}, got {worker!r}")
    if kill is not None and not 0 <= kill[0] < workers:
        raise ValueError(f"kill names worker {kill[0]}, but the cluster has {workers} workers")
    os.makedirs(directory, exist_ok=True)
    ports = [free_port() for _ in range(workers)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    env = package_env()
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    processes, outputs = [], []
    try:
        for index in range(workers):
            args = [sys.executable, "-m", "helpers.distributed", worker, os.path.abspath(directory)]
            if kill is not None and kill[0] == index:
                args += ["--kill-at", str(kill[1])]
            for name, value in options.items():  # True: a flag; False/None: nothing; else a value
                flag = f"--{name.replace('_', '-')}"
                args += [] if value in (False, None) else [flag] if value is True else [flag, str(value)]
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            outputs.append((out, err))
            processes.append(subprocess.Popen(args, stdout=out, stderr=err,
                                              env={**env, "TF_CONFIG": tf_config(addresses, index)}))
        _wait(processes, timeout)
        exit_codes = [p.returncode for p in processes]
        reports, stderr = [], []
        for out, err in outputs:
            out.seek(0)
            err.seek(0)
            reports.append([json.loads(line) for line in out if line.startswith("[")])
            stderr.append(err.read()[-3000:])
        return ClusterRun(ports, [p.pid for p in processes], reports, exit_codes, stderr)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for out, err in outputs:
            out.close()
            err.close()


def _wait(processes, timeout, grace=20):
    """Wait until every process ended. A worker that was SIGKILLed takes the others down at once
    (a cluster manager restarts the whole job); after any other ending they get `grace` s."""
    start, first_end = time.monotonic(), None
    while any(p.poll() is None for p in processes):
        now = time.monotonic()
        if first_end is None and any(p.poll() is not None for p in processes):
            first_end = now
        lost = any(p.poll() == -signal.SIGKILL for p in processes)
        if first_end is not None and (lost or now - first_end > grace):
            for p in processes:
                if p.poll() is None:
                    p.kill()
        if now - start > timeout:
            for p in processes:
                if p.poll() is None:
                    p.kill()
            raise RuntimeError(f"the cluster did not finish within {timeout} s; its workers were killed")
        time.sleep(0.05)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run one worker of chapter 12's cluster "
                                     "(TF_CONFIG must be set).")
    parser.add_argument("worker", choices=WORKERS)
    parser.add_argument("directory")
    parser.add_argument("--kill-at")
    parser.add_argument("--chief-only-save", action="store_true")
    parser.add_argument("--try-fit", action="store_true")
    parser.add_argument("--save-freq", default="epoch")
    args = parser.parse_args(argv)
    try:
        if args.worker == "train":
            train(args.directory, kill_at=None if args.kill_at is None else int(args.kill_at),
                  chief_only_save=args.chief_only_save, try_fit=args.try_fit)
        elif args.worker == "preempted":
            preempted(args.directory, kill_at=None if args.kill_at is None else int(args.kill_at))
        else:
            save_freq = int(args.save_freq) if args.save_freq.isdigit() else args.save_freq
            keras2_fit(args.directory, kill_at=args.kill_at, save_freq=save_freq)
    except Exception as error:  # noqa: BLE001 (reported to the parent, then a quick exit)
        _report("error", f"{type(error).__name__}: {str(error).strip()[:2000]}")
        sys.stdout.flush()
        os._exit(1)
    _leave_together()
    sys.stdout.flush()
    os._exit(0)  # a clean MultiWorkerMirroredStrategy shutdown takes seconds; nothing is left to do


def _leave_together(timeout_s=120):
    """Wait until every worker has finished before this one exits: a worker that leaves at once
    can still owe the others data of the last all-reduce (they pull it from its gRPC server), and
    they fail with `UnavailableError ... Connection reset by peer`. The chief hosts the barrier
    (TF's coordination service), so it stays a moment longer for the answers to reach the others."""
    from tensorflow.python.eager import context

    context.context().wait_at_barrier("helpers.distributed: finished", int(timeout_s * 1000))
    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
