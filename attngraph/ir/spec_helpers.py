"""What the per-op type rules share: the ``OpSpec`` record and small checks that raise ``GraphError``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from attngraph.errors import GraphError
from attngraph.ir import dims
from attngraph.ir.types import FLOAT_DTYPES, TensorType

REQUIRED = object()  # marks an attribute without a default

Infer = Callable[[Sequence[TensorType], dict[str, Any]], tuple[TensorType, ...]]


@dataclass(frozen=True)
class OpSpec:
    """What an op accepts: input count range, attributes with defaults, and its type rule."""

    min_inputs: int
    max_inputs: int | None  # None: unbounded
    attrs: dict[str, Any]
    infer: Infer


def same(a: dims.Dim, b: dims.Dim) -> bool:
    """Two dims are equal (after canonical spelling)."""
    return dims.canonical(a) == dims.canonical(b)


def need_float(t: TensorType, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise GraphError(f"{what} must be a float tensor, got {t}")


def need_rank(t: TensorType, rank: int, what: str, layout: str) -> None:
    if t.rank != rank:
        raise GraphError(f"{what} must have rank {rank} {layout}, got {t}")


def need_static(d: dims.Dim, what: str) -> int:
    if not dims.is_static(d):
        raise GraphError(f"{what} must be a fixed integer, got symbolic dim {d!r}")
    return int(d)


def axis_index(rank: int, axis: int) -> int:
    """``axis`` (negative counts from the end) as an index into a shape of ``rank`` dims."""
    if not -rank <= int(axis) < rank:
        raise GraphError(f"axis {axis} is out of range for rank {rank}")
    return int(axis) % rank


def broadcast(shapes: Sequence[tuple[dims.Dim, ...]], what: str) -> tuple[dims.Dim, ...]:
    """NumPy's right-aligned broadcast of symbolic shapes: each dim pair equal, or one of them 1."""
    rank = max(len(s) for s in shapes)
    out: list[dims.Dim] = []
    for i in range(rank):
        dim: dims.Dim = 1
        for shape in shapes:
            j = len(shape) - rank + i
            if j < 0:
                continue
            d = dims.canonical(shape[j])
            if d == 1 or same(d, dim):
                continue
            if dim != 1:
                raise GraphError(f"{what}: shapes {[list(s) for s in shapes]} do not broadcast (dim {dim!r} vs {d!r})")
            dim = d
        out.append(dim)
    return tuple(out)
