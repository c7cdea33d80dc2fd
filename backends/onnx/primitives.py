"""ONNX lowering rules of the primitives, in ``Op`` order: each emits one or a few standard ONNX ops.

Inside an exported model every float tensor is in the compute dtype (the emitter casts half-precision
inputs up on entry and outputs back on exit), so a ``cast`` to a float dtype lands on the compute
dtype and float constants are made in it.
"""

from __future__ import annotations

import numpy as np
import onnx
from attngraph_backends.onnx.emitter import ONNX_TYPES, OnnxEmitter

from attngraph.ir import DType, Op
from attngraph.lowering import NodeCtx, Rules

PRIMITIVES = Rules("onnx")

_UNARY = {Op.NEG: "Neg", Op.EXP: "Exp", Op.LOG: "Log", Op.TANH: "Tanh", Op.SQRT: "Sqrt", Op.SIN: "Sin",
          Op.COS: "Cos", Op.ABS: "Abs", Op.FLOOR: "Floor"}
_BINARY = {Op.ADD: "Add", Op.SUB: "Sub", Op.MUL: "Mul", Op.DIV: "Div", Op.MAXIMUM: "Max", Op.MINIMUM: "Min",
           Op.MOD: "Mod", Op.LESS: "Less", Op.LESS_EQUAL: "LessOrEqual", Op.EQUAL: "Equal", Op.AND: "And", Op.OR: "Or",
           Op.NOT: "Not", Op.WHERE: "Where"}


def _e(ctx: NodeCtx) -> OnnxEmitter:
    return ctx.state


def _hint(ctx: NodeCtx) -> str:
    return ctx.node.outputs[0].name


def onnx_dtype(e: OnnxEmitter, dtype: DType) -> int:
    """The ONNX element type a value of IR ``dtype`` has inside the model: storage floats (float16,
    bfloat16, float32) are in the compute dtype; float64 stays float64 (precise angles, buckets)."""
    return ONNX_TYPES[e.compute if dtype.is_float and dtype is not DType.FLOAT64 else dtype]


@PRIMITIVES.register(Op.CONST)
def _const(ctx, *_):
    e, value = _e(ctx), ctx.attr("value")
    dtype = DType(ctx.attr("dtype"))
    values = value if isinstance(value, tuple) else (value,)
    if all(not isinstance(v, str) for v in values):
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(onnx_dtype(e, dtype))
        return e.const(np.asarray(value, dtype=np_dtype), "c")
    parts = [e.dim(v) if isinstance(v, str) else e.i64([v]) for v in values]  # symbolic dims: read at run time
    t = parts[0] if len(parts) == 1 else e.op("Concat", parts, axis=0)
    if not isinstance(value, tuple):
        t = e.op("Squeeze", [t, e.i64([0])])
    return t if dtype is DType.INT64 else e.op("Cast", [t], to=ONNX_TYPES[dtype], hint=_hint(ctx))


@PRIMITIVES.register(Op.IOTA)
def _iota(ctx):
    e = _e(ctx)
    length = e.op("Squeeze", [e.dim(ctx.attr("length")), e.i64([0])])
    r = e.op("Range", [e.const(np.int64(0), "zero"), length, e.const(np.int64(1), "one")], hint=_hint(ctx))
    dtype = DType(ctx.attr("dtype"))
    return r if dtype is DType.INT64 else e.op("Cast", [r], to=ONNX_TYPES[dtype])


@PRIMITIVES.register(Op.CAST)
def _cast(ctx, x):
    e = _e(ctx)
    src, dst = onnx_dtype(e, ctx.node.inputs[0].type.dtype), onnx_dtype(e, DType(ctx.attr("dtype")))
    return x if src == dst else e.op("Cast", [x], to=dst, hint=_hint(ctx))


def _simple(op: Op, op_type: str) -> None:
    def rule(ctx, *xs):
        return _e(ctx).op(op_type, list(xs), hint=_hint(ctx))
    rule.__name__ = f"_{op.value}"
    PRIMITIVES.register(op)(rule)


for _op, _type in {**_UNARY, **_BINARY}.items():
    _simple(_op, _type)


def _reduce(op_type: str):
    def rule(ctx, x):
        e = _e(ctx)
        keep = int(bool(ctx.attr("keepdims")))
        axis = int(ctx.attr("axis"))
        if op_type == "ReduceMax":
            return e.reduce_max(x, axis) if keep else e.op("Squeeze", [e.reduce_max(x, axis), e.i64([axis])])
        return e.op(op_type, [x, e.i64([axis])], keepdims=keep, hint=_hint(ctx))
    return rule


PRIMITIVES.register(Op.REDUCE_MAX)(_reduce("ReduceMax"))
PRIMITIVES.register(Op.REDUCE_SUM)(_reduce("ReduceSum"))


@PRIMITIVES.register(Op.DOT)
def _dot(ctx, a, b):
    return _e(ctx).op("MatMul", [a, b], hint=_hint(ctx))


@PRIMITIVES.register(Op.RESHAPE)
def _reshape(ctx, x):
    e = _e(ctx)
    shape = ctx.attr("shape")
    if all(isinstance(d, int) for d in shape):
        target = e.i64(list(shape))
    else:
        target = e.op("Concat", [e.dim(d) for d in shape], axis=0)
    # the IR's target is exact: a dim that is 0 at run time (an empty cache) is 0, not ONNX's "copy this dim"
    zero = {"allowzero": 1} if e.opset >= 14 else {}
    return e.op("Reshape", [x, target], hint=_hint(ctx), **zero)


@PRIMITIVES.register(Op.TRANSPOSE)
def _transpose(ctx, x):
    return _e(ctx).op("Transpose", [x], perm=list(ctx.attr("perm")), hint=_hint(ctx))


@PRIMITIVES.register(Op.SLICE)
def _slice(ctx, x):
    e = _e(ctx)
    axis = int(ctx.attr("axis")) % ctx.node.inputs[0].type.rank
    return e.op("Slice", [x, e.dim(ctx.attr("start")), e.dim(ctx.attr("stop")), e.i64([axis])], hint=_hint(ctx))


@PRIMITIVES.register(Op.GATHER)
def _gather(ctx, table, indices):
    return _e(ctx).op("Gather", [table, indices], axis=0, hint=_hint(ctx))
