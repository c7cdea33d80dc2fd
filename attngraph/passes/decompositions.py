"""Default decompositions (JAX's ``lower_fun``): each attention op written with simpler ops.

A backend runs an op with its own rule when it has one; otherwise ``decompose`` expands the op by
this table, again and again, until only ops with rules remain. Every op is either a primitive
(every backend has a rule) or has an entry here, so every op runs on every backend; a test holds
that. Each function gets the node and an ``Emitter`` and defines the node's own output values.

Float math runs in the compute dtype (float32, or float64 for float64 graphs): inputs are cast up
first and results cast back to the node's output dtype, the IR's precision rule.
"""

from __future__ import annotations

from collections.abc import Callable

from attngraph.ir import DType, Node, Op, Value, specs
from attngraph.passes.rewrite import Emitter

Decomposition = Callable[[Node, Emitter], None]
I64 = DType.INT64

DECOMPOSITIONS: dict[Op, Decomposition] = {}
# op -> every op its decomposition may emit (a test checks these against real expansions)
USES: dict[Op, frozenset[Op]] = {}


def decomposes(op: Op, uses: set[Op]) -> Callable[[Decomposition], Decomposition]:
    """Register the decorated function as ``op``'s default decomposition, emitting only ``uses``."""
    def register(fn: Decomposition) -> Decomposition:
        DECOMPOSITIONS[op] = fn
        USES[op] = frozenset(uses)
        return fn
    return register


def _compute(em: Emitter, x: Value) -> Value:
    return em.cast(x, x.type.dtype.compute)


def _unary_chain(node: Node, em: Emitter, build: Callable[[Value, DType], Value]) -> None:
    x = _compute(em, node.inputs[0])
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
    x, w = (_compute(em, v) for v in node.inputs[:2])
    y = em.emit(Op.DOT, x, w)
    if len(node.inputs) == 3:
        y = em.emit(Op.ADD, y, _compute(em, node.inputs[2]))
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


def grouped_dot(em: Emitter, a: Value, b: Value, transpose_b: bool) -> Value:
    """``a (B, Hq, M, K) @ b (B, Hkv, K, N)`` with q head h reading kv head h // (Hq / Hkv), no K/V copy:
    the q heads of one group become a broadcast axis of a 5-D product."""
    batch, hq, m, k = a.type.shape
    _, hkv, r0, r1 = b.type.shape
    groups = int(hq) // int(hkv)
    a5 = em.emit(Op.RESHAPE, a, shape=(batch, hkv, groups, m, k))
    b5 = em.emit(Op.RESHAPE, b, shape=(batch, hkv, 1, r0, r1))
    if transpose_b:
        b5 = em.emit(Op.TRANSPOSE, b5, perm=(0, 1, 2, 4, 3))
    c = em.emit(Op.DOT, a5, b5)
    return em.emit(Op.RESHAPE, c, shape=(batch, hq, m, c.type.shape[-1]))


@decomposes(Op.MATMUL, uses={Op.CAST, Op.RESHAPE, Op.TRANSPOSE, Op.DOT})
def _matmul(node: Node, em: Emitter) -> None:
    a, b = (_compute(em, v) for v in node.inputs)
    em.finish(grouped_dot(em, a, b, bool(node.attr("transpose_b"))), node.output)


@decomposes(Op.WEIGHTED_SUM, uses={Op.CAST, Op.RESHAPE, Op.TRANSPOSE, Op.DOT})
def _weighted_sum(node: Node, em: Emitter) -> None:
    p, v = (_compute(em, x) for x in node.inputs)
    em.finish(grouped_dot(em, p, v, False), node.output)


def keep_mask(em: Emitter, attrs: dict, operands: dict[str, Value], q_len, kv_len) -> Value | None:
    """Bool keep mask broadcastable to (B, H, Sq, Skv) from the mask attributes and operands, or None."""
    causal, wl, wr = bool(attrs["causal"]), int(attrs["window_left"]), int(attrs["window_right"])
    structured = causal or wl >= 0 or wr >= 0
    parts = [operands["bool"]] if "bool" in operands else []
    cols = lengths = None
    if structured or "lengths" in operands:
        cols = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=kv_len), shape=(1, 1, 1, kv_len))
    if "lengths" in operands:
        lv = operands["lengths"]
        lengths = em.emit(Op.RESHAPE, em.cast(lv, I64), shape=(lv.type.shape[0], 1, 1, 1))
        parts.append(em.emit(Op.LESS, cols, lengths))
    if structured:
        rows = em.emit(Op.RESHAPE, em.emit(Op.IOTA, length=q_len), shape=(1, 1, q_len, 1))
        if attrs["align"] == "lengths":  # each batch row's queries are the last q_len of its keys
            start = em.emit(Op.SUB, lengths, em.const(q_len, I64))
        else:
            start = em.const(attrs["offset"], I64)
        pos = em.emit(Op.ADD, rows, start)
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
    s = _compute(em, scores)
    cd = s.type.dtype
    if "bias" in operands:
        s = em.emit(Op.ADD, s, em.cast(operands["bias"], cd))
    keep = keep_mask(em, a, operands, scores.type.shape[2], scores.type.shape[3])
    if keep is not None:
        s = em.emit(Op.WHERE, keep, s, em.const(float("-inf"), cd))
    em.finish(s, node.output)


@decomposes(Op.SOFTMAX, uses={Op.CAST, Op.CONST, Op.REDUCE_MAX, Op.EQUAL, Op.WHERE, Op.SUB, Op.EXP,
                              Op.REDUCE_SUM, Op.DIV})
def _softmax(node: Node, em: Emitter) -> None:
    """Softmax over the last axis whose all -inf rows give 0 (not NaN); a NaN row stays NaN."""
    x = _compute(em, node.inputs[0])
    cd = x.type.dtype
    zero, one = em.const(0.0, cd), em.const(1.0, cd)
    peak = em.emit(Op.REDUCE_MAX, x, axis=-1, keepdims=True)
    dead = em.emit(Op.EQUAL, peak, em.const(float("-inf"), cd))
    e = em.emit(Op.EXP, em.emit(Op.SUB, x, em.emit(Op.WHERE, dead, zero, peak)))
    total = em.emit(Op.REDUCE_SUM, e, axis=-1, keepdims=True)
    em.finish(em.emit(Op.DIV, e, em.emit(Op.WHERE, dead, one, total)), node.output)


@decomposes(Op.ATTENTION, uses={Op.MATMUL, Op.SCALE, Op.SOFTCAP, Op.MASK, Op.SOFTMAX, Op.WEIGHTED_SUM})
def _attention(node: Node, em: Emitter) -> None:
    """attention(q, k, v, *m) ==> matmul -> scale -> [softcap] -> [mask] -> softmax -> weighted_sum."""
    a = node.attr_dict
    q, k, v = node.inputs[:3]
    s = em.emit(Op.MATMUL, q, k, transpose_b=True, name="scores")
    s = em.emit(Op.SCALE, s, value=float(a["scale"]), name="qk_scaled")
    if float(a["softcap"]) > 0:
        s = em.emit(Op.SOFTCAP, s, cap=float(a["softcap"]), name="qk_softcapped")
    if a["operands"] or a["causal"] or a["window_left"] >= 0 or a["window_right"] >= 0:
        s = em.emit(Op.MASK, s, *node.inputs[3:], name="qk_masked", **{n: a[n] for n in specs.MASK_ATTRS})
    probs = em.emit(Op.SOFTMAX, s, out=node.outputs[1] if a["return_weights"] else None, name="attn_weights")
    em.emit(Op.WEIGHTED_SUM, probs, v, out=node.outputs[0])
