"""What several decompositions share: the compute-dtype cast, and the positions of queries and keys."""

from __future__ import annotations

from attngraph.ir import DType, Op, Value, dims
from attngraph.passes.rewrite import Emitter

I64 = DType.INT64


def compute(em: Emitter, x: Value) -> Value:
    """``x`` in the compute dtype (float32, or float64 for float64 values)."""
    return em.cast(x, x.type.dtype.compute)


def key_columns(em: Emitter, kv_len: dims.Dim) -> Value:
    """Key indices ``j``: int64 (1, 1, 1, kv_len)."""
    return em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=kv_len), shape=(1, 1, 1, kv_len))


def batch_lengths(em: Emitter, lengths: Value) -> Value:
    """Per-row key lengths as int64 (B, 1, 1, 1)."""
    return em.emit(Op.RESHAPE, em.cast(lengths, I64), shape=(lengths.type.shape[0], 1, 1, 1))


def query_positions(em: Emitter, offset: dims.Dim, align: str, lengths: Value | None, q_len: dims.Dim) -> Value:
    """Absolute query positions: ``i + offset`` as (1, 1, q_len, 1), or with ``align="lengths"`` each
    batch row's queries at the end of its valid keys, ``lengths[b] - q_len + i``, as (B, 1, q_len, 1).
    ``lengths`` is the (B, 1, 1, 1) form from ``batch_lengths``."""
    rows = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=q_len), shape=(1, 1, q_len, 1))
    if align == "lengths":
        start = em.emit(Op.SUB, lengths, em.const(q_len, I64))
    else:
        start = em.const(offset, I64)
    return em.emit(Op.ADD, rows, start)
