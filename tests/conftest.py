"""Shared fixtures: the backend matrix, the per-dtype error budgets, and a NaN-aware comparator."""

from __future__ import annotations

import os

import numpy as np
import pytest

from attngraph.errors import BackendUnavailable
from attngraph.registry import BUILTIN, get_backend

BACKENDS = tuple(sorted(BUILTIN))
# ATTNGRAPH_REQUIRE=all (CI) turns a backend that cannot load into a failure instead of a skip.
_require = os.environ.get("ATTNGRAPH_REQUIRE", "")
REQUIRED = set(BACKENDS) if _require == "all" else {n for n in _require.split(",") if n}

# dtype -> (relative error ||got - ref|| / ||ref||, element-wise bound as a fraction of max |ref|)
BUDGETS = {
    "float64": (1e-12, 1e-12),
    "float32": (1e-6, 5e-6),
    "float16": (2e-3, 8e-3),
    "bfloat16": (2e-2, 6e-2),
}


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
    """Compare ``got`` to the float64 ``ref`` within ``BUDGETS[dtype]``; NaN/Inf positions must match."""
    got = np.asarray(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    g = got.astype(np.float64)
    nan_g, nan_r = np.isnan(g), np.isnan(ref)
    if not np.array_equal(nan_g, nan_r):
        idx = np.argwhere(nan_g != nan_r)[0]
        raise AssertionError(f"{what}: NaN mismatch at {tuple(idx)}: got {g[tuple(idx)]}, reference {ref[tuple(idx)]} "
                             f"({int((nan_g != nan_r).sum())} positions differ)")
    inf_g, inf_r = np.isinf(g), np.isinf(ref)
    if not (np.array_equal(inf_g, inf_r) and np.array_equal(g[inf_g], ref[inf_r])):
        raise AssertionError(f"{what}: +-inf positions differ from the reference")
    fin = ~(nan_r | inf_r)
    g, ref = g[fin], ref[fin]
    if g.size == 0:
        return
    rel_budget, elem_budget = BUDGETS[dtype]
    norm = np.linalg.norm(ref)
    rel = np.linalg.norm(g - ref) / (norm if norm > 0 else 1.0)
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    worst = float(np.max(np.abs(g - ref)))
    assert rel <= rel_budget, f"{what}: relative error {rel:.3e} > budget {rel_budget:.0e} ({dtype})"
    assert worst <= elem_budget * max(scale, 1.0), (
        f"{what}: max abs error {worst:.3e} > {elem_budget:.0e} x max|ref| {scale:.3e} ({dtype})")


def rand(rng: np.random.Generator, shape, dtype: str = "float32", scale: float = 1.0) -> np.ndarray:
    from attngraph.dtypes import to_numpy
    from attngraph.ir import DType

    return (rng.standard_normal(shape) * scale).astype(to_numpy(DType.parse(dtype)))
