"""Chapter 10's training runs that get killed: the trainer, a launcher that forks them, the kill loop.

`train` is an ordinary `CheckpointManager` loop (restore the latest, train, save every `interval`
steps). It reports each step, and two moments inside `manager.save()`, through `report`; run by
the `Launcher`, each report waits for the parent's "go", so the parent can SIGKILL the run at an
exact step or phase of a save instead of after a wall-clock sleep, and a kill log is the same on
every run. The Keras jobs (`keras_fit`) do the same for `ModelCheckpoint` and `BackupAndRestore`.

Command line: ``python -m helpers.resumable train DIRECTORY [--steps N] [--interval K]`` runs
`train` with no pauses; ``python -m helpers.resumable --serve`` is the launcher's process.
"""
import contextlib
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np

STEPS, INTERVAL = 60, 5
# Where tests/test_when_training_dies.py kills `train` (the chapter quotes their number): the first
# save twice (before its merge, then before its state file), a save whose files are complete, two
# kills between the same two saves, saves after max_to_keep starts deleting, and the last save.
TEST_PLAN = [("merge", 5), ("state", 5), ("state", 10), ("step", 12), ("step", 13), ("merge", 25),
             ("state", 40), ("step", 44), ("state", 55), ("merge", 60)]
TEST_KILLS = len(TEST_PLAN)
PHASES = {"step": "after a step", "merge": "in save(): shards in _temp, not merged",
          "state": "in save(): files written, state file not updated"}


def _print_report(event, value):
    print(event, value, flush=True)


def build(directory, max_to_keep=3):
    """A small seeded model, Adam, a shuffled `tf.data` iterator and a step counter under a manager."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(1)])
    optimizer = tf.keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)  # built now, so a restore lands at once
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().shuffle(32, seed=0).batch(8)
    checkpoint = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), model=model,
                                     optimizer=optimizer, data=iter(data))
    return checkpoint, tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


def train(directory, steps=STEPS, interval=INTERVAL, report=_print_report):
    """Restores the latest checkpoint in `directory`, trains to `steps`, saves every `interval` steps."""
    import tensorflow as tf
    if steps % interval:
        raise ValueError(f"steps={steps} must be a multiple of interval={interval}, so the run "
                         "ends with a save")
    checkpoint, manager = build(directory)
    checkpoint.restore(manager.latest_checkpoint)  # None on the first run: nothing to restore
    model, optimizer = checkpoint.model, checkpoint.optimizer
    report("start", int(checkpoint.step))

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))

    with _reports_inside_save(report, checkpoint.step):
        while int(checkpoint.step) < steps:
            train_step(*next(checkpoint.data))
            checkpoint.step.assign_add(1)
            report("step", int(checkpoint.step))
            if int(checkpoint.step) % interval == 0:
                manager.save()
    report("done", int(checkpoint.step))


@contextlib.contextmanager
def _reports_inside_save(report, step):
    """Reports "merge" when a save's shards are in `<prefix>_temp/` and "state" when its files are
    in place but the `checkpoint` state file is not yet updated: the two moments a kill tests."""
    from tensorflow.python.checkpoint import checkpoint_management, functional_saver
    io_ops = functional_saver.gen_io_ops
    merge, record = io_ops.merge_v2_checkpoints, checkpoint_management.update_checkpoint_state_internal

    def paused_merge(*args, **kwargs):
        report("merge", int(step))
        return merge(*args, **kwargs)

    def paused_record(*args, **kwargs):
        report("state", int(step))
        return record(*args, **kwargs)

    io_ops.merge_v2_checkpoints = paused_merge
    checkpoint_management.update_checkpoint_state_internal = paused_record
    try:
        yield
    finally:
        io_ops.merge_v2_checkpoints = merge
        checkpoint_management.update_checkpoint_state_internal = record


def async_train(directory, steps=20, interval=5, report=_print_report):
    """`train`'s loop with `CheckpointOptions(enable_async=True)` saves, on plain `tf.Variable`s
    and a hand-written SGD step (Keras 3 models fail at the second async save, chapter 6).

    "returned" comes from the training thread and "merge" from the save's background thread, so
    each "merge" waits (up to 60 s) for its save's "returned": the order of the reports is then the
    order of the events, not the scheduler's. A `save()` that blocked until its files were written
    would show "merge" first, after that wait."""
    import tensorflow as tf
    returned = threading.Semaphore(0)

    def report_in_order(event, value, report=report):
        if event == "merge":
            returned.acquire(timeout=60)
        report(event, value)
        if event == "returned":
            returned.release()

    report = report_in_order
    weights = tf.Variable(tf.zeros([4, 1]))
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step, weights=weights)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    checkpoint.restore(manager.latest_checkpoint)
    report("start", int(step))
    x = tf.constant(np.random.default_rng(0).normal(size=(steps, 8, 4)).astype("float32"))
    options = tf.train.CheckpointOptions(enable_async=True)
    with _reports_inside_save(report, step):
        while int(step) < steps:
            batch = x[int(step)]
            target = batch @ tf.constant([[1.0], [-2.0], [0.5], [3.0]])
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((batch @ weights - target) ** 2)
            weights.assign_sub(0.1 * tape.gradient(loss, weights))
            step.assign_add(1)
            report("step", int(step))
            if int(step) % interval == 0:
                manager.save(options=options)
                report("returned", int(step))
        checkpoint.sync()
    report("done", int(step))


def final_values(prefix):
    """Every numeric value of a checkpoint, as bytes (the iterator's variant state is left out)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key).tobytes()
            for key, dtype in sorted(reader.get_variable_to_dtype_map().items())
            if dtype != tf.variant and key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def keras_fit(directory, callback, epochs=4, batches=4, report=_print_report):
    """A small Keras `fit` with `ModelCheckpoint` ("model_checkpoint", one `.weights.h5` rewritten
    each epoch) or `BackupAndRestore` ("backup" per epoch, "backup_batches" every 2 batches).

    Reports "epoch E" at each epoch's start, "batch E.B" after each batch, "write E" when Keras
    starts writing a weights file (after it opened it), and "done" with the epochs run.
    """
    import tensorflow as tf
    from keras.src.saving import saving_lib
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(1)])
    model.compile(tf.keras.optimizers.Adam(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(8 * batches, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
    epoch_now = [0]

    class Reports(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epoch_now[0] = epoch
            report("epoch", epoch)

        def on_train_batch_end(self, batch, logs=None):
            report("batch", f"{epoch_now[0]}.{batch}")

    if callback == "model_checkpoint":
        keras_callback = tf.keras.callbacks.ModelCheckpoint(
            os.path.join(directory, "model.weights.h5"), save_weights_only=True)
    elif callback in ("backup", "backup_batches"):
        keras_callback = tf.keras.callbacks.BackupAndRestore(
            os.path.join(directory, "backup"), save_freq="epoch" if callback == "backup" else 2)
    else:
        raise ValueError(f"callback must be 'model_checkpoint', 'backup' or 'backup_batches', "
                         f"not {callback!r}")
    save_state = saving_lib._save_state
    depth = [0]

    def reporting_save_state(*args, **kwargs):  # Keras's recursive writer of every layer's weights
        depth[0] += 1
        if depth[0] == 1:
            report("write", epoch_now[0])
        try:
            return save_state(*args, **kwargs)
        finally:
            depth[0] -= 1

    saving_lib._save_state = reporting_save_state
    try:
        history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                            callbacks=[keras_callback, Reports()])
    finally:
        saving_lib._save_state = save_state
    model.save_weights(os.path.join(directory, "final.weights.h5"))
    report("done", len(history.epoch))


def resume_outcome(directory, report=_print_report):
    """What a fresh program gets from the usual `checkpoint.restore(manager.latest_checkpoint)`:
    reports "outcome" with the error's first line, or the step training would start from."""
    checkpoint, manager = build(directory)
    try:
        checkpoint.restore(manager.latest_checkpoint)
    except Exception as error:  # noqa: BLE001 (what the reader would see, whatever it is)
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        report("outcome", f"{type(error).__name__}: {text}")
    else:
        report("outcome", f"no error: latest_checkpoint is {manager.latest_checkpoint}, "
                          f"training starts at step {int(checkpoint.step)}")


# ---------------------------------------------------------------------------------------------
# The launcher: one process that imports TensorFlow once and forks a fresh process per run.

def _read_line(fd):
    chunks = []
    while True:
        byte = os.read(fd, 1)  # unbuffered: nothing meant for a later reader is consumed
        if not byte:
            return None
        if byte == b"\n":
            return b"".join(chunks).decode()
        chunks.append(byte)


_REPORT_LOCK = threading.Lock()


def _piped_report(event, value):
    with _REPORT_LOCK:  # an async save reports from its own thread: one report, one answer at a time
        os.write(1, f"{event} {value}\n".encode())
        if _read_line(0) != "go":
            os._exit(3)


def serve():
    """The launcher's process: import TF, then fork one run per JSON line read from stdin."""
    import tensorflow as tf  # imported once here; no op runs before a fork
    import keras.src.saving.saving_lib  # noqa: F401
    tf.keras.optimizers.Adam, tf.keras.callbacks.BackupAndRestore  # noqa: B018 (load lazy modules)
    os.write(1, b"ready\n")
    while (line := _read_line(0)) is not None:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the run: a separate process, killed with SIGKILL by the parent
            code = 1
            try:
                os.write(1, f"pid {os.getpid()}\n".encode())
                module, name = job["func"].split(":")
                getattr(importlib.import_module(module), name)(**job["kwargs"], report=_piped_report)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {os.waitstatus_to_exitcode(status)}\n".encode())


class Run:
    """One forked run: its events, one at a time; `go()` lets it continue, `kill()` SIGKILLs it."""

    def __init__(self, launcher):
        self._launcher = launcher
        self.pid = int(launcher._expect("pid"))
        self.exit_code = None

    def next_event(self):
        """The next (event, value) the run reported, or ("exit", code) when it has ended."""
        event, value = self._launcher._read()
        if event == "exit":
            self.exit_code = int(value)
        return event, value

    def go(self):
        self._launcher._write("go")

    def kill(self):
        """SIGKILL: no handler, no `finally`, no flush runs in the child. Returns its exit code."""
        os.kill(self.pid, signal.SIGKILL)
        while self.exit_code is None:
            self.next_event()
        return self.exit_code


class Launcher:
    """Starts ``python -m helpers.resumable --serve`` once and forks it for each run.

    Importing TensorFlow takes seconds; a fork takes milliseconds, and the run is still its own
    process, killed by SIGKILL with its files as it left them.
    """

    def __init__(self):
        self._log = tempfile.NamedTemporaryFile(prefix="launcher-", suffix=".log", delete=False)
        # This process's environment, unchanged: stderr (TensorFlow's log lines) goes to the log file.
        self.process = subprocess.Popen([sys.executable, "-m", "helpers.resumable", "--serve"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log)
        self._expect("ready")

    def start(self, func, **kwargs):
        """Forks a run of `func` (``"module:function"``) with `kwargs`; returns its `Run`."""
        if not isinstance(func, str) or func.count(":") != 1:
            raise ValueError(f"func must be 'module:function', like 'helpers.resumable:train', not {func!r}")
        self._write(json.dumps({"func": func, "kwargs": kwargs}))
        return Run(self)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        os.unlink(self._log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, line):
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def _read(self):
        line = self.process.stdout.readline().decode()
        if not line:
            raise RuntimeError("the launcher process ended; its log ends:\n" + self.log_tail())
        event, _, value = line.rstrip("\n").partition(" ")
        return event, value

    def _expect(self, event):
        got, value = self._read()
        if got != event:
            raise RuntimeError(f"expected {event!r} from the launcher, got {got!r} {value!r}; "
                               "its log ends:\n" + self.log_tail())
        return value

    def log_tail(self, lines=15):
        with open(self._log.name, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def run_to_end(launcher, func, **kwargs):
    """Runs `func` in a forked process with no kill; returns its events (exit code checked)."""
    run = launcher.start(func, **kwargs)
    events = []
    while (event := run.next_event())[0] != "exit":
        events.append(event)
        run.go()
    if run.exit_code != 0:
        raise RuntimeError(f"{func} exited with {run.exit_code}; log:\n" + launcher.log_tail())
    return events


def kill_plan(kills, seed, steps=STEPS, interval=INTERVAL):
    """`kills` (phase, step) kill points in step order, chosen by a seeded `random.Random`:
    half inside saves (shards not merged / state file not updated), half between steps."""
    if kills < 1 or steps % interval:
        raise ValueError(f"need kills >= 1 and steps ({steps}) a multiple of interval ({interval})")
    rng = random.Random(seed)
    save_steps = list(range(interval, steps, interval))
    other_steps = [s for s in range(1, steps) if s % interval]
    in_save = min(kills // 2, len(save_steps))
    if kills - in_save > len(other_steps):
        raise ValueError(f"{kills} kills do not fit in {steps} steps")
    plan = [(rng.choice(["merge", "state"]), s) for s in rng.sample(save_steps, in_save)]
    plan += [("step", s) for s in rng.sample(other_steps, kills - in_save)]
    return sorted(plan, key=lambda point: point[1])


def train_with_kills(launcher, directory, plan, steps=STEPS, interval=INTERVAL):
    """Runs `train` in `directory`, SIGKILLing it at each (phase, step) of `plan`, restarting
    until it finishes. Returns the kill log: one dict per kill, and the finishing run's start."""
    from .checkpoints import interrupted_saves
    pending, log = list(plan), []
    while True:
        run = launcher.start("helpers.resumable:train", directory=directory, steps=steps,
                             interval=interval)
        event, value = run.next_event()
        assert event == "start", (event, value)
        if log:
            log[-1]["resumed from"] = int(value)
            log[-1]["steps redone"] = log[-1]["killed at step"] - int(value)
        run.go()
        while True:
            event, value = run.next_event()
            if event == "exit":
                if run.exit_code != 0:
                    raise RuntimeError(f"train exited with {run.exit_code}; log:\n" + launcher.log_tail())
                if pending:
                    raise ValueError(f"the run finished before reaching the kill points {pending}: "
                                     f"each must be a (phase, step) with phase in {sorted(PHASES)}, "
                                     "in step order, with steps the run reaches")
                return log
            if pending and (event, int(value)) == pending[0]:
                pending.pop(0)
                code = run.kill()
                log.append({"kill": len(log) + 1, "killed at step": int(value),
                            "phase": PHASES[event], "exit code": code,
                            "_temp folders": len(interrupted_saves(directory))})
                break
            run.go()


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run as the launcher's process")
    parser.add_argument("job", nargs="?", choices=["train"])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--interval", type=int, default=INTERVAL)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if args.job != "train" or not args.directory:
        parser.error("give --serve, or: train DIRECTORY")
    train(args.directory, args.steps, args.interval)


if __name__ == "__main__":
    main()
