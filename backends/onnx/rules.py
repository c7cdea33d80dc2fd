"""ONNX lowering rules, in ``Op`` order. Each rule appends nodes to the emitter and returns names.

``DECOMPOSED`` (which starts from the primitives' rules, ``primitives.py``) covers every op with standard ONNX ops (the fused ``attention`` op is expanded
first). ``ATTENTION_STYLE`` adds a rule lowering ``attention`` to the standard opset-23
``Attention`` operator; ``CONTRIB_STYLE`` one lowering it to onnxruntime's
``com.microsoft.MultiHeadAttention``, refusing every graph where that op is not exact.
"""

from __future__ import annotations

import numpy as np

from attngraph.ir import DType, Op
from attngraph.lowering import NodeCtx
from attngraph_backends.onnx.emitter import ONNX_TYPES, OnnxEmitter
from attngraph_backends.onnx.primitives import PRIMITIVES

DECOMPOSED = PRIMITIVES.extended("onnx")


def _e(ctx: NodeCtx) -> OnnxEmitter:
    return ctx.state


def _hint(ctx: NodeCtx, i: int = 0) -> str:
    return ctx.node.outputs[i].name


@DECOMPOSED.register(Op.LINEAR)
def _linear(ctx, x, w, b=None):
    e = _e(ctx)
    y = e.op("MatMul", [x, w], hint=_hint(ctx) if b is None else None)
    return y if b is None else e.op("Add", [y, b], hint=_hint(ctx))


@DECOMPOSED.register(Op.SPLIT_HEADS)
def _split_heads(ctx, x):
    e, t = _e(ctx), ctx.node.output.type
    r = e.op("Reshape", [x, e.i64([0, 0, t.shape[1], t.shape[3]])])
    return e.op("Transpose", [r], perm=[0, 2, 1, 3], hint=_hint(ctx))


@DECOMPOSED.register(Op.CONCAT)
def _concat(ctx, *xs):
    return _e(ctx).op("Concat", list(xs), axis=int(ctx.attr("axis")), hint=_hint(ctx))


@DECOMPOSED.register(Op.SPLIT)
def _split(ctx, x):
    e = _e(ctx)
    sizes = list(ctx.attr("sizes"))
    return tuple(e.op("Split", [x, e.i64(sizes)], axis=int(ctx.attr("axis")), n_out=len(sizes)))


def repeat_kv(e: OnnxEmitter, x: str, groups: int, heads: int, size) -> str:
    """(B, Hkv, S, D) -> (B, Hkv*groups, S, D) with q head h reading kv head h // groups."""
    if groups == 1:
        return x
    expanded = e.op("Expand", [e.unsqueeze(x, [2]), e.i64([1, 1, groups, 1, 1])])
    return e.op("Reshape", [expanded, e.i64([0, heads, -1, int(size)])], hint="kv_repeated")


def _grouped(ctx, a, b, transpose_b: bool):
    e, ta, tb = _e(ctx), ctx.node.inputs[0].type, ctx.node.inputs[1].type
    hq, hkv = int(ta.shape[1]), int(tb.shape[1])
    b = repeat_kv(e, b, hq // hkv, hq, tb.shape[3])
    if transpose_b:
        b = e.op("Transpose", [b], perm=[0, 1, 3, 2])
    return e.op("MatMul", [a, b], hint=_hint(ctx))


@DECOMPOSED.register(Op.MATMUL)
def _matmul(ctx, a, b):
    return _grouped(ctx, a, b, bool(ctx.attr("transpose_b")))


@DECOMPOSED.register(Op.SCALE)
def _scale(ctx, x):
    return _e(ctx).op("Mul", [x, _e(ctx).scalar(float(ctx.attr("value")))], hint=_hint(ctx))


@DECOMPOSED.register(Op.SOFTCAP)
def _softcap(ctx, x):
    e = _e(ctx)
    cap = e.scalar(float(ctx.attr("cap")))
    return e.op("Mul", [e.op("Tanh", [e.op("Div", [x, cap])]), cap], hint=_hint(ctx))


def keep_mask(e: OnnxEmitter, ctx: NodeCtx, sq: str, skv: str, operands: dict, *, use_causal: bool = True):
    """Bool tensor of kept positions, broadcastable to (B, H, Sq, Skv), or None when nothing is masked.

    ``sq`` and ``skv`` are 1-element int64 tensors holding the query and key lengths.
    """
    a = ctx.node.attr_dict
    causal = bool(a["causal"]) and use_causal
    wl, wr = int(a["window_left"]), int(a["window_right"])
    structured = causal or wl >= 0 or wr >= 0
    parts = []
    if "bool" in operands:
        parts.append(operands["bool"])
    if not structured and "lengths" not in operands:
        return parts[0] if parts else None
    zero, one = e.const(np.int64(0), "zero"), e.const(np.int64(1), "one")
    sq0, skv0 = e.op("Squeeze", [sq, e.i64([0])]), e.op("Squeeze", [skv, e.i64([0])])
    cols = e.op("Reshape", [e.op("Range", [zero, skv0, one]), e.i64([1, 1, 1, -1])])  # (1, 1, 1, Skv)
    lengths = e.op("Cast", [operands["lengths"]], to=ONNX_TYPES[DType.INT64]) if "lengths" in operands else None
    if lengths is not None:
        parts.append(e.op("Less", [cols, e.op("Reshape", [lengths, e.i64([-1, 1, 1, 1])])]))
    if structured:
        rows = e.op("Reshape", [e.op("Range", [zero, sq0, one]), e.i64([1, 1, -1, 1])])  # (1, 1, Sq, 1)
        if a["align"] == "lengths":  # per batch row: the queries are the last Sq of its valid keys
            start = e.op("Reshape", [e.op("Sub", [lengths, sq]), e.i64([-1, 1, 1, 1])])
        else:
            start = e.dim(a["offset"])
        pos = e.op("Add", [rows, start])  # absolute query positions, (1 or B, 1, Sq, 1)
        if causal:
            parts.append(e.op("LessOrEqual", [cols, pos]))
        if wl >= 0:
            parts.append(e.op("GreaterOrEqual", [cols, e.op("Sub", [pos, e.i64([wl])])]))
        if wr >= 0:
            parts.append(e.op("LessOrEqual", [cols, e.op("Add", [pos, e.i64([wr])])]))
    keep = None
    for p in parts:
        keep = p if keep is None else e.op("And", [keep, p])
    return keep


@DECOMPOSED.register(Op.MASK)
def _mask(ctx, scores, *ops):
    e = _e(ctx)
    operands = dict(zip(ctx.attr("operands"), ops))
    if "bias" in operands:
        scores = e.op("Add", [scores, operands["bias"]])
    keep = keep_mask(e, ctx, e.shape_slice(scores, 2, 3), e.shape_slice(scores, 3, 4), operands)
    if keep is None:
        return scores
    return e.op("Where", [keep, scores, e.scalar(float("-inf"))], hint=_hint(ctx))


@DECOMPOSED.register(Op.SOFTMAX)
def _softmax(ctx, x):
    """Softmax whose all -inf rows give 0 (ONNX Softmax alone gives NaN); NaN rows stay NaN."""
    e = _e(ctx)
    dead = e.op("Equal", [e.reduce_max(x, -1), e.scalar(float("-inf"))])
    zero = e.scalar(0.0)
    p = e.op("Softmax", [e.op("Where", [dead, zero, x])], axis=-1)
    return e.op("Where", [dead, zero, p], hint=_hint(ctx))


@DECOMPOSED.register(Op.WEIGHTED_SUM)
def _weighted_sum(ctx, p, v):
    return _grouped(ctx, p, v, False)


@DECOMPOSED.register(Op.MERGE_HEADS)
def _merge_heads(ctx, x):
    e, t = _e(ctx), ctx.node.output.type
    tr = e.op("Transpose", [x], perm=[0, 2, 1, 3])
    return e.op("Reshape", [tr, e.i64([0, 0, int(t.shape[2])])], hint=_hint(ctx))
