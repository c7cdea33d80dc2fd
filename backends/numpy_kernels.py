"""NumPy numerics shared by the NumPy backend's rules: masking, safe softmax, GQA matmuls, and
query-chunked attention that never holds more than ``max_bytes`` of scores at once.

Masked positions are *replaced* by ``-inf`` (not added to), so a row is fully masked exactly when
all its scores are ``-inf``; such rows give probabilities 0 and an output row of 0. NaN anywhere
else propagates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def keep_structured(rows: np.ndarray, kv_len: int, causal: bool, offset: int | np.ndarray,
                    window_left: int, window_right: int) -> np.ndarray | None:
    """Bool ``(len(rows), kv_len)`` of kept keys for query rows ``rows``, or None when nothing is masked.

    ``offset`` may be an array with one value per batch row; the result is then ``(B, 1, rows, kv_len)``.
    """
    if not causal and window_left < 0 and window_right < 0:
        return None
    if np.ndim(offset):
        pos = rows[None, None, :, None] + np.asarray(offset).reshape(-1, 1, 1, 1)
        j = np.arange(kv_len)[None, None, None, :]
    else:
        pos = rows[:, None] + offset
        j = np.arange(kv_len)[None, :]
    keep = np.ones(np.broadcast_shapes(pos.shape, j.shape), dtype=bool)
    if causal:
        keep &= j <= pos
    if window_left >= 0:
        keep &= j >= pos - window_left
    if window_right >= 0:
        keep &= j <= pos + window_right
    return keep


def as_rank4(mask: np.ndarray) -> np.ndarray:
    """Right-align a broadcastable mask to rank 4 by adding leading axes (a view)."""
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def apply_mask(scores: np.ndarray, row0: int, operands: Mapping[str, np.ndarray], *, causal: bool,
               offset: int | np.ndarray, window_left: int, window_right: int) -> np.ndarray:
    """Mask ``scores`` (B, H, rows, Skv), whose first row is query ``row0``; returns a new array."""
    rows = scores.shape[2]
    kv_len = scores.shape[3]

    def q_slice(m: np.ndarray) -> np.ndarray:
        m = as_rank4(m)
        return m if m.shape[2] == 1 else m[:, :, row0:row0 + rows]

    out = scores
    if "bias" in operands:
        out = out + q_slice(operands["bias"]).astype(scores.dtype)
    keep = keep_structured(np.arange(row0, row0 + rows), kv_len, causal, offset, window_left, window_right)
    if "bool" in operands:
        dense = q_slice(operands["bool"])
        keep = dense if keep is None else (dense & keep)
    if "lengths" in operands:
        lengths = np.asarray(operands["lengths"]).reshape(-1, 1, 1, 1)
        by_length = np.arange(kv_len)[None, None, None, :] < lengths
        keep = by_length if keep is None else (by_length & keep)
    if keep is None:
        return out if out is not scores else scores.copy()
    return np.where(keep, out, np.array(-np.inf, dtype=scores.dtype))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; rows that are all ``-inf`` give 0; NaN propagates."""
    peak = np.max(x, axis=-1, keepdims=True)
    dead = peak == -np.inf
    e = np.exp(x - np.where(dead, 0, peak))
    total = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(dead, 1, total)


def grouped_matmul(a: np.ndarray, b: np.ndarray, transpose_b: bool) -> np.ndarray:
    """``a (B,Hq,M,K) @ b (B,Hkv,K,N)`` where q head h uses kv head h // (Hq/Hkv); no K/V copy."""
    batch, hq, m, _ = a.shape
    hkv = b.shape[1]
    bt = np.swapaxes(b, -1, -2) if transpose_b else b
    out = a.reshape(batch, hkv, hq // hkv, m, a.shape[3]) @ bt[:, :, None]
    return out.reshape(batch, hq, m, out.shape[-1])


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, operands: Mapping[str, np.ndarray], *,
              scale: float, softcap: float, causal: bool, offset: int | np.ndarray, window_left: int,
              window_right: int, return_weights: bool, compute: np.dtype,
              max_bytes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Fused attention in ``compute`` precision, over query chunks of at most ``max_bytes`` of scores."""
    batch, hq, q_len, _ = q.shape
    hkv, kv_len, dv = k.shape[1], k.shape[2], v.shape[3]
    groups = hq // hkv
    qc = np.asarray(q, dtype=compute).reshape(batch, hkv, groups, q_len, q.shape[3])
    kt = np.swapaxes(np.asarray(k, dtype=compute), -1, -2)[:, :, None]
    vc = np.asarray(v, dtype=compute)[:, :, None]
    out = np.empty((batch, hkv, groups, q_len, dv), dtype=compute)
    weights = np.empty((batch, hq, q_len, kv_len), dtype=q.dtype) if return_weights else None
    per_row = max(1, batch * hq * kv_len * compute.itemsize * 3)  # scores, exp and mask temporaries
    step = max(1, min(q_len, max_bytes // per_row))
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        s = qc[:, :, :, r0:r1] @ kt
        s *= compute.type(scale)
        if softcap:
            s = compute.type(softcap) * np.tanh(s / compute.type(softcap))
        s = apply_mask(s.reshape(batch, hq, r1 - r0, kv_len), r0, operands, causal=causal, offset=offset,
                       window_left=window_left, window_right=window_right)
        p = softmax(s)
        if weights is not None:
            weights[:, :, r0:r1] = p
        out[:, :, :, r0:r1] = p.reshape(batch, hkv, groups, r1 - r0, kv_len) @ vc
    return out.reshape(batch, hq, q_len, dv), weights
