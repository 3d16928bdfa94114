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
