"""Evaluate the small tensors that shape attention: reshape targets, slice bounds, scale constants.

Exporters compute these in the graph (``Shape -> Gather -> Concat`` for a reshape target, ``Shape -> Slice
-> Cast -> Sqrt -> Div`` for torch's SDPA scale). ``Evaluator.value`` folds them to NumPy arrays, where a
symbolic size is a ``Poly`` in an object array, so a proof built on them holds at every size. Only data
that never depends on a model input's values is folded (shapes, constants, initializers); anything else
gives ``None``. Every node folded is remembered (``used``): those nodes belong to the lifted subgraph too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attngraph.frontends.onnx_discovery.symbolic import Poly

MAX_ELEMENTS = 4096  # a folded tensor larger than this is not shape arithmetic: refuse it
_ONNX_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class Evaluator:
    """Folds values of one onnx-ir model. ``shape_of(value)`` gives a value's dims (``Poly`` or None)."""

    def __init__(self, shape_of: Callable):
        self.shape_of = shape_of
        self.used: set = set()  # the nodes folded so far (onnx-ir nodes)
        self._cache: dict[int, object] = {}
        self._busy: set[int] = set()

    def value(self, v) -> np.ndarray | None:
        """The array ``v`` always holds (ints may be ``Poly`` objects), or None if it is not foldable."""
        if v is None:
            return None
        key = id(v)
        if key in self._cache:
            return self._cache[key]
        if key in self._busy:  # a cycle (only a broken model has one)
            return None
        self._busy.add(key)
        try:
            result = self._compute(v)
        finally:
            self._busy.discard(key)
        if result is not None:  # a failure is not kept: a shape learned later may fold it
            self._cache[key] = result
        return result

    def scalar(self, v) -> float | None:
        """A folded value with exactly one element, as a float (None otherwise)."""
        a = self.value(v)
        if a is None or a.size != 1 or a.dtype == object:
            return None
        return float(a.reshape(()))

    def ints(self, v) -> list[int] | None:
        """A folded 0-D or 1-D integer value with no symbols, as a list (None otherwise)."""
        a = self.value(v)
        if a is None or a.ndim > 1 or a.dtype == object or a.dtype.kind not in "iu":
            return None
        return [int(x) for x in a.reshape(-1)]

    def sizes(self, v) -> list[Poly] | None:
        """A folded 1-D integer value (a shape) as a list of ``Poly`` (None otherwise)."""
        a = self.value(v)
        if a is None or a.ndim != 1 or not (a.dtype == object or a.dtype.kind in "iu"):
            return None
        return [Poly.of(x) if not isinstance(x, Poly) else x for x in a.tolist()]

    # ---- folding --------------------------------------------------------------------------------------

    def _compute(self, v):
        if v.const_value is not None:
            arr = v.const_value.numpy()
            return np.asarray(arr) if arr.size <= MAX_ELEMENTS else None
        node = v.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        fold = _FOLD.get(node.op_type)
        if fold is None:
            return None
        try:
            out = fold(self, node)
        except (ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError, KeyError):
            return None
        if out is None:
            return None
        outs = out if isinstance(out, tuple) else (out,)
        result = outs[v.index()] if v.index() < len(outs) else None
        if result is None or np.asarray(result).size > MAX_ELEMENTS:
            return None
        self.used.add(node)
        return _normal(np.asarray(result) if not isinstance(result, np.ndarray) else result)

    def _inputs(self, node, *, at_least: int = 0):
        vals = [self.value(i) if i is not None else None for i in node.inputs]
        if any(vals[k] is None for k in range(min(at_least, len(vals)))):
            raise ValueError("an input is not foldable")
        return vals


def _normal(a: np.ndarray) -> np.ndarray:
    """Object arrays of constant ``Poly`` back to int64."""
    if a.dtype == object and all(isinstance(x, Poly) and x.is_const or isinstance(x, int | np.integer)
                                 for x in a.reshape(-1).tolist()):
        return np.array([Poly.of(x).value for x in a.reshape(-1).tolist()], dtype=np.int64).reshape(a.shape)
    return a


def _attr(node, name, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _symbolic(a: np.ndarray) -> np.ndarray:
    return a.astype(object) if a.dtype != object else a


# ---- one function per op ------------------------------------------------------------------------------

def _constant(ev, node):
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        a = node.attributes.get(name)
        if a is None:
            continue
        if name == "value":
            return np.asarray(a.value.numpy())
        return np.asarray(a.value, dtype=np.float32 if "float" in name else np.int64)
    return None


def _shape(ev, node):
    dims = ev.shape_of(node.inputs[0])
    if dims is None or any(d is None for d in dims):
        return None
    rank = len(dims)
    start, end = _attr(node, "start", 0), _attr(node, "end", rank)
    start, end = (max(0, min(rank, s + rank if s < 0 else s)) for s in (start, end))
    return _normal(np.array(list(dims[start:end]), dtype=object)) if end > start else np.zeros(0, np.int64)


def _size(ev, node):
    dims = ev.shape_of(node.inputs[0])
    if dims is None or any(d is None for d in dims):
        return None
    total = Poly.of(1)
    for d in dims:
        total = total * d
    return _normal(np.array(total, dtype=object))


def _gather(ev, node):
    data, idx = ev._inputs(node, at_least=2)[:2]
    if idx.dtype == object:
        return None
    axis = _attr(node, "axis", 0)
    idx = idx.astype(np.int64)
    size = data.shape[axis]
    return np.take(data, np.where(idx < 0, idx + size, idx), axis=axis)


def _slice(ev, node):
    vals = ev._inputs(node, at_least=3)
    data, starts, ends = vals[:3]
    axes = vals[3] if len(vals) > 3 and vals[3] is not None else np.arange(len(starts))
    steps = vals[4] if len(vals) > 4 and vals[4] is not None else np.ones(len(starts), np.int64)
    if any(a.dtype == object for a in (starts, ends, axes, steps)):
        return None
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        index[a] = slice(int(s), int(e), int(st))  # NumPy clamps as ONNX does
    return data[tuple(index)]


def _concat(ev, node):
    vals = ev._inputs(node, at_least=len(node.inputs))
    axis = _attr(node, "axis", 0)
    if any(v.dtype == object for v in vals):
        vals = [_symbolic(v) for v in vals]
    return np.concatenate(vals, axis=axis)


def _axes(ev, node):
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return ev.ints(node.inputs[1])
    a = _attr(node, "axes")
    return list(a) if a is not None else None


def _unsqueeze(ev, node):
    data = ev._inputs(node, at_least=1)[0]
    axes = _axes(ev, node)
    if axes is None:
        return None
    rank = data.ndim + len(axes)
    for a in sorted(x + rank if x < 0 else x for x in axes):
        data = np.expand_dims(data, a)
    return data


def _squeeze(ev, node):
    data = ev._inputs(node, at_least=1)[0]
    axes = _axes(ev, node)
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(a + data.ndim if a < 0 else a for a in axes))


def _reshape(ev, node):
    data, shape = ev._inputs(node, at_least=2)[:2]
    if shape.dtype == object:
        return None
    target = [int(d) for d in shape.tolist()]
    allowzero = _attr(node, "allowzero", 0)
    if not allowzero:
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


def _cast(ev, node):
    data = ev._inputs(node, at_least=1)[0]
    to = _ONNX_NUMPY.get(_attr(node, "to"))
    if to is None:
        return None
    if data.dtype == object:
        return data if np.dtype(to).kind in "iu" else None
    return data.astype(to)


def _identity(ev, node):
    return ev._inputs(node, at_least=1)[0]


def _binary(fn_numeric, fn_symbolic=None):
    def fold(ev, node):
        a, b = ev._inputs(node, at_least=2)[:2]
        if a.dtype == object or b.dtype == object:
            if fn_symbolic is None:
                return None
            a, b = np.broadcast_arrays(_symbolic(a), _symbolic(b))
            out = np.empty(a.shape, dtype=object)
            for idx in np.ndindex(a.shape):
                out[idx] = fn_symbolic(Poly.of(a[idx]), Poly.of(b[idx]))
                if out[idx] is None:
                    return None
            if all(isinstance(x, bool) for x in out.reshape(-1).tolist()):
                return out.astype(bool)
            return out
        return fn_numeric(a, b)
    return fold


def _div_numeric(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return (a / b).astype(np.result_type(a, b))


def _mod_numeric(a, b):
    return np.mod(a, b)


def _unary(fn):
    def fold(ev, node):
        a = ev._inputs(node, at_least=1)[0]
        if a.dtype == object:
            return None
        return fn(a).astype(a.dtype) if a.dtype.kind == "f" else fn(a)
    return fold


def _variadic(fn):
    def fold(ev, node):
        vals = ev._inputs(node, at_least=len(node.inputs))
        if any(v.dtype == object for v in vals):
            return None
        out = vals[0]
        for v in vals[1:]:
            out = fn(out, v)
        return out
    return fold


def _where(ev, node):
    c, x, y = ev._inputs(node, at_least=3)
    if c.dtype == object:
        return None
    if x.dtype == object or y.dtype == object:  # a symbolic shape picked by a known condition
        return np.where(c, _symbolic(x), _symbolic(y))
    return np.where(c, x, y)


def _equal_symbolic(a: Poly, b: Poly):
    """``a == b`` for sizes: known when equal, or when one side is a negative constant (a size never is)."""
    if a == b:
        return True
    for x, y in ((a, b), (b, a)):
        if x.is_const and x.value < 0 and all(c > 0 for c in y.terms.values()):
            return False
    if a.is_const and b.is_const:
        return False
    return None


def _constant_of_shape(ev, node):
    shape = ev.ints(node.inputs[0])
    if shape is None or int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    a = node.attributes.get("value")
    fill = a.value.numpy().reshape(-1)[0] if a is not None else np.float32(0)
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


def _range(ev, node):
    start, limit, delta = (ev.scalar(i) for i in node.inputs)
    if None in (start, limit, delta):
        return None
    dtype = ev.value(node.inputs[0]).dtype
    return np.arange(start, limit, delta).astype(dtype)


def _expand(ev, node):
    data, shape = ev._inputs(node, at_least=2)[:2]
    if shape.dtype == object:
        return None
    target = np.broadcast_shapes(data.shape, tuple(int(d) for d in shape.tolist()))
    return np.broadcast_to(data, target).copy()


_FOLD: dict[str, Callable] = {
    "Constant": _constant, "Shape": _shape, "Size": _size, "Gather": _gather, "Slice": _slice,
    "Concat": _concat, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Reshape": _reshape, "Cast": _cast,
    "Identity": _identity,
    "Add": _binary(np.add, lambda a, b: a + b), "Sub": _binary(np.subtract, lambda a, b: a - b),
    "Mul": _binary(np.multiply, lambda a, b: a * b), "Div": _binary(_div_numeric, lambda a, b: a.divide(b)),
    "Mod": _binary(_mod_numeric), "Pow": _binary(np.power),
    "Equal": _binary(np.equal, _equal_symbolic), "Less": _binary(np.less), "Greater": _binary(np.greater),
    "Neg": _unary(np.negative), "Sqrt": _unary(np.sqrt), "Reciprocal": _unary(np.reciprocal),
    "Abs": _unary(np.abs), "Floor": _unary(np.floor), "Ceil": _unary(np.ceil), "Exp": _unary(np.exp),
    "Not": _unary(np.logical_not),
    "Max": _variadic(np.maximum), "Min": _variadic(np.minimum), "And": _variadic(np.logical_and),
    "Or": _variadic(np.logical_or), "Where": _where, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Expand": _expand,
}
