"""ONNX lowering rules, in ``Op`` order. Each rule appends nodes to the emitter and returns names.

``DECOMPOSED`` (which starts from the primitives' rules, ``primitives.py``) covers every op with standard ONNX
ops (the fused ``attention`` op is expanded first). ``ATTENTION_STYLE`` adds a rule lowering ``attention`` to
the standard opset-23 ``Attention`` operator; ``CONTRIB_STYLE`` one lowering it to onnxruntime's
``com.microsoft.MultiHeadAttention``, refusing every graph where that op is not exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from attngraph_backends.onnx.emitter import OnnxEmitter
from attngraph_backends.onnx.guards import guarded_product, lower_decomposition
from attngraph_backends.onnx.primitives import PRIMITIVES

from attngraph.ir import Op
from attngraph.lowering import NodeCtx, interpret
from attngraph.passes.decompositions import keep_mask as ir_keep_mask
from attngraph.passes.position_decompositions import fused_position_bias
from attngraph.passes.rewrite import Emitter

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


def keep_mask(e: OnnxEmitter, ctx: NodeCtx, operands: dict[str, str], *, use_causal: bool = True,
              use_lengths: bool = True) -> str | None:
    """The keep mask of a ``mask`` or ``attention`` node as an ONNX bool tensor broadcastable to
    (B, H, Sq, Skv), or None when nothing is masked.

    It is the default decomposition's keep mask (``attngraph.passes.decompositions.keep_mask``: IR
    primitives), lowered here by the primitives' ONNX rules, so the keep rule is written once for
    every graph-building backend.
    """
    node = ctx.node
    attrs = dict(node.attr_dict, causal=bool(node.attr("causal")) and use_causal)
    first = 1 if node.op is Op.MASK else 3
    ir_operands = dict(zip(attrs["operands"], node.inputs[first:], strict=True))
    if not use_lengths:  # the operator takes the lengths itself (Attention-24's nonpad_kv_seqlen)
        ir_operands.pop("lengths", None)
        attrs.update(align="start", offset=0)
    ir_operands = {kind: v for kind, v in ir_operands.items() if kind in ("bool", "bias", "lengths")}
    q_len, kv_len = ((node.inputs[0].type.shape[2], node.inputs[0].type.shape[3]) if node.op is Op.MASK
                     else (node.inputs[0].type.shape[2], node.inputs[1].type.shape[2]))
    em = Emitter({v.name for v in node.inputs + node.outputs})
    keep = ir_keep_mask(em, attrs, ir_operands, q_len, kv_len)
    if keep is None:
        return None
    env = {ir_operands[kind]: operands[kind] for kind in ir_operands}
    interpret(em.nodes, PRIMITIVES, env, ctx.dims, e)
    return env[keep]


def position_bias(e: OnnxEmitter, ctx: NodeCtx, operands: dict[str, str]) -> str | None:
    """A fused attention node's ALiBi and T5 bias as one ONNX float tensor (1 or B, H, Sq, Skv), or None:
    the decomposition's (``fused_position_bias``), lowered here by the primitives' rules."""
    node = ctx.node
    em = Emitter({v.name for v in node.inputs + node.outputs})
    bias = fused_position_bias(em, node, node.inputs[0].type.dtype.compute)
    if bias is None:
        return None
    named = dict(zip(node.attr("operands"), node.inputs[3:], strict=True))
    env = {named[kind]: operands[kind] for kind in named}
    interpret(em.nodes, PRIMITIVES, env, ctx.dims, e)
    return env[bias]


@DECOMPOSED.register(Op.MASK)
def _mask(ctx, scores, *ops):
    e = _e(ctx)
    operands = dict(zip(ctx.attr("operands"), ops))
    if "bias" in operands:
        scores = e.op("Add", [scores, operands["bias"]])
    keep = keep_mask(e, ctx, operands)
    if keep is None:
        return scores
    return e.op("Where", [keep, scores, e.scalar(float("-inf"))], hint=_hint(ctx))


@DECOMPOSED.register(Op.SOFTMAX)
def _softmax(ctx, x, sinks=None):
    """Softmax whose all -inf rows give 0 (ONNX Softmax alone gives NaN); NaN rows stay NaN. With sinks
    (one logit per head), the sink column joins the softmax and is dropped after it."""
    e = _e(ctx)
    keys = e.shape_slice(x, 3, 4)
    if sinks is not None:
        lead = e.op("Concat", [e.shape_slice(x, 0, 3), e.i64([1])], axis=0)
        x = e.op("Concat", [x, e.op("Expand", [e.op("Reshape", [sinks, e.i64([1, -1, 1, 1])]), lead])], axis=-1)
    dead = e.op("Equal", [e.reduce_max(x, -1), e.scalar(float("-inf"))])
    zero = e.scalar(0.0)
    p = e.op("Softmax", [e.op("Where", [dead, zero, x])], axis=-1)
    p = e.op("Where", [dead, zero, p], hint=None if sinks is not None else _hint(ctx))
    if sinks is None:
        return p
    return e.op("Slice", [p, e.i64([0]), keys, e.i64([3])], hint=_hint(ctx))  # the sink's column dropped


@DECOMPOSED.register(Op.WEIGHTED_SUM)
def _weighted_sum(ctx, p, v):
    """``p @ v`` with a key of weight 0 taking no part (``guards.guarded_product``)."""
    e, tp, tv = _e(ctx), ctx.node.inputs[0].type, ctx.node.inputs[1].type
    v = repeat_kv(e, v, int(tp.shape[1]) // int(tv.shape[1]), int(tp.shape[1]), tv.shape[3])
    return guarded_product(e, p, v, _hint(ctx))


@DECOMPOSED.register(Op.CACHE_UPDATE)
def _cache_update(ctx, cache, new, lengths):
    """``TensorScatter`` (opset 24: linear or circular; onnxruntime writes in place when the cache's input and
    output share one buffer), else ``ScatterND`` at the computed slots (linear), else the decomposition."""
    e = _e(ctx)
    mode = ctx.attr("mode")
    write_at = e.op("Cast", [lengths], to=onnx.TensorProto.INT64)
    if e.opset >= 24:
        return e.op("TensorScatter", [cache, new, write_at], axis=2, mode=mode, hint=_hint(ctx))
    if mode == "circular":
        return lower_decomposition(e, ctx, DECOMPOSED, [cache, new, lengths])[0]
    shape = e.op("Shape", [new])  # (B, H, S, D): one index triple (b, h, len_b + s) per updated row
    b, h, seq = (e.op("Squeeze", [e.op("Slice", [shape, e.i64([i]), e.i64([i + 1])]), e.i64([0])]) for i in range(3))
    zero, one = e.const(np.int64(0), "zero"), e.const(np.int64(1), "one")
    rows = e.op("Reshape", [e.op("Range", [zero, b, one]), e.i64([-1, 1, 1, 1])])
    heads = e.op("Reshape", [e.op("Range", [zero, h, one]), e.i64([1, -1, 1, 1])])
    slots = e.op("Add", [e.op("Reshape", [e.op("Range", [zero, seq, one]), e.i64([1, 1, -1, 1])]),
                         e.op("Reshape", [write_at, e.i64([-1, 1, 1, 1])])])
    target = e.op("Concat", [e.op("Slice", [shape, e.i64([0]), e.i64([3])]), e.i64([1])], axis=0)
    index = e.op("Concat", [e.op("Expand", [t, target]) for t in (rows, heads, slots)], axis=3)
    return e.op("ScatterND", [cache, index, new], hint=_hint(ctx))


@DECOMPOSED.register(Op.MERGE_HEADS)
def _merge_heads(ctx, x):
    e, t = _e(ctx), ctx.node.output.type
    tr = e.op("Transpose", [x], perm=[0, 2, 1, 3])
    return e.op("Reshape", [tr, e.i64([0, 0, int(t.shape[2])])], hint=_hint(ctx))
