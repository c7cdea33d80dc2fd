"""``rename_values``: give a graph's inputs and outputs new names (e.g. those of an imported model)."""

from __future__ import annotations

from attngraph.errors import GraphError
from attngraph.ir import Graph, Node, Value
from attngraph.ir.verify import verify_graph


def rename_values(graph: Graph, mapping: dict[str, str]) -> Graph:
    """Rename values by name; other values that would clash get a ``_1`` suffix. Verified."""
    targets = set(mapping.values())
    if len(targets) != len(mapping):
        raise GraphError(f"rename targets must be unique, got {mapping}")
    taken = set(targets)
    new: dict[str, str] = {}
    for value in _all_values(graph):
        if value.name in mapping:
            new[value.name] = mapping[value.name]
        elif value.name in taken:
            i = 1
            while f"{value.name}_{i}" in taken:
                i += 1
            new[value.name] = f"{value.name}_{i}"
        taken.add(new.get(value.name, value.name))

    def r(v: Value) -> Value:
        return Value(new.get(v.name, v.name), v.type)

    nodes = tuple(Node(n.op, tuple(map(r, n.inputs)), tuple(map(r, n.outputs)), n.attrs) for n in graph.nodes)
    return verify_graph(Graph(graph.name, tuple(map(r, graph.inputs)), tuple(map(r, graph.params)), nodes,
                              tuple(map(r, graph.outputs))))


def _all_values(graph: Graph) -> list[Value]:
    return list(graph.inputs) + list(graph.params) + [v for n in graph.nodes for v in n.outputs]
