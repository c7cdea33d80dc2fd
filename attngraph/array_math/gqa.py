"""The GQA head mapping, written once for every eager backend: q head ``h`` reads kv head
``h // (Hq / Hkv)``. The q heads of one group become a broadcast axis, so K and V are never copied."""

from __future__ import annotations

from typing import Any

from attngraph.array_math.weighted_sum import weighted_sum


def grouped_matmul(xp, a: Any, b: Any, transpose_b: bool, *, skip_zero_weights: bool = False) -> Any:
    """``a (B, Hq, M, K) @ b (B, Hkv, K, N)`` (``b`` as (B, Hkv, N, K) with ``transpose_b``).
    ``skip_zero_weights``: ``a`` holds attention weights; a weight of exactly 0 takes no part."""
    batch, hq, m, k = a.shape
    hkv = b.shape[1]
    bt = xp.matrix_transpose(b) if transpose_b else b
    a5, b5 = xp.reshape(a, (batch, hkv, hq // hkv, m, k)), xp.expand_dims(bt, axis=2)
    out = weighted_sum(xp, a5, b5) if skip_zero_weights else xp.matmul(a5, b5)
    return xp.reshape(out, (batch, hq, m, out.shape[-1]))
