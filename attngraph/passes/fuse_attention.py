"""``fuse_attention``: the core chain becomes one ``attention`` node.

    matmul(q, k) {transpose_b=True} -> [scale] -> [softcap] -> [mask] -> softmax -> weighted_sum(., v)
    ==>  attention(q, k, v, *mask_operands) {scale, softcap, causal, offset, window_*, operands}

Every intermediate must have a single reader and not be a graph output, except the softmax output,
which may also be a graph output: the fused node then returns the weights too (``return_weights``).
Like onnxscript's SDPA fusion, a chain that does not match exactly is left alone.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, specs
from attngraph.passes.rewrite import Emitter, GraphIndex, Rewrite, Step, rewrite, taken_names

CHAIN = (Step(Op.SOFTMAX), Step(Op.MASK, optional=True), Step(Op.SOFTCAP, optional=True),
         Step(Op.SCALE, optional=True), Step(Op.MATMUL))


def _fuse(node: Node, index: GraphIndex, taken: set[str]) -> Rewrite | None:
    if node.op is not Op.WEIGHTED_SUM:
        return None
    probs, v = node.inputs
    soft = index.producer(probs, Op.SOFTMAX)
    if soft is None or len(index.users.get(probs, [])) != 1:
        return None
    m = index.match_chain(soft, CHAIN)
    if m is None or not m.by_op[Op.MATMUL].attr("transpose_b"):
        return None
    q, k = m.by_op[Op.MATMUL].inputs
    scale, softcap, mask = m.get(Op.SCALE), m.get(Op.SOFTCAP), m.get(Op.MASK)
    weights = probs in index.outputs
    attrs = {
        "scale": float(scale.attr("value")) if scale else 1.0,
        "softcap": float(softcap.attr("cap")) if softcap else 0.0,
        "return_weights": weights,
        **({name: mask.attr(name) for name in specs.MASK_ATTRS} if mask else {}),
    }
    em = Emitter(taken)
    em.node(Op.ATTENTION, (q, k, v, *(mask.inputs[1:] if mask else ())),
            (node.output, probs) if weights else (node.output,), **attrs)
    return Rewrite(remove=[node, *m.nodes], add=em.nodes)


def fuse_attention(graph: Graph) -> Graph:
    """Fuse every matching core chain; same object back when none matches."""
    taken = taken_names(graph)
    return rewrite(graph, lambda node, index: _fuse(node, index, taken))
