"""Shared fixtures: the backend matrix, the per-dtype error budgets, and a NaN-aware comparator."""

from __future__ import annotations

import os

import numpy as np
import pytest

from attngraph.conformance.budgets import BUDGETS as LIBRARY_BUDGETS
from attngraph.conformance.budgets import compare
from attngraph.errors import BackendUnavailable
from attngraph.lowering.registry import BUILTIN, get_backend

BACKENDS = tuple(sorted(BUILTIN))
# ATTNGRAPH_REQUIRE=all (CI) turns a backend that cannot load into a failure instead of a skip.
_require = os.environ.get("ATTNGRAPH_REQUIRE", "")
REQUIRED = set(BACKENDS) if _require == "all" else {n for n in _require.split(",") if n}

BUDGETS = LIBRARY_BUDGETS  # one budget table: the library's


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each built-in backend; skipped when its package is missing unless ATTNGRAPH_REQUIRE names it."""
    try:
        return get_backend(request.param)
    except BackendUnavailable as e:
        if request.param in REQUIRED:
            pytest.fail(str(e))
        pytest.skip(str(e))


def assert_close(got, ref, dtype: str, what: str = "output") -> None:
    """Compare ``got`` to the float64 ``ref`` within the library's budget for ``dtype`` (the same
    comparison as the conformance runner): NaN/Inf positions must match."""
    verdict = compare(got, ref, BUDGETS[dtype], what)
    assert verdict.ok, f"{verdict.detail} ({dtype})"


def rand(rng: np.random.Generator, shape, dtype: str = "float32", scale: float = 1.0) -> np.ndarray:
    from attngraph.ir import DType
    from attngraph.ir.dtypes import to_numpy

    return (rng.standard_normal(shape) * scale).astype(to_numpy(DType.parse(dtype)))
