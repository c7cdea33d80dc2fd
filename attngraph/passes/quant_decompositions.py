"""Default decompositions of the quantized KV cache's ops into primitives (``attngraph.ir.quant_specs``).

``quantize`` spells out its rounding rule with primitives every backend has: float32 ``y = x / scale``,
saturated to ``[-QMAX, QMAX]``; int8 rounds half to even by ``floor`` and the parity of the floor (exact in
float32 for ``|y| <= 127``), float8 by the backend's cast (IEEE round to nearest even).
"""

from __future__ import annotations

from attngraph.ir import DType, Node, Op
from attngraph.ir.quant_specs import QMAX
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter

F32 = DType.FLOAT32


@decomposes(Op.QUANTIZE, uses={Op.CAST, Op.CONST, Op.DIV, Op.MAXIMUM, Op.MINIMUM, Op.FLOOR, Op.SUB, Op.MUL,
                               Op.ADD, Op.LESS, Op.EQUAL, Op.WHERE})
def _quantize(node: Node, em: Emitter) -> None:
    """quantize(x, s) ==> clamp(x / s) -> round half to even (int8) -> cast to the storage dtype."""
    dt = DType(node.attr("dtype"))
    x, scale = node.inputs
    qmax = QMAX[dt]
    y = em.emit(Op.DIV, em.cast(x, F32), scale, name="q_scaled")
    y = em.emit(Op.MINIMUM, em.emit(Op.MAXIMUM, y, em.const(-qmax, F32)), em.const(qmax, F32), name="q_saturated")
    if dt is DType.INT8:
        half = em.const(0.5, F32)
        f = em.emit(Op.FLOOR, y, name="q_floor")
        frac = em.emit(Op.SUB, y, f)
        # 1 where the floor is odd: a tie goes up from an odd floor (to the even neighbour), stays on an even one
        odd = em.emit(Op.SUB, f, em.emit(Op.MUL, em.emit(Op.FLOOR, em.emit(Op.MUL, f, half)), em.const(2.0, F32)))
        tie = em.emit(Op.ADD, f, odd)
        nearer = em.emit(Op.WHERE, em.emit(Op.LESS, frac, half), f, em.emit(Op.ADD, f, em.const(1.0, F32)))
        is_tie = em.emit(Op.EQUAL, frac, half)
        y = em.emit(Op.WHERE, is_tie, tie, nearer, name="q_rounded")
        # int8 holds no NaN: stored as 0 (a per-token scale of a NaN token is NaN, so it still reads back NaN)
        y = em.emit(Op.WHERE, em.emit(Op.EQUAL, y, y), y, em.const(0.0, F32))
    em.cast(y, dt, out=node.output)


@decomposes(Op.DEQUANTIZE, uses={Op.CAST, Op.MUL})
def _dequantize(node: Node, em: Emitter) -> None:
    """dequantize(q, s) ==> float32(q) * s, cast to the node's float dtype."""
    q, scale = node.inputs
    em.finish(em.emit(Op.MUL, em.cast(q, F32), scale, name="dequantized"), node.output)


@decomposes(Op.QUANT_ATTENTION, uses={Op.DEQUANTIZE, Op.ATTENTION})
def _quant_attention(node: Node, em: Emitter) -> None:
    """quant_attention(q, kq, ks, vq, vs, *m) ==> attention(q, dequantize(kq, ks), dequantize(vq, vs), *m)."""
    q, kq, ks, vq, vs = node.inputs[:5]
    dt = q.type.dtype.value
    k = em.emit(Op.DEQUANTIZE, kq, ks, dtype=dt, name="k_dequantized")
    v = em.emit(Op.DEQUANTIZE, vq, vs, dtype=dt, name="v_dequantized")
    em.node(Op.ATTENTION, (q, k, v, *node.inputs[5:]), node.outputs, **node.attr_dict)
