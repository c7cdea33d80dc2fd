"""Type rules of the primitives: constants, elementwise ops with NumPy broadcasting, reductions,
the batched product and layout ops. Attention ops decompose into these
(``attngraph.lowering.decompositions``), so they are the set every backend must run.

Float inputs of one elementwise op share one dtype; decompositions cast to the compute dtype
(float32, or float64 for float64 graphs) first, so no op mixes storage and compute types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir import dims
from attngraph.ir.graph import Attr
from attngraph.ir.op import BINARY_ARITHMETIC, COMPARISON, UNARY, Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, axis_index, broadcast, need_float, same
from attngraph.ir.types import INT_DTYPES, DType, TensorType

TS = Sequence[TensorType]
Out = tuple[TensorType, ...]


def _dtype(a: dict[str, Attr]) -> DType:
    try:
        return DType.parse(a["dtype"])
    except ValueError as e:
        raise GraphError(str(e)) from None


def _const(ts: TS, a: dict[str, Attr]) -> Out:
    dtype, value = _dtype(a), a["value"]
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, str):  # a symbolic dim's value at run time
            if dtype not in INT_DTYPES:
                raise GraphError(f"const {v!r} is a dim: its dtype must be int32/int64, got {dtype.value}")
            dims.canonical(v)
        elif not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
            raise GraphError(f"const value {v!r} must be a number, an inf, or a dim name")
    return (TensorType(dtype, (len(value),) if isinstance(value, tuple) else ()),)


def _iota(ts: TS, a: dict[str, Attr]) -> Out:
    dtype = _dtype(a)
    if dtype not in INT_DTYPES:
        raise GraphError(f"iota dtype must be int32 or int64, got {dtype.value}")
    return (TensorType(dtype, (dims.canonical(a["length"]),)),)


def _cast(ts: TS, a: dict[str, Attr]) -> Out:
    return (TensorType(_dtype(a), ts[0].shape),)


def _unary(ts: TS, a: dict[str, Attr]) -> Out:
    (x,) = ts
    need_float(x, "input")
    return (x,)


def _same_dtype(ts: TS, what: str) -> DType:
    kinds = {t.dtype for t in ts}
    if len(kinds) != 1:
        raise GraphError(f"{what} inputs must share one dtype, got {', '.join(str(t) for t in ts)}; cast first")
    return kinds.pop()


def _arithmetic(ts: TS, a: dict[str, Attr]) -> Out:
    dtype = _same_dtype(ts, "arithmetic")
    if dtype is DType.BOOL:
        raise GraphError("arithmetic on bool tensors: use 'and' or cast first")
    return (TensorType(dtype, broadcast([t.shape for t in ts], "elementwise op")),)


def _integer_arithmetic(ts: TS, a: dict[str, Attr]) -> Out:
    if _same_dtype(ts, "mod") not in INT_DTYPES:
        raise GraphError(f"mod takes int32/int64 tensors, got {', '.join(str(t) for t in ts)}")
    return _arithmetic(ts, a)


def _compare(ts: TS, a: dict[str, Attr]) -> Out:
    _same_dtype(ts, "comparison")
    return (TensorType(DType.BOOL, broadcast([t.shape for t in ts], "comparison")),)


def _logical(ts: TS, a: dict[str, Attr]) -> Out:
    if any(t.dtype is not DType.BOOL for t in ts):
        raise GraphError(f"logical ops take bool tensors, got {', '.join(str(t) for t in ts)}")
    return (TensorType(DType.BOOL, broadcast([t.shape for t in ts], "logical op")),)


def _where(ts: TS, a: dict[str, Attr]) -> Out:
    cond, x, y = ts
    if cond.dtype is not DType.BOOL:
        raise GraphError(f"where's condition must be bool, got {cond}")
    dtype = _same_dtype((x, y), "where")
    return (TensorType(dtype, broadcast([cond.shape, x.shape, y.shape], "where")),)


def _reduce(ts: TS, a: dict[str, Attr]) -> Out:
    (x,) = ts
    axis = axis_index(x.rank, a["axis"])
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape)) if a["keepdims"] else \
        x.shape[:axis] + x.shape[axis + 1:]
    return (TensorType(x.dtype, shape),)


def _dot(ts: TS, a: dict[str, Attr]) -> Out:
    x, y = ts
    for t, name in ((x, "dot lhs"), (y, "dot rhs")):
        need_float(t, name)
        if t.rank < 2:
            raise GraphError(f"{name} must have rank >= 2, got {t}")
    _same_dtype(ts, "dot")
    if not same(x.shape[-1], y.shape[-2]):
        raise GraphError(f"dot contraction dims differ: {x} @ {y}")
    batch = broadcast([x.shape[:-2], y.shape[:-2]], "dot batch dims")
    return (TensorType(x.dtype, batch + (x.shape[-2], y.shape[-1])),)


def _count(shape: tuple[dims.Dim, ...]) -> tuple[int, list[str]]:
    """(product of the static dims, sorted symbolic dims) of a shape: equal for reshapes that keep every element."""
    static, symbolic = 1, []
    for d in shape:
        if dims.is_static(d):
            static *= int(d)
        else:
            symbolic.append(dims.canonical(d))
    return static, sorted(symbolic)


def _reshape(ts: TS, a: dict[str, Attr]) -> Out:
    (x,) = ts
    shape = tuple(dims.canonical(d) for d in a["shape"])
    if _count(shape) != _count(x.shape):
        raise GraphError(f"reshape {list(x.shape)} -> {list(shape)} changes the number of elements")
    return (TensorType(x.dtype, shape),)


def _transpose(ts: TS, a: dict[str, Attr]) -> Out:
    (x,) = ts
    perm = tuple(int(p) for p in a["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise GraphError(f"transpose perm {perm} is not a permutation of {x.rank} axes")
    return (TensorType(x.dtype, tuple(x.shape[p] for p in perm)),)


def _slice(ts: TS, a: dict[str, Attr]) -> Out:
    (x,) = ts
    axis = axis_index(x.rank, a["axis"])
    try:
        length = dims.sub(a["stop"], a["start"])
    except ValueError as e:
        raise GraphError(f"slice: {e}") from None
    if dims.is_static(length) and int(length) < 0:
        raise GraphError(f"slice stop {a['stop']!r} is before start {a['start']!r}")
    return (TensorType(x.dtype, x.shape[:axis] + (length,) + x.shape[axis + 1:]),)


def _gather(ts: TS, a: dict[str, Attr]) -> Out:
    table, indices = ts
    if indices.dtype not in INT_DTYPES:
        raise GraphError(f"gather indices must be int32/int64, got {indices}")
    if table.rank < 1:
        raise GraphError(f"gather table must have rank >= 1, got {table}")
    return (TensorType(table.dtype, indices.shape + table.shape[1:]),)


PRIMITIVE_SPECS: dict[Op, OpSpec] = {
    Op.CONST: OpSpec(0, 0, {"value": REQUIRED, "dtype": REQUIRED}, _const),
    Op.IOTA: OpSpec(0, 0, {"length": REQUIRED, "dtype": "int64"}, _iota),
    Op.CAST: OpSpec(1, 1, {"dtype": REQUIRED}, _cast),
    **{op: OpSpec(1, 1, {}, _unary) for op in sorted(UNARY)},
    **{op: OpSpec(2, 2, {}, _arithmetic) for op in sorted(BINARY_ARITHMETIC - {Op.MOD})},
    Op.MOD: OpSpec(2, 2, {}, _integer_arithmetic),
    **{op: OpSpec(2, 2, {}, _compare) for op in sorted(COMPARISON)},
    Op.AND: OpSpec(2, 2, {}, _logical),
    Op.OR: OpSpec(2, 2, {}, _logical),
    Op.NOT: OpSpec(1, 1, {}, _logical),
    Op.WHERE: OpSpec(3, 3, {}, _where),
    Op.REDUCE_MAX: OpSpec(1, 1, {"axis": -1, "keepdims": True}, _reduce),
    Op.REDUCE_SUM: OpSpec(1, 1, {"axis": -1, "keepdims": True}, _reduce),
    Op.DOT: OpSpec(2, 2, {}, _dot),
    Op.RESHAPE: OpSpec(1, 1, {"shape": REQUIRED}, _reshape),
    Op.TRANSPOSE: OpSpec(1, 1, {"perm": REQUIRED}, _transpose),
    Op.SLICE: OpSpec(1, 1, {"axis": REQUIRED, "start": 0, "stop": REQUIRED}, _slice),
    Op.GATHER: OpSpec(2, 2, {}, _gather),
}
