"""Chapter 11's canaries: each fires when nothing blocks it and stays silent when a defence does.

The hostile artifacts are built here as the chapter builds them; their payload writes a canary file
in the current folder (a pytest temporary folder), never anywhere else. The sandbox has its own
tests (tests/test_sandbox.py), and chapter 11 runs these files in it and asserts the outcome.
"""
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest


def canaries(folder="."):
    return sorted(path.name for path in Path(folder).glob("canary-*"))


def clear(folder="."):
    for path in Path(folder).glob("canary-*"):
        path.unlink()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The chapter's hostile files in one folder: SavedModels, .keras/.h5 files, a checkpoint."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("downloads")
    old = os.getcwd()
    os.chdir(folder)
    try:
        class Hostile(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
            def serve(self, x):
                tf.io.write_file("canary-savedmodel.txt", "x")
                return {"y": 2.0 * x}

        class Sneaky(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
            def serve(self, x):
                tf.raw_ops.Save(filename="canary-sneaky.txt", tensor_names=["x"], data=[x])
                return {"y": 2.0 * x}

        for module, name in ((Hostile(), "hostile_savedmodel"), (Sneaky(), "sneaky_savedmodel")):
            tf.saved_model.save(module, name, signatures=module.serve)
        inputs = keras.Input((2,))
        payload = keras.layers.Lambda(lambda x: (open("canary-lambda.txt", "w").write("x"), x)[1])
        model = keras.Model(inputs, payload(inputs))
        model.save("lambda.keras")
        model.save("lambda.h5")
        tfsm = keras.layers.TFSMLayer("hostile_savedmodel", call_endpoint="serving_default")
        keras.Model(inputs, tfsm(inputs)).save("tfsm.keras")
        clear()
    finally:
        os.chdir(old)
    return folder


@pytest.fixture
def inside(artifacts, monkeypatch):
    monkeypatch.chdir(artifacts)
    clear()
    yield artifacts
    clear()


def call(path):
    import tensorflow as tf
    return tf.saved_model.load(path).signatures["serving_default"](x=tf.ones([1, 2]))


def test_savedmodel_canary_is_quiet_on_load_and_fires_on_call(inside):
    import tensorflow as tf
    loaded = tf.saved_model.load("hostile_savedmodel")
    assert canaries() == []
    loaded.signatures["serving_default"](x=tf.ones([1, 2]))
    assert canaries() == ["canary-savedmodel.txt"]


def test_scan_flags_writefile_exits_zero_and_passes_the_save_op(inside):
    from tensorflow.python.framework import meta_graph
    from tensorflow.python.tools import saved_model_cli, saved_model_utils
    graph = saved_model_utils.get_meta_graph_def("hostile_savedmodel", "serve").graph_def
    assert saved_model_cli._OP_DENYLIST == {"ReadFile", "WriteFile", "PrintV2"}
    assert set(meta_graph.ops_used_by_graph_def(graph)) & saved_model_cli._OP_DENYLIST == {"WriteFile"}
    sneaky = saved_model_utils.get_meta_graph_def("sneaky_savedmodel", "serve").graph_def
    assert not set(meta_graph.ops_used_by_graph_def(sneaky)) & saved_model_cli._OP_DENYLIST
    # (chapter 11 runs the command line on both models; nbval compares its output)
    call("sneaky_savedmodel")
    assert canaries() == ["canary-sneaky.txt"]  # passed the scan, and still writes


@pytest.mark.parametrize("file", ["lambda.keras", "lambda.h5", "tfsm.keras"])
def test_safe_mode_blocks_the_canary_and_unsafe_mode_lets_it_fire(inside, file):
    import keras
    import numpy as np
    with pytest.raises(ValueError, match="Requested the deserialization of a `(Lambda|TFSMLayer)`"):
        keras.saving.load_model(file)
    assert canaries() == []
    model = keras.saving.load_model(file, safe_mode=False)
    model(np.ones((1, 2), "float32"))
    assert canaries() in (["canary-lambda.txt"], ["canary-savedmodel.txt"])


def rewrite(source, target, edit):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "config.json":
                config = json.loads(data)
                edit(config["config"]["layers"][1]["config"])
                data = json.dumps(config)
            new.writestr(name, data)


def test_config_edits_are_refused_in_safe_mode(tmp_path, monkeypatch):
    import keras
    monkeypatch.chdir(tmp_path)
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(keras.ops.relu)(inputs)).save("relu.keras")
    keras.saving.load_model("relu.keras")  # a Keras function by name: loads in safe mode
    words = keras.Input((1,), dtype="string")
    keras.Model(words, keras.layers.StringLookup(vocabulary=["a"])(words)).save("lookup.keras")
    Path("secret.txt").write_text("hunter2\n")
    switch = {"module": "keras.config", "class_name": "function",
              "config": "enable_unsafe_deserialization", "registered_name": "function"}
    rewrite("relu.keras", "switch.keras", lambda layer: layer.update(function=switch))
    rewrite("lookup.keras", "secret.keras",
            lambda layer: layer.update(vocabulary=str(Path("secret.txt").resolve())))
    with pytest.raises(ValueError, match="not a modeling function"):
        keras.saving.load_model("switch.keras")
    with pytest.raises(TypeError, match="vocabulary file outside of the model archive"):
        keras.saving.load_model("secret.keras")
    leaked = keras.saving.load_model("secret.keras", safe_mode=False).layers[1].get_vocabulary()
    assert "hunter2" in [str(word) for word in leaked]  # the canary fires when unblocked


def test_a_checkpoint_value_steers_your_code(tmp_path, monkeypatch):
    import tensorflow as tf
    monkeypatch.chdir(tmp_path)

    class Reporter(tf.Module):
        def __init__(self):
            self.debug = tf.Variable(False)

        @tf.function
        def __call__(self, x):
            if self.debug:
                tf.io.write_file("canary-checkpoint.txt", tf.strings.as_string(x))
            return x

    for flag, expected in ((False, []), (True, ["canary-checkpoint.txt"])):
        theirs = Reporter()
        theirs.debug.assign(flag)
        prefix = tf.train.Checkpoint(model=theirs).write(f"ckpt-{flag}/ckpt")
        ours = Reporter()
        tf.train.Checkpoint(model=ours).read(prefix).assert_consumed()
        ours(tf.constant(1.0))
        assert canaries() == expected


def test_get_file_skips_a_traversing_archive_member(tmp_path, monkeypatch):
    import contextlib
    import keras
    monkeypatch.chdir(tmp_path)
    with tarfile.open("evil.tar.gz", "w:gz") as archive:
        for name in ("../../canary-getfile.txt", "ok.txt"):
            member = tarfile.TarInfo(name)
            member.size = 1
            archive.addfile(member, io.BytesIO(b"x"))
    (tmp_path / "cache").mkdir()  # else get_file silently falls back to /tmp/.keras
    with contextlib.redirect_stdout(io.StringIO()), pytest.warns(UserWarning, match="invalid path"):
        extracted = keras.utils.get_file("evil.tar.gz", origin=Path("evil.tar.gz").resolve().as_uri(),
                                         extract=True, cache_dir=str(tmp_path / "cache"))
    assert Path(extracted).resolve().is_relative_to((tmp_path / "cache").resolve()), extracted
    assert sorted(p.name for p in Path(extracted).iterdir()) == ["ok.txt"]
    assert not list(tmp_path.rglob("canary-*"))  # ../../ from the extraction folder is the cache
