"""Default decompositions of the attention ops (projections, layout, the core, the fused op)."""

from __future__ import annotations

from collections.abc import Callable

from attngraph.ir import DType, Node, Op, Value, specs
from attngraph.passes.decomposition_helpers import I64, batch_lengths, compute, key_columns, query_positions
from attngraph.passes.decomposition_registry import decomposes
from attngraph.passes.rewrite import Emitter


def _unary_chain(node: Node, em: Emitter, build: Callable[[Value, DType], Value]) -> None:
    x = compute(em, node.inputs[0])
    em.finish(build(x, x.type.dtype), node.output)


@decomposes(Op.SCALE, uses={Op.CAST, Op.CONST, Op.MUL})
def _scale(node: Node, em: Emitter) -> None:
    _unary_chain(node, em, lambda x, cd: em.emit(Op.MUL, x, em.const(float(node.attr("value")), cd)))


@decomposes(Op.SOFTCAP, uses={Op.CAST, Op.CONST, Op.DIV, Op.TANH, Op.MUL})
def _softcap(node: Node, em: Emitter) -> None:
    def build(x: Value, cd: DType) -> Value:
        cap = em.const(float(node.attr("cap")), cd)
        return em.emit(Op.MUL, em.emit(Op.TANH, em.emit(Op.DIV, x, cap)), cap)
    _unary_chain(node, em, build)


@decomposes(Op.CLAMP, uses={Op.CAST, Op.CONST, Op.MAXIMUM, Op.MINIMUM})
def _clamp(node: Node, em: Emitter) -> None:
    def build(x: Value, cd: DType) -> Value:
        low = em.emit(Op.MAXIMUM, x, em.const(float(node.attr("low")), cd))
        return em.emit(Op.MINIMUM, low, em.const(float(node.attr("high")), cd))
    _unary_chain(node, em, build)


@decomposes(Op.LINEAR, uses={Op.CAST, Op.DOT, Op.ADD})
def _linear(node: Node, em: Emitter) -> None:
    x, w = (compute(em, v) for v in node.inputs[:2])
    y = em.emit(Op.DOT, x, w)
    if len(node.inputs) == 3:
        y = em.emit(Op.ADD, y, compute(em, node.inputs[2]))
    em.finish(y, node.output)


@decomposes(Op.SPLIT_HEADS, uses={Op.RESHAPE, Op.TRANSPOSE})
def _split_heads(node: Node, em: Emitter) -> None:
    batch, heads, seq, size = node.output.type.shape
    x = em.emit(Op.RESHAPE, node.inputs[0], shape=(batch, seq, heads, size))
    em.emit(Op.TRANSPOSE, x, perm=(0, 2, 1, 3), out=node.output)


@decomposes(Op.MERGE_HEADS, uses={Op.TRANSPOSE, Op.RESHAPE})
def _merge_heads(node: Node, em: Emitter) -> None:
    x = em.emit(Op.TRANSPOSE, node.inputs[0], perm=(0, 2, 1, 3))
    em.emit(Op.RESHAPE, x, shape=node.output.type.shape, out=node.output)


def grouped_dot(em: Emitter, a: Value, b: Value, transpose_b: bool, *, skip_zero_weights: bool = False) -> Value:
    """``a (B, Hq, M, K) @ b (B, Hkv, K, N)`` with q head h reading kv head h // (Hq / Hkv), no K/V copy:
    the q heads of one group become a broadcast axis of a 5-D product. ``skip_zero_weights``: ``a`` holds
    attention weights, and a weight of exactly 0 takes no part (``exact_dot``)."""
    batch, hq, m, k = a.type.shape
    _, hkv, r0, r1 = b.type.shape
    groups = int(hq) // int(hkv)
    a5 = em.emit(Op.RESHAPE, a, shape=(batch, hkv, groups, m, k))
    b5 = em.emit(Op.RESHAPE, b, shape=(batch, hkv, 1, r0, r1))
    if transpose_b:
        b5 = em.emit(Op.TRANSPOSE, b5, perm=(0, 1, 2, 4, 3))
    c = exact_dot(em, a5, b5) if skip_zero_weights else em.emit(Op.DOT, a5, b5)
    return em.emit(Op.RESHAPE, c, shape=(batch, hq, m, c.type.shape[-1]))


def exact_dot(em: Emitter, p: Value, v: Value) -> Value:
    """``sum_j p_j v_j`` over ``p_j != 0`` in primitives: the product of the finite values, then NaN and
    +-inf wherever a row really uses one (counted by products of 0/1 indicators), as IEEE would give."""
    cd = p.type.dtype
    zero, one, inf = em.const(0.0, cd), em.const(1.0, cd), em.const(float("inf"), cd)

    def uses(indicator: Value) -> Value:  # does the row use a value where ``indicator`` holds?
        counts = em.emit(Op.DOT, used, em.emit(Op.WHERE, indicator, one, zero))
        return em.emit(Op.LESS, zero, counts)

    finite = em.emit(Op.LESS, em.emit(Op.ABS, v), inf)  # false for NaN and +-inf
    out = em.emit(Op.DOT, p, em.emit(Op.WHERE, finite, v, zero))
    used = em.emit(Op.WHERE, em.emit(Op.EQUAL, p, zero), zero, one)  # a NaN weight counts as used
    pos, neg = uses(em.emit(Op.EQUAL, v, inf)), uses(em.emit(Op.EQUAL, v, em.const(float("-inf"), cd)))
    nan_used = uses(em.emit(Op.NOT, em.emit(Op.EQUAL, v, v)))
    out_is_nan = em.emit(Op.NOT, em.emit(Op.EQUAL, out, out))  # from a NaN weight
    nan = em.emit(Op.OR, em.emit(Op.OR, out_is_nan, nan_used), em.emit(Op.AND, pos, neg))
    out = em.emit(Op.WHERE, pos, inf, out)
    out = em.emit(Op.WHERE, neg, em.const(float("-inf"), cd), out)
    return em.emit(Op.WHERE, nan, em.emit(Op.SUB, inf, inf), out)  # inf - inf: NaN (a const is never NaN)


@decomposes(Op.MATMUL, uses={Op.CAST, Op.RESHAPE, Op.TRANSPOSE, Op.DOT})
def _matmul(node: Node, em: Emitter) -> None:
    a, b = (compute(em, v) for v in node.inputs)
    em.finish(grouped_dot(em, a, b, bool(node.attr("transpose_b"))), node.output)


@decomposes(Op.WEIGHTED_SUM, uses={Op.CAST, Op.RESHAPE, Op.TRANSPOSE, Op.DOT, Op.CONST, Op.ABS, Op.LESS, Op.WHERE,
                                   Op.EQUAL, Op.SUB, Op.AND, Op.OR, Op.NOT})
def _weighted_sum(node: Node, em: Emitter) -> None:
    p, v = (compute(em, x) for x in node.inputs)
    em.finish(grouped_dot(em, p, v, False, skip_zero_weights=True), node.output)


def keep_mask(em: Emitter, attrs: dict, operands: dict[str, Value], q_len, kv_len) -> Value | None:
    """Bool keep mask broadcastable to (B, H, Sq, Skv) from the mask attributes and operands, or None."""
    causal, wl, wr = bool(attrs["causal"]), int(attrs["window_left"]), int(attrs["window_right"])
    structured = causal or wl >= 0 or wr >= 0
    parts = [operands["bool"]] if "bool" in operands else []
    cols = lengths = None
    if structured or "lengths" in operands:
        cols = key_columns(em, kv_len)
    if "lengths" in operands:
        lengths = batch_lengths(em, operands["lengths"])
        parts.append(em.emit(Op.LESS, cols, lengths))
    if structured:
        pos = query_positions(em, attrs["offset"], attrs["align"], lengths, q_len)
        if causal:
            parts.append(em.emit(Op.LESS_EQUAL, cols, pos))
        if wl >= 0:
            parts.append(em.emit(Op.LESS_EQUAL, em.emit(Op.SUB, pos, em.const(wl, I64)), cols))
        if wr >= 0:
            parts.append(em.emit(Op.LESS_EQUAL, cols, em.emit(Op.ADD, pos, em.const(wr, I64))))
    keep = None
    for part in parts:
        keep = part if keep is None else em.emit(Op.AND, keep, part)
    return keep


@decomposes(Op.MASK, uses={Op.CAST, Op.CONST, Op.ADD, Op.IOTA, Op.RESHAPE, Op.LESS, Op.SUB, Op.LESS_EQUAL,
                           Op.AND, Op.WHERE})
def _mask(node: Node, em: Emitter) -> None:
    a = node.attr_dict
    scores = node.inputs[0]
    operands = dict(zip(a["operands"], node.inputs[1:], strict=True))
    s = compute(em, scores)
    cd = s.type.dtype
    if "bias" in operands:
        s = em.emit(Op.ADD, s, em.cast(operands["bias"], cd))
    keep = keep_mask(em, a, operands, scores.type.shape[2], scores.type.shape[3])
    if keep is not None:
        s = em.emit(Op.WHERE, keep, s, em.const(float("-inf"), cd))
    em.finish(s, node.output)


@decomposes(Op.SOFTMAX, uses={Op.CAST, Op.CONST, Op.REDUCE_MAX, Op.EQUAL, Op.WHERE, Op.SUB, Op.EXP,
                              Op.REDUCE_SUM, Op.DIV, Op.RESHAPE, Op.LESS, Op.ADD})
def _softmax(node: Node, em: Emitter) -> None:
    """Softmax over the last axis whose all -inf rows give 0 (not NaN); a NaN row stays NaN. A sink (one
    logit per head) joins the row's maximum and denominator and carries no value."""
    x = compute(em, node.inputs[0])
    cd = x.type.dtype
    zero, one = em.const(0.0, cd), em.const(1.0, cd)
    peak = em.emit(Op.REDUCE_MAX, x, axis=-1, keepdims=True)
    sink = None
    if len(node.inputs) == 2:
        sink = em.emit(Op.RESHAPE, compute(em, node.inputs[1]), shape=(1, x.type.shape[1], 1, 1))
        peak = em.emit(Op.WHERE, em.emit(Op.LESS, peak, sink), sink, peak)  # a NaN peak stays: NaN < s is False
    dead = em.emit(Op.EQUAL, peak, em.const(float("-inf"), cd))
    shift = em.emit(Op.WHERE, dead, zero, peak)
    e = em.emit(Op.EXP, em.emit(Op.SUB, x, shift))
    total = em.emit(Op.REDUCE_SUM, e, axis=-1, keepdims=True)
    if sink is not None:
        total = em.emit(Op.ADD, total, em.emit(Op.EXP, em.emit(Op.SUB, sink, shift)))
    em.finish(em.emit(Op.DIV, e, em.emit(Op.WHERE, dead, one, total)), node.output)


@decomposes(Op.ATTENTION, uses={Op.MATMUL, Op.ALIBI, Op.SCALE, Op.SOFTCAP, Op.REL_BIAS, Op.MASK, Op.SOFTMAX,
                                Op.WEIGHTED_SUM})
def _attention(node: Node, em: Emitter) -> None:
    """attention(q, k, v, *m) ==> matmul -> [alibi before the scale] -> scale -> [softcap] -> [alibi]
    -> [rel_bias] -> [mask] -> softmax(., [sinks]) -> weighted_sum."""
    a = node.attr_dict
    q, k, v = node.inputs[:3]
    named = dict(zip(a["operands"], node.inputs[3:], strict=True))
    mask_inputs = [named[kind] for kind in specs.MASK_OPERANDS if kind in named]
    where = {"offset": a["offset"], "align": a["align"]}
    lengths = (named["lengths"],) if a["align"] == "lengths" else ()
    s = em.emit(Op.MATMUL, q, k, transpose_b=True, name="scores")
    if a["alibi_slopes"] and a["alibi_before_scale"]:
        s = em.emit(Op.ALIBI, s, *lengths, slopes=a["alibi_slopes"], name="qk_alibi", **where)
    s = em.emit(Op.SCALE, s, value=float(a["scale"]), name="qk_scaled")
    if float(a["softcap"]) > 0:
        s = em.emit(Op.SOFTCAP, s, cap=float(a["softcap"]), name="qk_softcapped")
    if a["alibi_slopes"] and not a["alibi_before_scale"]:
        s = em.emit(Op.ALIBI, s, *lengths, slopes=a["alibi_slopes"], name="qk_alibi", **where)
    if "rel_table" in named:
        s = em.emit(Op.REL_BIAS, s, named["rel_table"], *lengths, num_buckets=a["rel_buckets"],
                    max_distance=a["rel_max_distance"], bidirectional=a["rel_bidirectional"], name="qk_rel", **where)
    if mask_inputs or a["causal"] or a["window_left"] >= 0 or a["window_right"] >= 0:
        kinds = tuple(kind for kind in a["operands"] if kind in specs.MASK_OPERANDS)
        s = em.emit(Op.MASK, s, *mask_inputs, name="qk_masked", **{n: a[n] for n in specs.MASK_ATTRS}
                    | {"operands": kinds})
    sinks = (named["sinks"],) if "sinks" in named else ()
    probs = em.emit(Op.SOFTMAX, s, *sinks, out=node.outputs[1] if a["return_weights"] else None, name="attn_weights")
    em.emit(Op.WEIGHTED_SUM, probs, v, out=node.outputs[0])
