"""helpers.graph: node classes follow the guide's colours, and the figure shows every node."""
import matplotlib

matplotlib.use("Agg")

import tensorflow as tf  # noqa: E402

from helpers.graph import COLOURS, draw_object_graph, load_object_graph  # noqa: E402


def kinds(graph):
    return {node.path: node.kind for node in graph.nodes}


def test_nodes_are_classified_like_the_guide(trained):
    manager, _ = trained
    graph = load_object_graph(manager.latest_checkpoint)
    k = kinds(graph)
    assert k["root"] == "object"
    assert k["optimizer"] == "optimizer"
    assert k["net/l1/_kernel"] == k["net/l1/bias"] == "variable"
    assert k["step"] == k["save_counter"] == "variable"
    assert k["net"] == k["net/l1"] == k["iterator"] == "object"
    state = sorted(p for p, kind in k.items() if kind == "optimizer state")
    assert state == ["optimizer/_iterations", "optimizer/_learning_rate"] + [
        f"optimizer/_variables/{i}" for i in range(2, 6)]
    assert len(graph.nodes) == 20


def test_paths_match_checkpoint_keys(trained):
    manager, _ = trained
    for node in load_object_graph(manager.latest_checkpoint).nodes:
        for key in node.keys:
            assert key.startswith(node.path + "/.ATTRIBUTES/")


def test_second_paths_are_extra_edges(trained):
    manager, _ = trained
    graph = load_object_graph(manager.latest_checkpoint)
    by_id = {n.id: n.path for n in graph.nodes}
    extra = {(by_id[a], name, by_id[b]) for a, b, name in graph.extra_edges}
    assert ("optimizer/_trainable_variables", "0", "net/l1/_kernel") in extra
    assert ("optimizer/_variables", "0", "optimizer/_iterations") in extra
    assert len(graph.table()) == len(graph.nodes)


def test_a_model_only_checkpoint_has_no_optimizer(tmp_path):
    from helpers.toy import Net
    net = Net()
    net.build((None, 1))
    prefix = tf.train.Checkpoint(model=net).write(str(tmp_path / "m"))
    assert set(kinds(load_object_graph(prefix)).values()) == {"object", "variable"}


def test_figure_draws_one_label_per_node_in_its_colour(trained):
    manager, _ = trained
    fig = draw_object_graph(manager.latest_checkpoint, title="t")
    ax = fig.axes[0]
    graph = load_object_graph(manager.latest_checkpoint)
    labels = [t for t in ax.texts if t.get_bbox_patch() is not None]  # not the arrows
    assert sorted(t.get_text() for t in labels) == sorted(n.name for n in graph.nodes)
    colour = {t.get_text(): matplotlib.colors.to_hex(t.get_bbox_patch().get_facecolor()) for t in labels}
    assert colour["optimizer"] == COLOURS["optimizer"]
    assert colour["_kernel"] == COLOURS["variable"]
    assert ax.get_title() == "t"


def test_the_models_variables_stay_blue_when_reached_through_the_optimizer(tmp_path):
    """In chapter 12 (a Sequential model) the optimizer's `_trainable_variables` list is the shortest
    path to the model's kernels and biases: they are still the model's variables."""
    net = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(2)])  # deeper than the optimizer
    optimizer = tf.keras.optimizers.Adam(0.1)
    optimizer.build(net.trainable_variables)
    graph = load_object_graph(tf.train.Checkpoint(model=net, optimizer=optimizer).write(str(tmp_path / "c")))
    k = kinds(graph)
    assert k["optimizer/_trainable_variables/0"] == k["optimizer/_trainable_variables/1"] == "variable", k
    assert k["optimizer/_iterations"] == k["optimizer/_variables/2"] == "optimizer state"
