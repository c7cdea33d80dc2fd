"""The reference rules of the primitives, in float64 (floats) and int64/bool as given."""

from __future__ import annotations

import numpy as np

from attngraph.ir import DType, Op, dims


def _np_dtype(dtype: str):
    d = DType(dtype)
    return np.float64 if d.is_float else np.dtype(d.value)


def _const(node, bound):
    value = node.attr("value")
    values = [dims.evaluate(v, bound) if isinstance(v, str) else v for v in
              (value if isinstance(value, tuple) else (value,))]
    return np.asarray(values if isinstance(value, tuple) else values[0], dtype=_np_dtype(node.attr("dtype")))


def _cast(node, bound, x):
    if DType(node.attr("dtype")) is DType.FLOAT8_E4M3FN:  # onto the float8 grid (nearest even), held in float64
        from attngraph.ir.dtypes import to_numpy

        return np.asarray(x, np.float32).astype(to_numpy(DType.FLOAT8_E4M3FN)).astype(np.float64)
    return np.asarray(x).astype(_np_dtype(node.attr("dtype")))  # float -> int truncates toward zero


def _slice(node, bound, x):
    axis = node.attr("axis") % x.ndim
    start, stop = dims.evaluate(node.attr("start"), bound), dims.evaluate(node.attr("stop"), bound)
    return x[(slice(None),) * axis + (slice(start, stop),)]


def _reduce(fn, identity):
    return lambda n, b, x: fn(x, axis=n.attr("axis"), keepdims=bool(n.attr("keepdims")), initial=identity)


PRIMITIVE_OPS = {
    Op.CONST: _const,
    Op.IOTA: lambda n, b: np.arange(dims.evaluate(n.attr("length"), b), dtype=_np_dtype(n.attr("dtype"))),
    Op.CAST: _cast,
    Op.NEG: lambda n, b, x: -x,
    Op.EXP: lambda n, b, x: np.exp(x),
    Op.LOG: lambda n, b, x: np.log(x),
    Op.TANH: lambda n, b, x: np.tanh(x),
    Op.SQRT: lambda n, b, x: np.sqrt(x),
    Op.SIN: lambda n, b, x: np.sin(x),
    Op.COS: lambda n, b, x: np.cos(x),
    Op.ABS: lambda n, b, x: np.abs(x),
    Op.FLOOR: lambda n, b, x: np.floor(x),
    Op.ADD: lambda n, b, x, y: x + y,
    Op.SUB: lambda n, b, x, y: x - y,
    Op.MUL: lambda n, b, x, y: x * y,
    Op.DIV: lambda n, b, x, y: x / y,
    Op.MAXIMUM: lambda n, b, x, y: np.maximum(x, y),
    Op.MINIMUM: lambda n, b, x, y: np.minimum(x, y),
    Op.MOD: lambda n, b, x, y: np.mod(x, y),
    Op.LESS: lambda n, b, x, y: x < y,
    Op.LESS_EQUAL: lambda n, b, x, y: x <= y,
    Op.EQUAL: lambda n, b, x, y: x == y,
    Op.AND: lambda n, b, x, y: np.logical_and(x, y),
    Op.OR: lambda n, b, x, y: np.logical_or(x, y),
    Op.NOT: lambda n, b, x: np.logical_not(x),
    Op.WHERE: lambda n, b, c, x, y: np.where(c, x, y),
    Op.REDUCE_MAX: _reduce(np.max, -np.inf),  # over an empty axis: the identity
    Op.REDUCE_SUM: _reduce(np.sum, 0.0),
    Op.DOT: lambda n, b, x, y: np.matmul(x, y),
    Op.RESHAPE: lambda n, b, x: x.reshape(tuple(dims.evaluate(d, b) for d in n.attr("shape"))),
    Op.TRANSPOSE: lambda n, b, x: x.transpose(n.attr("perm")),
    Op.SLICE: _slice,
    Op.GATHER: lambda n, b, table, idx: table[np.asarray(idx)],
}
