"""Small helpers shared by passes."""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, Value


def taken_names(graph: Graph) -> set[str]:
    names = {v.name for v in graph.inputs + graph.params}
    names.update(v.name for n in graph.nodes for v in n.outputs)
    return names


def fresh_name(taken: set[str], hint: str) -> str:
    """``hint``, or ``hint_1``, ``hint_2``... whichever is free; the name is then marked taken."""
    name, i = hint, 1
    while name in taken:
        name, i = f"{hint}_{i}", i + 1
    taken.add(name)
    return name


def single_user(graph_users: dict[Value, list[Node]], outputs: set[Value], value: Value) -> bool:
    """True when ``value`` feeds exactly one node and is not a graph output."""
    return len(graph_users.get(value, [])) == 1 and value not in outputs


def producer_of(producers: dict[Value, Node], value: Value, op: Op) -> Node | None:
    node = producers.get(value)
    return node if node is not None and node.op is op else None
