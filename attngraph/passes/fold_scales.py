"""``fold_scales``: ``scale(scale(x) {value=a}) {value=b}`` -> ``scale(x) {value=a*b}``; ``scale {value=1.0}`` -> x.

Neither rewrite touches a value that is a graph output or that another node also reads.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, Value
from attngraph.passes.rewrite import GraphIndex, Rewrite, Step, rewrite

PAIR = (Step(Op.SCALE), Step(Op.SCALE))


def _merge(node: Node, index: GraphIndex) -> Rewrite | None:
    m = index.match_chain(node, PAIR)
    if m is None:
        return None
    outer, inner = m.nodes
    value = float(inner.attr("value")) * float(outer.attr("value"))
    return Rewrite(remove=[outer, inner], add=[Node(Op.SCALE, inner.inputs, outer.outputs, (("value", value),))])


def _drop_units(graph: Graph) -> Graph:
    outputs = set(graph.outputs)
    rename: dict[Value, Value] = {}
    nodes = []
    for node in graph.nodes:
        node = Node(node.op, tuple(rename.get(v, v) for v in node.inputs), node.outputs, node.attrs)
        if node.op is Op.SCALE and float(node.attr("value")) == 1.0 and node.output not in outputs:
            rename[node.output] = node.inputs[0]
            continue
        nodes.append(node)
    return graph if not rename else graph.replace(nodes=tuple(nodes))


def fold_scales(graph: Graph) -> Graph:
    """Merge chained scales and drop unit scales; same object back when nothing changes."""
    merged = graph
    while True:  # a chain of three scales folds in two rounds
        again = rewrite(merged, _merge)
        if again is merged:
            break
        merged = again
    return _drop_units(merged)
