"""Small helpers shared by passes."""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, Value
from attngraph.names import fresh_name  # noqa: F401 - re-exported for passes


def taken_names(graph: Graph) -> set[str]:
    names = {v.name for v in graph.inputs + graph.params}
    names.update(v.name for n in graph.nodes for v in n.outputs)
    return names


def single_user(graph_users: dict[Value, list[Node]], outputs: set[Value], value: Value) -> bool:
    """True when ``value`` feeds exactly one node and is not a graph output."""
    return len(graph_users.get(value, [])) == 1 and value not in outputs


def producer_of(producers: dict[Value, Node], value: Value, op: Op) -> Node | None:
    node = producers.get(value)
    return node if node is not None and node.op is op else None
