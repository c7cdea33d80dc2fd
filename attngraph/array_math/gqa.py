"""The GQA head mapping, written once for every eager backend: q head ``h`` reads kv head
``h // (Hq / Hkv)``. The q heads of one group become a broadcast axis, so K and V are never copied."""

from __future__ import annotations

from typing import Any


def grouped_matmul(xp, a: Any, b: Any, transpose_b: bool) -> Any:
    """``a (B, Hq, M, K) @ b (B, Hkv, K, N)`` (``b`` as (B, Hkv, N, K) with ``transpose_b``)."""
    batch, hq, m, k = a.shape
    hkv = b.shape[1]
    bt = xp.matrix_transpose(b) if transpose_b else b
    out = xp.matmul(xp.reshape(a, (batch, hkv, hq // hkv, m, k)), xp.expand_dims(bt, axis=2))
    return xp.reshape(out, (batch, hq, m, out.shape[-1]))
