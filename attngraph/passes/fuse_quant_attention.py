"""``fuse_quant_attention``: an ``attention`` node reading dequantized K and V becomes ``quant_attention``.

    attention(q, dequantize(k_q, k_scale), dequantize(v_q, v_scale), *operands)
    ==>  quant_attention(q, k_q, k_scale, v_q, v_scale, *operands)

so a backend with a rule for it (numba's decode kernel) reads the int8 / float8 cache and its scales directly
and never builds a float copy of the cache; every other backend expands it back (its default decomposition).
Runs after ``fuse_attention``; each dequantized value must feed only the attention node.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op
from attngraph.passes.rewrite import Emitter, GraphIndex, Rewrite, rewrite, taken_names


def _fuse(node: Node, index: GraphIndex, taken: set[str]) -> Rewrite | None:
    if node.op is not Op.ATTENTION:
        return None
    q, k, v = node.inputs[:3]
    dk, dv = index.producer(k, Op.DEQUANTIZE), index.producer(v, Op.DEQUANTIZE)
    if dk is None or dv is None or not (index.single_use(k) and index.single_use(v)):
        return None
    em = Emitter(taken)
    em.node(Op.QUANT_ATTENTION, (q, *dk.inputs, *dv.inputs, *node.inputs[3:]), node.outputs, **node.attr_dict)
    return Rewrite(remove=[node, dk, dv], add=em.nodes)


def fuse_quant_attention(graph: Graph) -> Graph:
    """Fuse every attention whose K and V are dequantized; same object back when none matches."""
    taken = taken_names(graph)
    return rewrite(graph, lambda node, index: _fuse(node, index, taken))
