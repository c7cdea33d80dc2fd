"""Default decompositions of the paged KV cache, in primitives (the ONNX export's portable form; numpy, torch and
numba write the pool in place with ``array_math.paged`` and numba reads it with its own kernel).

* ``paged_attention``: every row's blocks gathered in table order into a contiguous ``(B, H, max_blocks *
  block_size, D)`` view of its keys and values (``gather`` on the block table, clamped so that unused columns,
  which may hold ``-1`` or garbage, index a real block), then the fused ``attention`` op with ``seq_lens`` as key
  lengths (bottom-right causal, keys past the length take no part).
* ``paged_cache_update``: slot ``t`` of the pool (block ``t // block_size``, offset ``t % block_size``) takes the
  new token whose position lands there, or keeps its value: a one-hot (slot, token) product per row that skips
  zero weights (``exact_dot``: NaN in one token never reaches another slot), summed over the rows (the value checks
  guarantee at most one writer per slot). Integer-exact: the token's table column is found by a one-hot over the
  columns, not by a division."""

from __future__ import annotations

from attngraph.ir import Node, Op, Value
from attngraph.ir.paged_specs import block_geometry
from attngraph.passes.attention_decompositions import exact_dot
from attngraph.passes.decomposition_helpers import I64, compute
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter


def _row_keys(em: Emitter, cache: Value, table: Value, layout: str) -> Value:
    """The cache's blocks of each row in table order: (B, H, max_blocks * block_size, D)."""
    n, bs, h, d = block_geometry(cache.type, layout)
    batch, m = table.type.shape
    ids = em.emit(Op.MAXIMUM, em.emit(Op.MINIMUM, em.cast(table, I64), em.const(n - 1, I64)), em.const(0, I64))
    blocks = em.emit(Op.GATHER, cache, ids)  # NHD (B, M, bs, H, D); HND (B, M, H, bs, D)
    perm = (0, 3, 1, 2, 4) if layout == "NHD" else (0, 2, 1, 3, 4)
    return em.emit(Op.RESHAPE, em.emit(Op.TRANSPOSE, blocks, perm=perm), shape=(batch, h, int(m) * bs, d))


@decomposes(Op.PAGED_ATTENTION, uses={Op.CAST, Op.CONST, Op.MINIMUM, Op.MAXIMUM, Op.GATHER, Op.TRANSPOSE, Op.RESHAPE,
                                      Op.ATTENTION})
def _paged_attention(node: Node, em: Emitter) -> None:
    """paged_attention(q, k_cache, v_cache, table, seq_lens) ==> attention(q, K, V, seq_lens) on the gathered
    blocks, queries at the end of each row's keys."""
    q, kc, vc, table, seq_lens = node.inputs
    layout = node.attr("layout")
    k, v = _row_keys(em, kc, table, layout), _row_keys(em, vc, table, layout)
    em.emit(Op.ATTENTION, q, k, v, em.cast(seq_lens, I64), scale=float(node.attr("scale")),
            softcap=float(node.attr("softcap")), causal=bool(node.attr("causal")), align="lengths",
            operands=("lengths",), out=node.output)


def _flat(em: Emitter, cache: Value, layout: str) -> Value:
    """The pool as (H, num_blocks * block_size, D): slot ``t`` = block ``t // bs``, offset ``t % bs``."""
    n, bs, h, d = block_geometry(cache.type, layout)
    if layout == "NHD":
        return em.emit(Op.TRANSPOSE, em.emit(Op.RESHAPE, cache, shape=(n * bs, h, d)), perm=(1, 0, 2))
    return em.emit(Op.RESHAPE, em.emit(Op.TRANSPOSE, cache, perm=(1, 0, 2, 3)), shape=(h, n * bs, d))


def _unflat(em: Emitter, flat: Value, cache: Value, layout: str) -> Value:
    n, bs, h, d = block_geometry(cache.type, layout)
    if layout == "NHD":
        return em.emit(Op.RESHAPE, em.emit(Op.TRANSPOSE, flat, perm=(1, 0, 2)), shape=(n, bs, h, d))
    return em.emit(Op.TRANSPOSE, em.emit(Op.RESHAPE, flat, shape=(h, n, bs, d)), perm=(1, 0, 2, 3))


def _token_slots(em: Emitter, table: Value, lengths: Value, seq, bs: int) -> tuple[Value, Value]:
    """(block id, offset) of each new token, int64 (B, 1, 1, S)."""
    batch, m = table.type.shape
    pos = em.emit(Op.ADD, em.emit(Op.RESHAPE, em.cast(lengths, I64), shape=(batch, 1, 1, 1)),
                  em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=seq), shape=(1, 1, 1, seq)))
    starts = em.emit(Op.MUL, em.emit(Op.IOTA, length=int(m)), em.const(bs, I64))  # each column's first position
    col_start = em.emit(Op.RESHAPE, starts, shape=(1, 1, 1, 1, int(m)))
    pos5 = em.emit(Op.RESHAPE, pos, shape=(batch, 1, 1, seq, 1))
    hit = em.emit(Op.AND, em.emit(Op.LESS_EQUAL, col_start, pos5),
                  em.emit(Op.LESS, pos5, em.emit(Op.ADD, col_start, em.const(bs, I64))))
    zero = em.const(0, I64)
    rows = em.emit(Op.RESHAPE, em.cast(table, I64), shape=(batch, 1, 1, 1, int(m)))
    block = em.emit(Op.REDUCE_SUM, em.emit(Op.WHERE, hit, rows, zero), axis=-1, keepdims=False)
    first = em.emit(Op.REDUCE_SUM, em.emit(Op.WHERE, hit, col_start, zero), axis=-1, keepdims=False)
    return block, em.emit(Op.SUB, pos, first)


@decomposes(Op.PAGED_CACHE_UPDATE, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.TRANSPOSE, Op.ADD, Op.SUB, Op.MUL,
                                         Op.LESS, Op.LESS_EQUAL, Op.AND, Op.OR, Op.NOT, Op.WHERE, Op.REDUCE_SUM,
                                         Op.EQUAL, Op.DOT, Op.ABS})
def _paged_cache_update(node: Node, em: Emitter) -> None:
    """Each slot of the pool takes the new token written to it, or keeps its value (see the module docstring)."""
    cache, new, table, lengths = node.inputs
    layout = node.attr("layout")
    n, bs, _, _ = block_geometry(cache.type, layout)
    seq = new.type.shape[2]
    cd = cache.type.dtype.compute
    block, offset = _token_slots(em, table, lengths, seq, bs)
    slot = em.emit(Op.ADD, em.emit(Op.MUL, block, em.const(bs, I64)), offset)  # (B, 1, 1, S): the flat slot
    lands = em.emit(Op.EQUAL, slot, em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=n * bs), shape=(1, 1, n * bs, 1)))
    one_hot = em.emit(Op.WHERE, lands, em.const(1.0, cd), em.const(0.0, cd))  # (B, 1, T, S)
    scattered = em.emit(Op.REDUCE_SUM, exact_dot(em, one_hot, compute(em, new)), axis=0, keepdims=False)
    count = em.emit(Op.REDUCE_SUM, em.emit(Op.REDUCE_SUM, one_hot, axis=-1, keepdims=False), axis=0, keepdims=False)
    written = em.emit(Op.LESS, em.const(0.0, cd), count)  # (1, T): the slot has a writer
    merged = em.emit(Op.WHERE, em.emit(Op.RESHAPE, written, shape=(1, n * bs, 1)), scattered,
                     compute(em, _flat(em, cache, layout)))
    em.finish(_unflat(em, merged, cache, layout), node.output)
