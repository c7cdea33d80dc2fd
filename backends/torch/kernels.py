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

from attngraph.array_math.masks import as_rank4, keep_mask, rows_of
from attngraph.array_math.positions import PositionBiases, key_distance


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


def sdpa_position_bias(q, k, v, operands, biases: PositionBiases, *, scale: float, max_bytes: int,
                       **mask) -> torch.Tensor:
    """ALiBi and T5's bias (plus any dense bias operand and the keep mask) as SDPA's float ``attn_mask``,
    built for one chunk of query rows at a time, so no (T x T) bias is ever held: exact where SDPA is
    (no softcap, no sinks, finite inputs). Fully masked rows are set to 0."""
    batch, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    gqa = hq != k.shape[1]
    step = max(1, min(q_len, max_bytes // max(1, 2 * batch * hq * kv_len * q.element_size())))
    prefix = _causal_prefix(mask)
    if prefix:
        step = min(step, CAUSAL_CHUNK_ROWS)  # smaller chunks skip more of the masked future
    out = torch.empty((batch, hq, q_len, v.shape[3]), dtype=q.dtype, device=q.device)
    for r0 in range(0, q_len, step):
        rows = min(q_len, r0 + step) - r0
        # Under a causal mask with a scalar offset, the chunk's last row sees keys [0, offset + r0 + rows):
        # the keys after that are masked for every row of the chunk, so SDPA never reads them.
        end = max(1, min(kv_len, mask["offset"] + r0 + rows)) if prefix else kv_len
        distance = key_distance(xp, r0, rows, end, mask["offset"], q.device)
        bias = biases.additive(xp, distance, scale, operands.get("rel_table"), q.dtype, q.device)
        if "bias" in operands:
            bias = bias + rows_of(xp, as_rank4(xp, operands["bias"]), r0, rows)[..., :end].to(q.dtype)
        chunk_ops = {name: (as_rank4(xp, t)[..., :end] if name == "bool" else t) for name, t in operands.items()}
        keep = keep_mask(xp, r0, rows, end, chunk_ops, device=q.device, **mask)
        if keep is not None:
            bias = bias.masked_fill(~keep, -torch.inf)
        y = F.scaled_dot_product_attention(q[:, :, r0:r0 + rows], k[:, :, :end], v[:, :, :end], attn_mask=bias,
                                           scale=scale, enable_gqa=gqa)
        if _may_mask_whole_rows(operands, mask):
            dead = (bias == -torch.inf).all(dim=-1, keepdim=True)
            y = y.masked_fill(dead, 0.0) if bool(dead.any()) else y
        out[:, :, r0:r0 + rows] = y
    return out


CAUSAL_CHUNK_ROWS = 128


def _causal_prefix(mask) -> bool:
    """True when each query row keeps only a prefix of the keys ending at ``offset + row`` (causal, one offset
    for every batch row): the keys past a chunk's last row can be left out of that chunk's SDPA call."""
    return mask["causal"] and isinstance(mask["offset"], int) and mask["window_right"] < 0


def _may_mask_whole_rows(operands, mask) -> bool:
    """False when no query row can lose every key: no dense mask, lengths or window, and a causal offset of
    at least 0 (query i keeps key 0). Saves a pass over the bias."""
    structured = mask["window_left"] < 0 and mask["window_right"] < 0 and isinstance(mask["offset"], int) \
        and mask["offset"] >= 0
    return not (structured and set(operands) <= {"rel_table"})
