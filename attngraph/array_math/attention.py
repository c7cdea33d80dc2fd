"""Fused attention for the eager backends, written once against the array API: query chunks that
never hold more than ``max_bytes`` of scores, in the compute dtype, with the shared keep mask, safe
softmax and GQA mapping. The NumPy backend runs it as is; the torch backend runs it wherever SDPA
would not be exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attngraph.array_math.masks import apply_mask
from attngraph.array_math.softmax import safe_softmax


def chunked_attention(xp, q: Any, k: Any, v: Any, operands: Mapping[str, Any], *, scale: float, softcap: float,
                      causal: bool, offset: Any, window_left: int, window_right: int, return_weights: bool,
                      compute: Any, max_bytes: int, device: Any = None) -> tuple[Any, Any | None]:
    """``softmax(mask(softcap(scale * q @ k^T))) @ v`` over query chunks; returns (y, weights or None)."""
    batch, hq, q_len, _ = q.shape
    hkv, kv_len, dv = k.shape[1], k.shape[2], v.shape[3]
    groups = hq // hkv
    qc = xp.reshape(xp.astype(q, compute, copy=False), (batch, hkv, groups, q_len, q.shape[3]))
    kt = xp.expand_dims(xp.matrix_transpose(xp.astype(k, compute, copy=False)), axis=2)
    vc = xp.expand_dims(xp.astype(v, compute, copy=False), axis=2)
    out = xp.empty((batch, hkv, groups, q_len, dv), dtype=compute, device=device)
    weights = xp.empty((batch, hq, q_len, kv_len), dtype=compute, device=device) if return_weights else None
    itemsize = 8 if compute == xp.float64 else 4
    per_row = max(1, batch * hq * kv_len * itemsize * 3)  # scores, exp and mask temporaries
    step = max(1, min(q_len, max_bytes // per_row))
    mask = {"causal": causal, "offset": offset, "window_left": window_left, "window_right": window_right}
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        s = xp.matmul(qc[:, :, :, r0:r1], kt)
        s *= scale
        if softcap:
            s = softcap * xp.tanh(s / softcap)
        s = apply_mask(xp, xp.reshape(s, (batch, hq, r1 - r0, kv_len)), r0, operands, device=device, **mask)
        p = safe_softmax(xp, s)
        if weights is not None:
            weights[:, :, r0:r1] = p
        out[:, :, :, r0:r1] = xp.matmul(xp.reshape(p, (batch, hkv, groups, r1 - r0, kv_len)), vc)
    return xp.reshape(out, (batch, hq, q_len, dv)), weights

