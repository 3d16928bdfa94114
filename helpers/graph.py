"""Draw a checkpoint's object graph the way the official guide pictures it, from your own checkpoint.

Restore matches values to Python objects by walking this graph from the root along named edges.
Colours follow the guide: optimizer red, model (regular) variables blue, optimizer state orange,
every other object black.
"""
from collections import deque
from dataclasses import dataclass, field

from .checkpoints import read_object_graph
from .table import Table

COLOURS = {
    "optimizer": "#d62728",
    "variable": "#1f77b4",
    "optimizer state": "#ff7f0e",
    "object": "#222222",
}
_OPTIMIZER_MARKERS = ({"_iterations", "_learning_rate"}, {"iter", "learning_rate"})


@dataclass
class Node:
    """One object in the checkpoint: its edge name, path from the root, colour class and saved keys."""
    id: int
    name: str
    path: str
    kind: str
    keys: list = field(default_factory=list)
    children: list = field(default_factory=list)


@dataclass
class ObjectGraph:
    """The graph as nodes (breadth-first from the root) plus the edges that are not on the first path."""
    nodes: list
    extra_edges: list  # (parent id, child id, edge name): further paths to an already-named object

    def table(self):
        """A `Table` with one row per node: path from the root, colour class, checkpoint keys."""
        rows = [(n.path, n.kind, ", ".join(k.rsplit("/", 1)[-1] for k in n.keys))
                for n in self.nodes]
        return Table(["path from root", "kind", "saved attribute"], rows,
                     note=f"{len(self.nodes)} objects, {len(self.extra_edges)} extra edges "
                          "(second paths to the same object)")


def load_object_graph(prefix):
    """Read the object graph of the checkpoint at `prefix` and classify every node."""
    proto = read_object_graph(prefix)
    parent, names = {0: None}, {0: "root"}
    order, extra = [], []
    queue = deque([0])
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for ref in proto.nodes[node_id].children:
            if ref.node_id in parent:
                extra.append((node_id, ref.node_id, ref.local_name))
            else:
                parent[ref.node_id], names[ref.node_id] = node_id, ref.local_name
                queue.append(ref.node_id)

    slot_ids = {slot.slot_variable_node_id for n in proto.nodes for slot in n.slot_variables}
    optimizers = {i for i in order if _is_optimizer(proto.nodes[i], names[i])}
    # The model's own variables, which an optimizer also lists (`_trainable_variables`): reached
    # through the optimizer first, they are still the model's, not optimizer state.
    listed = {ref.node_id for i in optimizers for child in proto.nodes[i].children
              if child.local_name == "_trainable_variables" for ref in proto.nodes[child.node_id].children}
    nodes = {}
    for node_id in order:
        up = parent[node_id]
        path = names[node_id] if up in (None, 0) else f"{nodes[up].path}/{names[node_id]}"
        proto_node = proto.nodes[node_id]
        keys = [a.checkpoint_key for a in proto_node.attributes]
        kind = "object"
        if node_id in optimizers:
            kind = "optimizer"
        elif any(a.name == "VARIABLE_VALUE" for a in proto_node.attributes):
            under_optimizer = _ancestors(node_id, parent) & optimizers
            state = (under_optimizer and node_id not in listed) or node_id in slot_ids
            kind = "optimizer state" if state else "variable"
        nodes[node_id] = Node(node_id, names[node_id], path, kind, keys)
        if up is not None:
            nodes[up].children.append(nodes[node_id])
    return ObjectGraph([nodes[i] for i in order], extra)


def _is_optimizer(proto_node, name):
    child_names = {c.local_name for c in proto_node.children}
    return name == "optimizer" or any(m <= child_names for m in _OPTIMIZER_MARKERS)


def _ancestors(node_id, parent):
    found = set()
    while parent[node_id] is not None:
        node_id = parent[node_id]
        found.add(node_id)
    return found


def draw_object_graph(prefix, ax=None, title=None):
    """Draw the object graph of the checkpoint at `prefix` (root on the left) and return the figure.

    Solid lines are each object's first path from the root (the path its checkpoint key is named
    after); dashed arcs are further edges to the same object, e.g. the optimizer's references to the
    model variables it updates.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    graph = load_object_graph(prefix)
    position = _tree_layout(graph.nodes[0])
    depth = max(x for x, _ in position.values())
    leaves = max(y for _, y in position.values()) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 * (depth + 1) + 0.6, 0.36 * leaves + 1.2))
    for node in graph.nodes:
        x, y = position[node.id]
        for child in node.children:
            cx, cy = position[child.id]
            ax.plot([x, x + 0.5, cx], [y, cy, cy], color="#999999", lw=1, zorder=1)
    for up, down, _ in graph.extra_edges:
        ax.annotate("", xy=position[down], xytext=position[up], zorder=1,
                    arrowprops=dict(arrowstyle="->", color="#c8c8c8", lw=0.8, linestyle="--",
                                    shrinkA=6, shrinkB=6, connectionstyle="arc3,rad=-0.25"))
    for node in graph.nodes:
        x, y = position[node.id]
        ax.text(x, y, node.name, ha="center", va="center", fontsize=10, color="white", zorder=3,
                bbox=dict(boxstyle="round,pad=0.3", fc=COLOURS[node.kind], ec="none"))
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(leaves - 0.4, -0.6)
    ax.axis("off")
    handles = [Patch(color=c, label=k) for k, c in COLOURS.items()]
    handles.append(Line2D([], [], color="#c8c8c8", linestyle="--", label="another path to it"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
              frameon=False, fontsize=9)
    ax.set_title(title if title is not None else f"Object graph of {prefix}", fontsize=11)
    return ax.figure


def _tree_layout(root):
    """x = depth, y = leaf order; a parent sits at the middle of its children."""
    position, next_leaf = {}, [0]

    def place(node, depth):
        if not node.children:
            position[node.id] = (depth, next_leaf[0])
            next_leaf[0] += 1
        else:
            ys = [place(child, depth + 1) for child in node.children]
            position[node.id] = (depth, (ys[0] + ys[-1]) / 2)
        return position[node.id][1]

    place(root, 0)
    return position
