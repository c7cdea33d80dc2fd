"""Check arrays given to a compiled graph against its declared inputs, before any work.

Symbols such as ``batch`` or ``q_len`` are bound from the first input that uses them, and every
later use must agree. Each error names the input, what the graph expects, what was given, and a fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attngraph.errors import InputError
from attngraph.ir import DType, Graph, Value, dims
from attngraph.ir.dtypes import from_numpy


def native_byte_order(given: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs with every NumPy array in the machine's byte order: a big-endian ``>f4`` array is converted
    once, here at the edge (a runtime reading raw memory would see garbage). Other layouts (Fortran
    order, strided views) are left to each backend, which handles them."""
    out = dict(given)
    for name, array in given.items():
        dtype = getattr(array, "dtype", None)
        if isinstance(array, np.ndarray) and dtype.byteorder not in ("=", "|") and not dtype.isnative:
            out[name] = array.astype(dtype.newbyteorder("="))
    return out


def check_inputs(graph: Graph, given: Mapping[str, Any]) -> dict[str, int]:
    """Validate ``given`` (name -> array-like with ``.shape`` and ``.dtype``); return the bound dims."""
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(f"graph {graph.name} needs input(s) {missing}; it takes {_signature(graph)}")
    extra = sorted(set(given) - set(names))
    if extra:
        hint = " (weights go to compile(..., weights=...), not to the call)" if any(
            p.name in extra for p in graph.params) else ""
        raise InputError(f"graph {graph.name} has no input(s) {extra}{hint}; it takes {_signature(graph)}")
    bound: dict[str, tuple[int, str]] = {}
    for value in graph.inputs:
        _check_one(value, given[value.name], bound)
    env = {sym: size for sym, (size, _) in bound.items()}
    for value in graph.inputs:  # sums such as past_len+q_len, once every symbol is bound
        shape = tuple(given[value.name].shape)
        for axis, d in enumerate(value.type.shape):
            if _is_compound(d):
                unbound = [s for s in dims.symbols(d) if s not in env]
                if unbound:
                    raise InputError(f"input {value.name!r}: dim {axis} is {d} but {unbound} is set by no "
                                     "other input; declare that dim with a plain symbol")
                want = dims.evaluate(d, env)
                if shape[axis] != want:
                    raise InputError(_msg(value, given[value.name], f"dim {axis} must be {d} = {want}", _fix(value)))
    return env


def _check_one(value: Value, array: Any, bound: dict[str, tuple[int, str]]) -> None:
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise InputError(f"input {value.name!r} must be an array, got {type(array).__name__}; "
                         f"pass a NumPy array of type {value.type}")
    want = value.type
    got = from_numpy(array.dtype) if not hasattr(array, "is_cuda") else _torch_dtype(array)
    if got is not want.dtype:
        raise InputError(_msg(value, array, f"dtype must be {want.dtype.value}", _dtype_fix(want.dtype, array)))
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != want.rank:
        raise InputError(_msg(value, array, f"rank must be {want.rank}", _fix(value)))
    for axis, (d, size) in enumerate(zip(want.shape, shape)):
        if dims.is_static(d):
            if size != int(d):
                raise InputError(_msg(value, array, f"dim {axis} must be {d}", _fix(value)))
            continue
        if not _is_compound(d):
            sym = dims.canonical(d)
            if sym in bound and bound[sym][0] != size:
                size0, where = bound[sym]
                raise InputError(_msg(value, array, f"dim {axis} ({sym}) is {size} but {where} set {sym}={size0}",
                                      f"make {sym} agree across inputs"))
            bound.setdefault(sym, (size, f"input {value.name!r}"))


def _is_compound(d: dims.Dim) -> bool:
    return not dims.is_static(d) and dims.canonical(d) not in dims.symbols(d)


def _torch_dtype(array: Any) -> DType | None:
    name = str(array.dtype).removeprefix("torch.")
    try:
        return DType(name)
    except ValueError:
        return None


def _dtype_fix(want: DType, array: Any) -> str:
    if want is DType.BOOL:
        return "integer and float masks are not read as bool: pass a bool mask (True = attend), e.g. mask != 0"
    return f"convert with .astype('{want.value}')"


def _msg(value: Value, array: Any, what: str, fix: str) -> str:
    return (f"input {value.name!r}: {what}; expected {value.type}, got {array.dtype} array of shape "
            f"{tuple(array.shape)}. Fix: {fix}")


def _fix(value: Value) -> str:
    return f"pass an array of shape ({', '.join(str(d) for d in value.type.shape)})"


def _signature(graph: Graph) -> str:
    return ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
