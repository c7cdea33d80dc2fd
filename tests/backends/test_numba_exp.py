"""The SIMD exp and row max that the Numba kernel's softmax runs on, against float64 NumPy."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from attngraph_backends.numba.exp import exp_shifted_sum, row_max  # noqa: E402
from attngraph_backends.numba.rules import SMALL_GEMM_LIMIT, auto_block_k  # noqa: E402
from numba import njit  # noqa: E402


@njit
def _exp_rows(s, m):
    totals = np.empty(s.shape[0], np.float64)
    for r in range(s.shape[0]):
        totals[r] = exp_shifted_sum(s, r, m[r])
    return totals


@njit
def _max_rows(s):
    best = np.empty(s.shape[0], s.dtype)
    nan = np.empty(s.shape[0], np.bool_)
    for r in range(s.shape[0]):
        best[r], nan[r] = row_max(s, r)
    return best, nan


@pytest.mark.parametrize("dtype, budget, per_unit", [(np.float32, 1e-6, 1e-7), (np.float64, 1e-14, 1e-15)])
def test_exp_matches_float64_over_the_whole_range(dtype, budget, per_unit):
    """Relative error within ``budget + per_unit * |x - m|``: exp's own condition number is |x|, and
    a float32 exp that does the range reduction in float32 loses that much (5e-6 at x = -87, where
    the weight is 1e-38 of the row's largest, so the softmax never sees it)."""
    x = np.concatenate([-np.geomspace(1e-6, 200, 4000), [0.0, -0.5, -87.0, -87.5, -104.0, -np.inf]])
    rows = np.stack([x, x - 3.25]).astype(dtype)  # second row: shifted so rounding lands elsewhere
    m = np.array([0.0, -3.25], dtype)
    s = rows.copy()
    totals = _exp_rows(s, m)
    want = np.exp(rows.astype(np.float64) - m[:, None].astype(np.float64))
    tiny = want < 2.0 ** -125  # below float32's normal range the fast path flushes to 0
    rel = np.abs(s - want) / np.where(tiny, 1.0, want)
    allowed = budget + per_unit * np.abs(rows.astype(np.float64) - m[:, None])
    assert np.all(rel[~tiny] <= allowed[~tiny])
    assert np.all(s[tiny] <= want[tiny] + 1e-37)
    assert np.all(s[:, -1] == 0.0)  # exp(-inf) is exactly 0, never NaN
    np.testing.assert_allclose(totals, want.sum(1), rtol=budget * 10)  # the sum is dominated by x near m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_orders_signs_and_infinities_and_flags_nan(dtype):
    s = np.array([[-3.0, -0.0, -7.5, -np.inf],
                  [-np.inf, -np.inf, -np.inf, -np.inf],
                  [1e-30, -1e30, 2.5, np.inf],
                  [-2.0, np.nan, 5.0, 1.0],
                  [-1e-40, -2e-40, -np.inf, -5.0]], dtype)
    best, nan = _max_rows(s)
    assert list(nan) == [False, False, False, True, False]
    assert best[0] == 0.0 and best[1] == -np.inf and best[2] == np.inf
    assert best[4] == np.max(s[4])


def test_auto_block_k_keeps_tiles_in_blas_small_path():
    assert auto_block_k(64, 64) == 128
    for head_dim in (32, 64, 96, 128, 256, 512):
        bk = auto_block_k(64, head_dim)
        assert 16 <= bk <= 128 and (64 * bk * head_dim <= SMALL_GEMM_LIMIT or bk == 16)
