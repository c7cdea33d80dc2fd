"""Fused attention for the eager backends, written once against the array API: query chunks that
never hold more than ``max_bytes`` of scores, in the compute dtype, with the shared keep mask, safe
softmax and GQA mapping. The NumPy backend runs it as is; the torch backend runs it wherever SDPA
would not be exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attngraph.array_math.masks import apply_mask
from attngraph.array_math.positions import PositionBiases, key_distance
from attngraph.array_math.softmax import safe_softmax
from attngraph.array_math.weighted_sum import weighted_sum


def valid_key_extent(xp, k: Any, operands: Mapping[str, Any]) -> int:
    """How many leading keys any row can use: every key at or past each row's ``lengths`` is masked for
    every query, so a static cache's unused tail need not be read, checked or multiplied."""
    kv_len = k.shape[2]
    if "lengths" not in operands or k.shape[0] == 0:
        return kv_len
    return min(kv_len, max(0, int(xp.max(operands["lengths"]))))


def trim_keys(xp, k: Any, v: Any, operands: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``k``, ``v`` and the key-axis operands (``bool``, ``bias``) cut to ``valid_key_extent`` keys."""
    valid = valid_key_extent(xp, k, operands)
    if valid == k.shape[2]:
        return k, v, dict(operands)
    cut = dict(operands)
    for name in ("bool", "bias"):
        if name in cut and cut[name].shape[-1] == k.shape[2]:
            cut[name] = cut[name][..., :valid]
    return k[:, :, :valid], v[:, :, :valid], cut


def chunked_attention(xp, q: Any, k: Any, v: Any, operands: Mapping[str, Any], *, scale: float, softcap: float,
                      causal: bool, offset: Any, window_left: int, window_right: int, return_weights: bool,
                      compute: Any, max_bytes: int, device: Any = None,
                      biases: PositionBiases = PositionBiases()) -> tuple[Any, Any | None]:
    """``softmax(mask(bias(softcap(scale * (q @ k^T + bias0)))), sinks) @ v`` over query chunks, where the
    biases are ALiBi and T5's (``biases``); returns (y, weights or None).

    The q heads that share a kv head are stacked into one matrix, so each chunk is one GEMM per kv head
    that reads that head's keys once (a decode step is memory-bound: reading K once is the whole cost)."""
    if not return_weights:  # the weights output keeps every key's column
        k, v, operands = trim_keys(xp, k, v, operands)
    batch, hq, q_len, d = q.shape
    hkv, kv_len, dv = k.shape[1], k.shape[2], v.shape[3]
    groups = hq // hkv
    qc = xp.reshape(xp.astype(q, compute, copy=False), (batch, hkv, groups, q_len, d))
    kt = xp.matrix_transpose(xp.astype(k, compute, copy=False))
    vc = xp.astype(v, compute, copy=False)
    out = xp.empty((batch, hkv, groups, q_len, dv), dtype=compute, device=device)
    weights = xp.empty((batch, hq, q_len, kv_len), dtype=compute, device=device) if return_weights else None
    itemsize = 8 if compute == xp.float64 else 4
    per_row = max(1, batch * hq * kv_len * itemsize * 3)  # scores, exp and mask temporaries
    step = max(1, min(q_len, max_bytes // per_row))
    mask = {"causal": causal, "offset": offset, "window_left": window_left, "window_right": window_right}
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        rows = groups * (r1 - r0)
        stacked = xp.reshape(qc[:, :, :, r0:r1], (batch, hkv, rows, d))  # copies only this chunk's queries
        s = xp.reshape(xp.matmul(stacked, kt), (batch, hq, r1 - r0, kv_len))
        distance = key_distance(xp, r0, r1 - r0, kv_len, offset, device) if biases else None
        s *= scale
        if biases and (early := biases.before_scale(xp, distance, scale, compute, device)) is not None:
            s = s + early  # ALiBi before the scale: (qk + alibi) * scale
        if softcap:
            s = softcap * xp.tanh(s / softcap)
        if biases and (late := biases.after_softcap(xp, distance, operands.get("rel_table"), compute,
                                                      device)) is not None:
            s = s + late
        s = apply_mask(xp, s, r0, operands, device=device, **mask)
        p = safe_softmax(xp, s, operands.get("sinks"))
        if weights is not None:
            weights[:, :, r0:r1] = p
        y = weighted_sum(xp, xp.reshape(p, (batch, hkv, rows, kv_len)), vc)
        out[:, :, :, r0:r1] = xp.reshape(y, (batch, hkv, groups, r1 - r0, dv))
    return xp.reshape(out, (batch, hq, q_len, dv)), weights
