"""The attention-weighted sum, written once for every eager backend, with the rule that a key whose
weight is exactly 0 (every masked key) takes no part: NaN or inf in its value never reaches the output.

A plain ``p @ v`` breaks that rule, because 0 * NaN is NaN. The fast path is that product; only when
it is not finite (rare: a non-finite value somewhere) is the result recomputed exactly, from counts of
the non-finite values each row really uses, so the check costs O(output) and no (rows x keys x dims) array.
"""

from __future__ import annotations

from typing import Any


def weighted_sum(xp, p: Any, v: Any) -> Any:
    """``p @ v`` (batched, broadcasting), skipping the terms whose weight ``p`` is exactly 0."""
    out = xp.matmul(p, v)
    if bool(xp.all(xp.isfinite(out))):
        return out
    return exact_weighted_sum(xp, p, v)


def exact_weighted_sum(xp, p: Any, v: Any) -> Any:
    """``sum_j p_j v_j`` over the keys with ``p_j != 0``; NaN and +-inf of used values propagate as
    IEEE arithmetic would (inf, -inf, NaN for NaN or for +inf meeting -inf)."""
    finite = xp.isfinite(v)
    out = xp.matmul(p, xp.where(finite, v, xp.zeros_like(v)))
    used = xp.astype(p != 0, p.dtype)  # a NaN weight counts as used: NaN != 0

    def uses(mask: Any) -> Any:
        return xp.matmul(used, xp.astype(mask, p.dtype)) > 0

    nan, pos, neg = uses(xp.isnan(v)), uses(v == float("inf")), uses(v == -float("inf"))
    nan = xp.logical_or(xp.logical_or(nan, xp.isnan(out)), xp.logical_and(pos, neg))  # isnan(out): a NaN weight
    inf = xp.asarray(float("inf"), dtype=out.dtype)
    out = xp.where(pos, inf, out)
    out = xp.where(neg, -inf, out)
    return xp.where(nan, xp.asarray(float("nan"), dtype=out.dtype), out)
