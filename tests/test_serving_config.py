"""helpers.serving_config: the model config and batching files, and the offline layout's servers."""
import psutil
import pytest
import tensorflow as tf

from helpers.model_server import port_is_open
from helpers.serving_config import (offline_layout, read_batching_parameters, read_model_config, serve_layout,
                                    served_versions)

CONFIG = """model_config_list {
  config {
    name: "toy"
    base_path: "/models/toy"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 2 versions: 3 } }
    version_labels { key: "stable" value: 2 }
    version_labels { key: "canary" value: 3 }
  }
  config {
    name: "other"
    base_path: "/models/other"
    model_platform: "tensorflow"
  }
}
"""


def write(tmp_path, text, name="models.config"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_config_reads(tmp_path):
    config = read_model_config(write(tmp_path, CONFIG))
    toy, other = config.model_config_list.config
    assert dict(toy.version_labels) == {"stable": 2, "canary": 3}
    assert list(toy.model_version_policy.specific.versions) == [2, 3]
    assert other.model_version_policy.WhichOneof("policy_choice") is None


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, CONFIG.replace("version_labels { key: \"canary\"", "verison_labels { key: \"canary\""))
    with pytest.raises(ValueError, match=r"models\.config:8:5 : .*has no field named \"verison_labels\""):
        read_model_config(path)


@pytest.mark.parametrize("change, message", [
    (('value: 3 }', 'value: 4 }'), "label 'canary' points at version 4"),
    (('"/models/other"', '"models/other"'), "is relative"),
    (('name: "other"', 'name: "toy"'), "appears twice"),
    (('versions: 2 versions: 3', 'versions: 2'), "label 'canary' points at version 3"),
])
def test_configs_tf_serving_would_refuse_or_mis_serve(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        read_model_config(write(tmp_path, CONFIG.replace(*change)))


def test_labels_without_a_specific_policy_are_refused(tmp_path):
    text = CONFIG.replace("model_version_policy { specific { versions: 2 versions: 3 } }", "")
    with pytest.raises(ValueError, match="need a model_version_policy"):
        read_model_config(write(tmp_path, text))


def test_served_versions_follow_the_policy(tmp_path):
    config = read_model_config(write(tmp_path, CONFIG))
    toy, other = config.model_config_list.config
    assert served_versions(toy, [1, 2, 3, 4]) == [2, 3]
    assert served_versions(other, [1, 2, 3]) == [3]
    other.model_version_policy.latest.num_versions = 2
    assert served_versions(other, [1, 2, 3]) == [2, 3]
    other.model_version_policy.all.SetInParent()
    assert served_versions(other, [1, 2, 3]) == [1, 2, 3]


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16", "end with max_batch_size"),
    ("max_batch_size { value: 32 } allowed_batch_sizes: 16 allowed_batch_sizes: 8 allowed_batch_sizes: 32", "increase"),
    ("max_batch_size { value: 0 }", "max_batch_size is 0"),
    ("max_batch_size: 32", r"batching\.config:1:17 : .*Expected \"{\""),
])
def test_bad_batching_files_are_refused(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_batching_parameters(write(tmp_path, text, "batching.config"))


def export_toy(path, seed):
    tf.keras.utils.set_random_seed(seed)
    x = tf.keras.Input((1,), name="x")
    tf.keras.Model(x, tf.keras.layers.Dense(5)(x)).export(str(path), verbose=False)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    for name, versions in (("toy", (1, 2, 3)), ("other", (1,))):
        for version in versions:
            export_toy(root / "models" / name / str(version), version)
    (root / "models.config").write_text(CONFIG)
    return root


def test_the_offline_layout_links_the_newest_served_version(repository, tmp_path):
    layout = offline_layout(read_model_config(repository / "models.config"), "/models", repository / "models", tmp_path)
    assert {name: version for name, (_, version) in layout.items()} == {"toy": 3, "other": 1}
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["3"]


def test_a_second_layout_leaves_no_stale_link(repository, tmp_path):
    """The engine serves the highest version folder it finds: a link left by an earlier layout (another
    config, another root, or a target since deleted) must not survive into the next one."""
    models = repository / "models"
    offline_layout(read_model_config(repository / "models.config"), "/models", models, tmp_path)
    (tmp_path / "toy" / "7").symlink_to(tmp_path / "gone")  # a link whose target no longer exists
    only_2 = write(tmp_path, CONFIG.replace("versions: 2 versions: 3", "versions: 2")
                   .replace('version_labels { key: "canary" value: 3 }', ""), "only2.config")
    layout = offline_layout(read_model_config(only_2), "/models", models, tmp_path)
    assert layout["toy"] == (tmp_path / "toy", 2)
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["2"]
    copy = tmp_path / "copy"  # the same models under another root: the link follows the new root
    (copy / "toy").mkdir(parents=True)
    (copy / "other").mkdir()
    (copy / "toy" / "2").symlink_to(models / "toy" / "2")
    (copy / "other" / "1").symlink_to(models / "other" / "1")
    offline_layout(read_model_config(only_2), "/models", copy, tmp_path)
    assert (tmp_path / "toy" / "2").readlink() == copy / "toy" / "2"


def test_a_layout_never_deletes_a_real_folder(repository, tmp_path):
    (tmp_path / "toy" / "9").mkdir(parents=True)  # not a link the layout made: the reader's own files
    with pytest.raises(FileExistsError, match="toy/9"):
        offline_layout(read_model_config(repository / "models.config"), "/models", repository / "models", tmp_path)
    assert (tmp_path / "toy" / "9").is_dir()


def test_servers_are_stopped_even_when_the_block_fails(repository, tmp_path):
    """No server process, child process or listening port is left behind (issue 15). One server is
    enough here: that every server of a layout is stopped is the next test's (a failed start stops
    the one already running) and chapter 13's (closing its stack leaves no port or process)."""
    layout = offline_layout(read_model_config(repository / "models.config"), "/models", repository / "models", tmp_path)
    del layout["other"]
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(RuntimeError, match="the reader's cell failed"):
        with serve_layout(layout) as servers:
            pids = {name: s.pid for name, s in servers.items()}
            ports = [s.port for s in servers.values()]
            assert all(port_is_open(port) for port in ports)
            raise RuntimeError("the reader's cell failed")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values())
    assert not any(port_is_open(port) for port in ports)
    assert {p.pid for p in me.children(recursive=True)} - before == set()


def test_a_server_that_fails_to_start_stops_the_others(repository, tmp_path):
    layout = offline_layout(read_model_config(repository / "models.config"), "/models", repository / "models", tmp_path)
    del layout["other"]  # one server that starts, then one that cannot
    (tmp_path / "broken").mkdir()  # no version folders: "No versions of servable broken"
    layout["broken"] = (tmp_path / "broken", 0)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(RuntimeError, match="No versions of servable broken"):
        with serve_layout(layout):
            pass
    assert {p.pid for p in me.children(recursive=True)} - before == set()
