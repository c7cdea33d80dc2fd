"""``fold_scales``: ``scale(scale(x) {value=a}) {value=b}`` -> ``scale(x) {value=a*b}``; ``scale {value=1.0}`` -> x.

Neither rewrite touches a value that is a graph output or that another node also reads.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, Value
from attngraph.passes.util import single_user


def fold_scales(graph: Graph) -> Graph:
    """Merge chained scales and drop unit scales; same object back when nothing changes."""
    users, outputs = graph.users(), set(graph.outputs)
    rename: dict[Value, Value] = {}
    kept: list[Node | None] = []
    slot_of: dict[Value, int] = {}  # output value -> its node's index in `kept`
    changed = False
    for node in graph.nodes:
        node = Node(node.op, tuple(rename.get(v, v) for v in node.inputs), node.outputs, node.attrs)
        if node.op is Op.SCALE:
            slot = slot_of.get(node.inputs[0])
            inner = kept[slot] if slot is not None else None
            if inner is not None and inner.op is Op.SCALE and single_user(users, outputs, inner.output):
                value = float(inner.attr("value")) * float(node.attr("value"))
                node = Node(Op.SCALE, inner.inputs, node.outputs, (("value", value),))
                kept[slot] = None
                changed = True
            if float(node.attr("value")) == 1.0 and node.output not in outputs:
                rename[node.output] = node.inputs[0]
                changed = True
                continue
        slot_of.update({v: len(kept) for v in node.outputs})
        kept.append(node)
    if not changed:
        return graph
    return graph.replace(nodes=tuple(n for n in kept if n is not None))
