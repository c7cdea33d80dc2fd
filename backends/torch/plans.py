"""Decode plans of the torch backend: a step of few queries against a static cache, with no mask tensor
and no copy of the cache (defect s3-4).

A decode step is memory-bound: reading each valid cached key and value once is the whole cost. When the
only masking is "row b sees its first ``L_b`` keys" (key lengths, plus causal where every query already
sees all of them: one new token at the end of its row), the mask is a slice: ``k[b, :, :L_b]``. No
(B, 1, q, kv_len) keep mask is built, no ``-inf`` fill pass runs, and the tail past ``L_b`` is never read.

* ``"lean"`` (the CPU plan): ``s^T = k @ q^T`` per kv head (the cache is the GEMM's left operand: MKL
  streams it ~2x faster than as a transposed right operand), the safe softmax over the keys axis, then
  ``p^T @ v``. The q heads of a kv head are stacked, so each cache byte is read once. Rows of different
  lengths are run one at a time, each over its own valid keys.
* ``"sdpa_valid"`` (the CUDA plan, all rows at one length): SDPA's fused kernel over ``k[:, :, :L]`` with
  no ``attn_mask`` and no finiteness pass: with no mask no masked key exists for a NaN to leak through.
* ``None``: not a plain decode step (softcap, weights output, position biases, sinks, dense mask, window,
  or causal rows that do not see every valid key); the caller runs its general path.

``decode_plan`` decides from the host values of the lengths and offsets only, so the choice can be
tested on the CPU for either device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

# Steps with at most this many queries count as decode steps (the numba backend's cut as well).
DECODE_MAX_QUERIES = 16


def host_ints(x: Any, batch: int) -> list[int]:
    """An int or a (B,) integer tensor as B Python ints (one device sync for a tensor)."""
    if isinstance(x, int):
        return [x] * batch
    return [int(n) for n in torch.as_tensor(x).reshape(-1).expand(batch).tolist()]


def decode_plan(device_type: str, q_len: int, kv_len: int, lengths: Sequence[int], offsets: Sequence[int], *,
                operands: Mapping[str, Any], softcap: float, return_weights: bool, has_biases: bool, causal: bool,
                window_left: int, window_right: int) -> str | None:
    """'lean', 'sdpa_valid' or None (see the module docstring). ``lengths``/``offsets``: one per batch row."""
    if q_len == 0 or q_len > DECODE_MAX_QUERIES or softcap or return_weights or has_biases:
        return None
    if set(operands) - {"lengths"} or window_left >= 0 or window_right >= 0:
        return None
    valid = [min(kv_len, max(0, n)) for n in lengths]
    # causal: query i sits at offset_b + i and sees keys <= it; all of a row's valid keys iff offset_b >= L_b - 1
    if causal and any(off < n - 1 for off, n in zip(offsets, valid, strict=True)):
        return None
    if device_type == "cuda" and len(set(valid)) == 1 and valid[0] > 0:
        return "sdpa_valid"
    return "lean"


def run_decode_plan(plan: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Sequence[int], *,
                    scale: float) -> torch.Tensor:
    """Run a plan from ``decode_plan``: q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv) -> (B, Hq, Sq, Dv)."""
    batch, hq, sq, _ = q.shape
    kv_len = k.shape[2]
    valid = [min(kv_len, max(0, n)) for n in lengths]
    if plan == "sdpa_valid":
        n = valid[0]
        return F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], scale=scale,
                                              enable_gqa=hq != k.shape[1])
    if len(set(valid)) == 1:
        return _lean(q, k[:, :, :valid[0]], v[:, :, :valid[0]], scale)
    out = torch.empty((batch, hq, sq, v.shape[3]), dtype=q.dtype, device=q.device)
    for b, n in enumerate(valid):  # rows of different lengths: each over its own keys, still no mask
        out[b:b + 1] = _lean(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], scale)
    return out


def _lean(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q over every key of k/v (no mask), GQA heads stacked; no keys -> zeros."""
    batch, hq, sq, d = q.shape
    hkv, n, dv = k.shape[1], k.shape[2], v.shape[3]
    if n == 0:
        return torch.zeros((batch, hq, sq, dv), dtype=q.dtype, device=q.device)
    stacked = q.reshape(batch, hkv, (hq // hkv) * sq, d)  # q head kvh*g + r is row r*sq.. of kv head kvh
    st = torch.matmul(k, stacked.mT)  # (B, Hkv, keys, rows): the cache as the left operand
    st.mul_(scale)
    p = _safe_softmax_keys(st)
    return torch.matmul(p.mT, v).reshape(batch, hq, sq, dv)


def _safe_softmax_keys(s: torch.Tensor) -> torch.Tensor:
    """The shared safe softmax (``array_math.softmax``) over axis -2: an all ``-inf`` column gives 0, a NaN
    keeps its column NaN. In place on ``s`` (a temporary of keys x rows, small beside the cache)."""
    peak = s.amax(dim=-2, keepdim=True)
    dead = peak == -torch.inf
    s.sub_(peak.masked_fill(dead, 0.0)).exp_()
    total = s.sum(dim=-2, keepdim=True)
    return s.div_(total.masked_fill(dead, 1.0))
