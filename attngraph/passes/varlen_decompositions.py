"""Default decomposition of ``varlen_attention`` (packed sequences): the block-diagonal keep mask built from
``cu_seqlens_q`` / ``cu_seqlens_k`` in integer primitives, then the fused ``attention`` op with it as a bool mask.

This form computes every query against every key of the packed batch (the mask removes the cross-sequence
pairs); it is the ONNX export's form. numba, numpy and torch have rules of their own that skip that work.
Sequence ids come from comparisons, not loops, so every runtime runs the same graph: ``seg(i) = #{s : cu[s] <=
i} - 1`` is the last sequence starting at or before ``i``, which is the non-empty sequence holding ``i`` (empty
sequences start where the next one does and are skipped by "last")."""

from __future__ import annotations

from attngraph.ir import DType, Node, Op, Value
from attngraph.passes.decomposition_helpers import I64
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter


def _positions(em: Emitter, cu: Value, length) -> tuple[Value, Value]:
    """(sequence id, local index) of each of the ``length`` packed positions, both int64 (length,)."""
    n1 = cu.type.shape[0]
    idx = em.emit(Op.IOTA, length=length)
    starts = em.emit(Op.LESS_EQUAL, em.emit(Op.RESHAPE, cu, shape=(1, n1)), em.emit(Op.RESHAPE, idx, shape=(length, 1)))
    count = em.emit(Op.REDUCE_SUM, em.emit(Op.CAST, starts, dtype=DType.INT64.value), axis=-1, keepdims=False)
    seg = em.emit(Op.SUB, count, em.const(1, I64))
    return seg, em.emit(Op.SUB, idx, em.emit(Op.GATHER, cu, seg))


@decomposes(Op.VARLEN_ATTENTION, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.LESS_EQUAL, Op.REDUCE_SUM, Op.SUB,
                                       Op.ADD, Op.GATHER, Op.EQUAL, Op.AND, Op.ATTENTION})
def _varlen_attention(node: Node, em: Emitter) -> None:
    """varlen_attention(q, k, v, cu_q, cu_k) ==> keep[i, j] = seg_q(i) == seg_k(j) [and causal / the window at
    local positions] -> attention(q, k, v, keep)."""
    q, k, v, cu_q, cu_k = node.inputs
    tq, tk = q.type.shape[2], k.type.shape[2]
    cu_q, cu_k = em.cast(cu_q, I64), em.cast(cu_k, I64)
    seg_q, local_q = _positions(em, cu_q, tq)
    seg_k, local_k = _positions(em, cu_k, tk)
    keep = em.emit(Op.EQUAL, em.emit(Op.RESHAPE, seg_q, shape=(tq, 1)), em.emit(Op.RESHAPE, seg_k, shape=(1, tk)))
    causal, wl, wr = bool(node.attr("causal")), int(node.attr("window_left")), int(node.attr("window_right"))
    if causal or wl >= 0 or wr >= 0:
        pos = local_q
        if node.attr("align") == "bottom_right":  # + len_k(s) - len_q(s) of the query's own sequence
            nxt = em.emit(Op.ADD, seg_q, em.const(1, I64))
            len_k = em.emit(Op.SUB, em.emit(Op.GATHER, cu_k, nxt), em.emit(Op.GATHER, cu_k, seg_q))
            len_q = em.emit(Op.SUB, em.emit(Op.GATHER, cu_q, nxt), em.emit(Op.GATHER, cu_q, seg_q))
            pos = em.emit(Op.ADD, pos, em.emit(Op.SUB, len_k, len_q))
        pos = em.emit(Op.RESHAPE, pos, shape=(tq, 1))
        col = em.emit(Op.RESHAPE, local_k, shape=(1, tk))
        if causal:
            keep = em.emit(Op.AND, keep, em.emit(Op.LESS_EQUAL, col, pos))
        if wl >= 0:
            keep = em.emit(Op.AND, keep, em.emit(Op.LESS_EQUAL, em.emit(Op.SUB, pos, em.const(wl, I64)), col))
        if wr >= 0:
            keep = em.emit(Op.AND, keep, em.emit(Op.LESS_EQUAL, col, em.emit(Op.ADD, pos, em.const(wr, I64))))
    keep = em.emit(Op.RESHAPE, keep, shape=(1, 1, tq, tk), name="varlen_keep")
    em.emit(Op.ATTENTION, q, k, v, keep, scale=float(node.attr("scale")), softcap=float(node.attr("softcap")),
            operands=("bool",), out=node.output)
