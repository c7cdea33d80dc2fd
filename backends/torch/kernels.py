"""What the torch backend adds to the shared array math: attention through
``scaled_dot_product_attention`` whenever SDPA computes exactly our semantics.

SDPA is exact for a graph when there is no softcap, no attention-weights output, and the mask is
either absent, SDPA's own ``is_causal`` (top-left aligned: exact for our causal only when the
offset is 0) or expressible as one ``attn_mask`` (built by the shared keep mask). Rows whose keys
are all masked are set to 0 after SDPA, because SDPA kernels differ on them (NaN on some).
"""

from __future__ import annotations

from collections.abc import Mapping

import array_api_compat.torch as xp
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

from attngraph.array_math.masks import as_rank4, keep_mask


def sdpa_plan(operands: Mapping[str, torch.Tensor], *, softcap: float, return_weights: bool, causal: bool,
              offset, window_left: int, window_right: int) -> str:
    """'causal' (SDPA's is_causal), 'mask' (one attn_mask), 'none' (no mask) or 'explicit'."""
    if softcap or return_weights:
        return "explicit"
    structured_only = not operands and window_left < 0 and window_right < 0
    if structured_only and not causal:
        return "none"
    if structured_only and causal and isinstance(offset, int) and offset == 0:
        return "causal"  # is_causal aligns query i with key i: our causal at offset 0, for any q_len/kv_len
    return "mask"


def sdpa_attention(q, k, v, operands, *, scale: float, plan: str, **mask) -> torch.Tensor:
    """Attention through SDPA (plan from ``sdpa_plan``); fully masked rows are set to 0."""
    gqa = q.shape[1] != k.shape[1]
    if plan in ("none", "causal"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=plan == "causal", scale=scale, enable_gqa=gqa)
    keep = keep_mask(xp, 0, q.shape[2], k.shape[2], operands, device=q.device, **mask)
    if "bias" in operands:
        bias = as_rank4(xp, operands["bias"]).to(q.dtype)
        attn_mask = bias if keep is None else bias.masked_fill(~keep, -torch.inf)
        dead = (attn_mask == -torch.inf).all(dim=-1, keepdim=True)
    else:
        attn_mask = keep
        dead = ~keep.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)
    return out.masked_fill(dead, 0.0) if bool(dead.any()) else out
