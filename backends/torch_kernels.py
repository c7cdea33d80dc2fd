"""Torch numerics for the torch backend: masks, safe softmax, GQA matmuls, and fused attention that
goes through ``scaled_dot_product_attention`` whenever SDPA computes exactly our semantics.

SDPA is exact for a graph when there is no softcap, no attention-weights output, and the mask is
either absent, SDPA's own ``is_causal`` (top-left aligned: exact for our causal only when the
offset is 0) or expressible as one ``attn_mask``. Rows whose keys are all masked are set to 0 after
SDPA, because SDPA kernels differ on them (NaN on some). Everything else runs the explicit math,
walking queries in chunks so that at most ``max_bytes`` of scores live at once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention


def as_rank4(t: torch.Tensor) -> torch.Tensor:
    """Right-align a broadcastable mask to rank 4 (a view)."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def keep_mask(rows: torch.Tensor, kv_len: int, operands: Mapping[str, torch.Tensor], *, causal: bool,
              offset, window_left: int, window_right: int) -> torch.Tensor | None:
    """Bool keep mask for query ``rows`` broadcastable to (B, H, len(rows), kv_len), or None if all is kept."""
    device = rows.device
    keep = None
    if causal or window_left >= 0 or window_right >= 0:
        off = torch.as_tensor(np.asarray(offset), device=device).reshape(-1, 1, 1, 1)
        pos = rows.reshape(1, 1, -1, 1) + off
        j = torch.arange(kv_len, device=device).reshape(1, 1, 1, -1)
        keep = torch.ones(torch.broadcast_shapes(pos.shape, j.shape), dtype=torch.bool, device=device)
        if causal:
            keep &= j <= pos
        if window_left >= 0:
            keep &= j >= pos - window_left
        if window_right >= 0:
            keep &= j <= pos + window_right
    if "bool" in operands:
        dense = _rows(as_rank4(operands["bool"]), rows)
        keep = dense if keep is None else keep & dense
    if "lengths" in operands:
        lengths = operands["lengths"].to(device).reshape(-1, 1, 1, 1)
        by_length = torch.arange(kv_len, device=device).reshape(1, 1, 1, -1) < lengths
        keep = by_length if keep is None else keep & by_length
    return keep


def _rows(m: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return m if m.shape[2] == 1 else m[:, :, int(rows[0]):int(rows[-1]) + 1]


def apply_mask(scores: torch.Tensor, row0: int, operands: Mapping[str, torch.Tensor], **mask) -> torch.Tensor:
    """Mask ``scores`` (B, H, rows, Skv) whose first row is query ``row0``: add the bias, put -inf where masked."""
    rows = torch.arange(row0, row0 + scores.shape[2], device=scores.device)
    out = scores
    if "bias" in operands:
        out = out + _rows(as_rank4(operands["bias"]), rows).to(scores.dtype)
    keep = keep_mask(rows, scores.shape[3], operands, **mask)
    if keep is None:
        return out
    return torch.where(keep, out, torch.tensor(-torch.inf, dtype=scores.dtype, device=scores.device))


def safe_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; rows of all -inf give 0 (torch.softmax gives NaN); NaN propagates."""
    peak = x.amax(dim=-1, keepdim=True)
    dead = peak == -torch.inf
    e = torch.exp(x - torch.where(dead, torch.zeros_like(peak), peak))
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(dead, torch.ones_like(total), total)


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, transpose_b: bool) -> torch.Tensor:
    """``a (B,Hq,M,K) @ b (B,Hkv,K,N)``, q head h using kv head h // (Hq/Hkv), without copying b."""
    batch, hq, m, k = a.shape
    hkv = b.shape[1]
    bt = b.transpose(-1, -2) if transpose_b else b
    out = a.reshape(batch, hkv, hq // hkv, m, k) @ bt.unsqueeze(2)
    return out.reshape(batch, hq, m, out.shape[-1])


def sdpa_plan(operands: Mapping[str, torch.Tensor], *, softcap: float, return_weights: bool, causal: bool,
              offset, window_left: int, window_right: int) -> str:
    """'causal' (SDPA's is_causal), 'mask' (one attn_mask), 'none' (no mask) or 'explicit'."""
    if softcap or return_weights:
        return "explicit"
    structured_only = not operands and window_left < 0 and window_right < 0
    if structured_only and not causal:
        return "none"
    if structured_only and causal and np.ndim(offset) == 0 and int(offset) == 0:
        return "causal"  # is_causal aligns query i with key i: our causal at offset 0, for any q_len/kv_len
    return "mask"


def sdpa_attention(q, k, v, operands, *, scale: float, plan: str, **mask) -> torch.Tensor:
    """Attention through SDPA (plan from ``sdpa_plan``); fully masked rows are set to 0."""
    gqa = q.shape[1] != k.shape[1]
    if plan in ("none", "causal"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=plan == "causal", scale=scale, enable_gqa=gqa)
    rows = torch.arange(q.shape[2], device=q.device)
    keep = keep_mask(rows, k.shape[2], operands, **mask)
    if "bias" in operands:
        bias = as_rank4(operands["bias"]).to(q.dtype)
        attn_mask = bias if keep is None else bias.masked_fill(~keep, -torch.inf)
        dead = (attn_mask == -torch.inf).all(dim=-1, keepdim=True)
    else:
        attn_mask = keep
        dead = ~keep.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)
    return out.masked_fill(dead, 0.0) if bool(dead.any()) else out


def explicit_attention(q, k, v, operands, *, scale: float, softcap: float, return_weights: bool,
                       max_bytes: int, **mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention math op by op, over query chunks holding at most ``max_bytes`` of scores."""
    batch, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    out = torch.empty((batch, hq, q_len, v.shape[3]), dtype=q.dtype, device=q.device)
    weights = torch.empty((batch, hq, q_len, kv_len), dtype=q.dtype, device=q.device) if return_weights else None
    step = max(1, min(q_len, max_bytes // max(1, batch * hq * kv_len * q.element_size() * 3)))
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        s = grouped_matmul(q[:, :, r0:r1], k, True) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        p = safe_softmax(apply_mask(s, r0, operands, **mask))
        if weights is not None:
            weights[:, :, r0:r1] = p
        out[:, :, r0:r1] = grouped_matmul(p, v, False)
    return out, weights
