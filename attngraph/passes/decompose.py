"""``decompose``: expand ops a backend has no rule for, by the table ``DECOMPOSITIONS``.

The only composite op is ``attention``; its expansion is the exact inverse of ``fuse_attention``:

    attention(q, k, v, *m) ==> matmul {transpose_b} -> scale -> [softcap] -> [mask] -> softmax -> weighted_sum
"""

from __future__ import annotations

from collections.abc import Callable

from attngraph import ops
from attngraph.ir import Graph, Node, Op, Value
from attngraph.passes.util import fresh_name, taken_names


def _attention(node: Node, taken: set[str]) -> list[Node]:
    a = node.attr_dict
    q, k, v = node.inputs[:3]
    out: list[Node] = []

    def emit(op: Op, inputs, hint: str, **attrs) -> Value:
        full = ops.complete_attrs(op, attrs)
        (t,) = ops.infer_types(op, [x.type for x in inputs], dict(full))
        value = Value(fresh_name(taken, hint), t)
        out.append(Node(op, tuple(inputs), (value,), full))
        return value

    s = emit(Op.MATMUL, (q, k), "scores", transpose_b=True)
    s = emit(Op.SCALE, (s,), "qk_scaled", value=float(a["scale"]))
    if float(a["softcap"]) > 0:
        s = emit(Op.SOFTCAP, (s,), "qk_softcapped", cap=float(a["softcap"]))
    mask_attrs = {name: a[name] for name in ops.MASK_ATTRS}
    if a["operands"] or a["causal"] or a["window_left"] >= 0 or a["window_right"] >= 0:
        s = emit(Op.MASK, (s, *node.inputs[3:]), "qk_masked", **mask_attrs)
    if a["return_weights"]:
        probs = node.outputs[1]
        out.append(Node(Op.SOFTMAX, (s,), (probs,), ()))
    else:
        probs = emit(Op.SOFTMAX, (s,), "attn_weights")
    out.append(Node(Op.WEIGHTED_SUM, (probs, v), (node.outputs[0],), ()))
    return out


DECOMPOSITIONS: dict[Op, Callable[[Node, set[str]], list[Node]]] = {Op.ATTENTION: _attention}


def decompose(graph: Graph, keep: set[Op] | frozenset[Op] = frozenset()) -> Graph:
    """Expand every node whose op is not in ``keep`` and has a decomposition; same object if none."""
    if all(n.op in keep or n.op not in DECOMPOSITIONS for n in graph.nodes):
        return graph
    taken = taken_names(graph)
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in keep or node.op not in DECOMPOSITIONS:
            nodes.append(node)
        else:
            nodes.extend(DECOMPOSITIONS[node.op](node, taken))
    return graph.replace(nodes=tuple(nodes))


def decompose_attention(graph: Graph) -> Graph:
    """Expand every fused ``attention`` node back into the primitive chain."""
    return decompose(graph, keep=frozenset(set(Op) - {Op.ATTENTION}))
