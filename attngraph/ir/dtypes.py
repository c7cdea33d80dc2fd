"""NumPy dtypes for IR dtypes; bfloat16 comes from ml_dtypes when it is installed."""

from __future__ import annotations

import functools

import numpy as np

from attngraph.errors import AttnGraphError
from attngraph.ir import DType


def to_numpy(dtype: DType) -> np.dtype:
    """The NumPy dtype for ``dtype``; bfloat16 needs the ``ml_dtypes`` package."""
    if dtype is DType.BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            raise AttnGraphError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    if dtype is DType.FLOAT8_E4M3FN:
        try:
            import ml_dtypes
        except ImportError:
            raise AttnGraphError("a float8_e4m3fn KV cache needs the ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.float8_e4m3fn)
    return np.dtype(dtype.value)


def from_numpy(dtype: np.dtype) -> DType | None:
    """The IR dtype of a NumPy dtype, or None when the IR has no such type."""
    return _from_numpy(np.dtype(dtype))


@functools.lru_cache(maxsize=64)
def _from_numpy(dtype: np.dtype) -> DType | None:  # cached: every input of every call asks
    try:
        return DType(dtype.name)
    except ValueError:
        return None


def compute_dtype(dtype: DType) -> np.dtype:
    """The dtype attention math runs in: float64 stays float64, everything else runs in float32."""
    return np.dtype(np.float64) if dtype is DType.FLOAT64 else np.dtype(np.float32)
