"""``ArrayState``: what the shared array math needs to know about the array library it runs on.

Rules get the array namespace from their inputs (``array_api_compat.array_namespace``); ops that
make arrays from nothing (``const``, ``iota``) and casts to IR dtypes read it from the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attngraph.ir import DType


@dataclass
class ArrayState:
    """The namespace (``array_api_compat.numpy``, ``.torch``...), the device, and IR dtype -> library dtype."""

    xp: Any
    dtypes: Mapping[DType, Any]
    device: Any = None
    max_scores_bytes: int = 64 << 20
    extra: dict[str, Any] = field(default_factory=dict)

    def dtype(self, dtype: DType) -> Any:
        return self.dtypes[dtype]

    def compute_dtype(self, dtype: DType) -> Any:
        """The library dtype math runs in for IR dtype ``dtype`` (float32, or float64 for float64)."""
        return self.dtypes[dtype.compute]


def numpy_dtypes() -> dict[DType, Any]:
    """IR dtypes as NumPy dtypes (bfloat16 from ml_dtypes, only when a graph uses it)."""
    import numpy as np

    class _Lazy(dict):
        def __missing__(self, key: DType) -> Any:
            from attngraph.ir.dtypes import to_numpy

            self[key] = to_numpy(key)
            return self[key]

    table = _Lazy({d: np.dtype(d.value) for d in DType if d not in (DType.BFLOAT16, DType.FLOAT8_E4M3FN)})
    return table


def namespace(x: Any) -> Any:
    """The array-API namespace of ``x`` (NumPy arrays, torch tensors and any compliant library)."""
    import array_api_compat

    return array_api_compat.array_namespace(x)
