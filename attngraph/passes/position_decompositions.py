"""Default decompositions of the position and normalisation ops (rotary, rms_norm, alibi, rel_bias) and of
the static cache's write (cache_update)."""

from __future__ import annotations

import math

from attngraph.ir import DType, Node, Op, Value
from attngraph.passes.attention_decompositions import exact_dot
from attngraph.passes.decomposition_helpers import I64, batch_lengths, compute, key_columns, query_positions
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter

F64 = DType.FLOAT64


def rotary_tables(node: Node, em: Emitter, cd: DType) -> tuple[Value, Value]:
    """cos and sin, (B or 1, 1, S, rd/2), in the compute dtype; angles in float64."""
    a = node.attr_dict
    x, rest = node.inputs[0], list(node.inputs[1:])
    seq = x.type.shape[2]
    if "positions" in a["operands"]:
        positions = em.cast(rest.pop(0), I64)
    else:
        rows = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=seq), shape=(1, seq))
        positions = em.emit(Op.ADD, rows, em.const(a["offset"], I64))
    lead = positions.type.shape[0]
    if "cos_sin" in a["operands"]:
        cos, sin = (em.emit(Op.GATHER, compute(em, cache), positions) for cache in rest)  # (B|1, S, rd/2)
    else:
        freqs = em.emit(Op.RESHAPE, em.const(tuple(float(f) for f in a["inv_freq"]), F64),
                        shape=(1, 1, len(a["inv_freq"])))
        angles = em.emit(Op.MUL, em.emit(Op.RESHAPE, em.cast(positions, F64), shape=(lead, seq, 1)), freqs)
        cos, sin = em.emit(Op.COS, angles), em.emit(Op.SIN, angles)
    out = []
    for table in (cos, sin):
        scaled = em.emit(Op.MUL, table, em.const(float(a["attention_scaling"]), table.type.dtype))
        half = table.type.shape[2]
        out.append(em.cast(em.emit(Op.RESHAPE, scaled, shape=(lead, 1, seq, half)), cd))
    return out[0], out[1]


@decomposes(Op.ROTARY, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.ADD, Op.GATHER, Op.MUL, Op.COS, Op.SIN,
                             Op.SLICE, Op.SUB, Op.CONCAT, Op.TRANSPOSE})
def _rotary(node: Node, em: Emitter) -> None:
    x = compute(em, node.inputs[0])
    cd = x.type.dtype
    batch, heads, seq, size = x.type.shape
    rd = int(node.attr("rotary_dim")) or int(size)
    half = rd // 2
    cos, sin = rotary_tables(node, em, cd)
    if node.attr("layout") == "half":
        x1 = em.emit(Op.SLICE, x, axis=3, start=0, stop=half)
        x2 = em.emit(Op.SLICE, x, axis=3, start=half, stop=rd)
    else:  # pairs (2k, 2k+1): view the rotated dims as (rd/2, 2) and take each column
        pairs = em.emit(Op.RESHAPE, em.emit(Op.SLICE, x, axis=3, start=0, stop=rd), shape=(batch, heads, seq, half, 2))
        x1, x2 = (em.emit(Op.RESHAPE, em.emit(Op.SLICE, pairs, axis=4, start=c, stop=c + 1),
                          shape=(batch, heads, seq, half)) for c in (0, 1))
    y1 = em.emit(Op.SUB, em.emit(Op.MUL, x1, cos), em.emit(Op.MUL, x2, sin))
    y2 = em.emit(Op.ADD, em.emit(Op.MUL, x2, cos), em.emit(Op.MUL, x1, sin))
    if node.attr("layout") == "half":
        rotated = em.emit(Op.CONCAT, y1, y2, axis=3)
    else:
        stacked = em.emit(Op.CONCAT, *(em.emit(Op.RESHAPE, y, shape=(batch, heads, seq, half, 1)) for y in (y1, y2)),
                          axis=4)
        rotated = em.emit(Op.RESHAPE, stacked, shape=(batch, heads, seq, rd))
    if rd < int(size):
        rotated = em.emit(Op.CONCAT, rotated, em.emit(Op.SLICE, x, axis=3, start=rd, stop=int(size)), axis=3)
    em.finish(rotated, node.output)


@decomposes(Op.RMS_NORM, uses={Op.CAST, Op.CONST, Op.MUL, Op.REDUCE_SUM, Op.DIV, Op.ADD, Op.SQRT})
def _rms_norm(node: Node, em: Emitter) -> None:
    x, w = (compute(em, v) for v in node.inputs)
    cd, size = x.type.dtype, int(x.type.shape[-1])
    mean = em.emit(Op.DIV, em.emit(Op.REDUCE_SUM, em.emit(Op.MUL, x, x), axis=-1, keepdims=True),
                   em.const(float(size), cd))
    normed = em.emit(Op.DIV, x, em.emit(Op.SQRT, em.emit(Op.ADD, mean, em.const(float(node.attr("eps")), cd))))
    scale = em.emit(Op.ADD, w, em.const(1.0, cd)) if node.attr("add_one") else w
    em.finish(em.emit(Op.MUL, normed, scale), node.output)


def _distance(node: Node, em: Emitter) -> Value:
    """``j - pos_i``: int64 (1 or B, 1, Sq, Skv)."""
    scores = node.inputs[0]
    lengths = batch_lengths(em, node.inputs[-1]) if node.attr("align") == "lengths" else None
    pos = query_positions(em, node.attr("offset"), node.attr("align"), lengths, scores.type.shape[2])
    return em.emit(Op.SUB, key_columns(em, scores.type.shape[3]), pos)


def alibi_terms(em: Emitter, distance: Value, slopes, cd: DType) -> Value:
    """``slope_h * (j - pos_i)``: (1 or B, H, Sq, Skv)."""
    per_head = em.emit(Op.RESHAPE, em.const(tuple(float(x) for x in slopes), cd), shape=(1, len(slopes), 1, 1))
    return em.emit(Op.MUL, em.cast(distance, cd), per_head)


@decomposes(Op.ALIBI, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.SUB, Op.ADD, Op.MUL})
def _alibi(node: Node, em: Emitter) -> None:
    s = compute(em, node.inputs[0])
    em.finish(em.emit(Op.ADD, s, alibi_terms(em, _distance(node, em), node.attr("slopes"), s.type.dtype)),
              node.output)


def t5_buckets(em: Emitter, distance: Value, num_buckets: int, max_distance: int, bidirectional: bool) -> Value:
    """T5's bucket of each relative distance (int64), the logarithmic part in float64."""
    zero, one = em.const(0, I64), em.const(1, I64)
    if bidirectional:
        num_buckets //= 2
        base = em.emit(Op.WHERE, em.emit(Op.LESS, zero, distance), em.const(num_buckets, I64), zero)
        n = em.emit(Op.WHERE, em.emit(Op.LESS, distance, zero), em.emit(Op.SUB, zero, distance), distance)
    else:
        base = zero
        n = em.emit(Op.WHERE, em.emit(Op.LESS, distance, zero), em.emit(Op.SUB, zero, distance), zero)
    exact = num_buckets // 2
    safe = em.cast(em.emit(Op.WHERE, em.emit(Op.LESS, n, one), one, n), F64)  # log(0) never taken
    ratio = em.emit(Op.DIV, em.emit(Op.LOG, em.emit(Op.DIV, safe, em.const(float(exact), F64))),
                    em.const(math.log(max_distance / exact), F64))
    scaled = em.emit(Op.MUL, ratio, em.const(float(num_buckets - exact), F64))
    large = em.emit(Op.ADD, em.cast(em.emit(Op.FLOOR, scaled), I64), em.const(exact, I64))
    large = em.emit(Op.MINIMUM, large, em.const(num_buckets - 1, I64))
    return em.emit(Op.ADD, base, em.emit(Op.WHERE, em.emit(Op.LESS, n, em.const(exact, I64)), n, large))


@decomposes(Op.REL_BIAS, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.SUB, Op.ADD, Op.WHERE, Op.LESS, Op.DIV,
                               Op.LOG, Op.MUL, Op.FLOOR, Op.MINIMUM, Op.GATHER, Op.TRANSPOSE})
def _rel_bias(node: Node, em: Emitter) -> None:
    s, table = compute(em, node.inputs[0]), compute(em, node.inputs[1])
    bias = relative_terms(em, _distance(node, em), table, int(node.attr("num_buckets")),
                          int(node.attr("max_distance")), bool(node.attr("bidirectional")))
    em.finish(em.emit(Op.ADD, s, bias), node.output)


def relative_terms(em: Emitter, distance: Value, table: Value, num_buckets: int, max_distance: int,
                   bidirectional: bool) -> Value:
    """``table[bucket(j - pos_i), h]``: (1 or B, H, Sq, Skv)."""
    buckets = t5_buckets(em, distance, num_buckets, max_distance, bidirectional)
    lead, _, q_len, kv_len = buckets.type.shape
    flat = em.emit(Op.RESHAPE, buckets, shape=(lead, q_len, kv_len))
    return em.emit(Op.TRANSPOSE, em.emit(Op.GATHER, table, flat), perm=(0, 3, 1, 2))


def fused_position_bias(em: Emitter, node: Node, cd: DType) -> Value | None:
    """The additive position bias of a fused ``attention`` node as it stands after the softcap: ALiBi
    (times the scale when it comes before the scale; only exact without a softcap) and T5's bias."""
    a = node.attr_dict
    named = dict(zip(a["operands"], node.inputs[3:], strict=True))
    if not a["alibi_slopes"] and "rel_table" not in named:
        return None
    q, k = node.inputs[:2]
    lengths = batch_lengths(em, named["lengths"]) if a["align"] == "lengths" else None
    pos = query_positions(em, a["offset"], a["align"], lengths, q.type.shape[2])
    distance = em.emit(Op.SUB, key_columns(em, k.type.shape[2]), pos)
    bias = None
    if a["alibi_slopes"]:
        factor = float(a["scale"]) if a["alibi_before_scale"] else 1.0
        bias = alibi_terms(em, distance, [s * factor for s in a["alibi_slopes"]], cd)
    if "rel_table" in named:
        rel = relative_terms(em, distance, compute(em, named["rel_table"]), int(a["rel_buckets"]),
                             int(a["rel_max_distance"]), bool(a["rel_bidirectional"]))
        bias = rel if bias is None else em.emit(Op.ADD, bias, rel)
    return bias


@decomposes(Op.CACHE_UPDATE, uses={Op.CAST, Op.CONST, Op.IOTA, Op.RESHAPE, Op.SUB, Op.MOD, Op.EQUAL, Op.LESS,
                                   Op.LESS_EQUAL, Op.AND, Op.WHERE, Op.DOT, Op.ABS, Op.OR, Op.NOT})
def _cache_update(node: Node, em: Emitter) -> None:
    """Each slot takes the new entry written to it, or keeps its value: a one-hot (slot, token) product of
    the new entries (skipping zero weights, so NaN in one token never reaches another slot)."""
    cache, new, lengths = node.inputs
    batch, _, max_len, _ = cache.type.shape
    seq = new.type.shape[2]
    cd = cache.type.dtype.compute
    slots = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=max_len), shape=(1, 1, max_len, 1))
    token = em.emit(Op.SUB, slots, batch_lengths(em, lengths))  # (B, 1, M, 1): which new token lands here
    if node.attr("mode") == "circular":  # slot s takes the last token i with i = s - len (mod M)
        first = em.emit(Op.MOD, token, em.const(int(max_len), I64))
        last = em.emit(Op.SUB, em.const(seq, I64), em.const(1, I64))
        token = em.emit(Op.SUB, last, em.emit(Op.MOD, em.emit(Op.SUB, last, first), em.const(int(max_len), I64)))
    written = em.emit(Op.AND, em.emit(Op.LESS_EQUAL, em.const(0, I64), token), em.emit(Op.LESS, token,
                                                                                        em.const(seq, I64)))
    tokens = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=seq), shape=(1, 1, 1, seq))
    one_hot = em.emit(Op.WHERE, em.emit(Op.EQUAL, token, tokens), em.const(1.0, cd), em.const(0.0, cd))
    scattered = exact_dot(em, one_hot, compute(em, new))  # (B, H, M, D)
    em.finish(em.emit(Op.WHERE, written, scattered, compute(em, cache)), node.output)
