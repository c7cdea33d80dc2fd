"""An independent float64 attention oracle, written from the semantics table (attngraph.ir.semantics, shown in the README).

It imports nothing from attngraph and is deliberately plain: explicit loops over batch, heads and
query rows, the GQA head mapping written as ``h // group``, and masks applied row by row.
"""

from __future__ import annotations

import numpy as np


def _broadcast(mask, shape):
    return None if mask is None else np.broadcast_to(np.asarray(mask), shape)


def core(q, k, v, *, scale=None, softcap=0.0, causal=False, offset=0, window=(-1, -1), bool_mask=None,
         bias=None, key_lengths=None, align_to_lengths=False):
    """Attention on 4-D (B, H, S, D) arrays. Returns (y, stages) with the four score stages.

    ``align_to_lengths``: query i of batch b sits at key position i + key_lengths[b] - q_len.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    batch, hq, sq, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = hq // hkv
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    full = (batch, hq, sq, skv)
    bm, bs = _broadcast(bool_mask, full), _broadcast(bias, full)
    y = np.zeros((batch, hq, sq, dv))
    stages = {name: np.zeros(full) for name in ("scaled", "softcapped", "masked", "weights")}
    for b in range(batch):
        for h in range(hq):
            kvh = h // group
            s = (q[b, h] @ k[b, kvh].T) * scale
            stages["scaled"][b, h] = s
            if softcap:
                s = softcap * np.tanh(s / softcap)
            stages["softcapped"][b, h] = s
            if bs is not None:
                s = s + bs[b, h].astype(np.float64)
            for i in range(sq):
                p_abs = i + (key_lengths[b] - sq if align_to_lengths else offset)
                for j in range(skv):
                    keep = True
                    if causal and j > p_abs:
                        keep = False
                    if window[0] >= 0 and j < p_abs - window[0]:
                        keep = False
                    if window[1] >= 0 and j > p_abs + window[1]:
                        keep = False
                    if bm is not None and not bm[b, h, i, j]:
                        keep = False
                    if key_lengths is not None and j >= key_lengths[b]:
                        keep = False
                    if not keep:
                        s[i, j] = -np.inf
            stages["masked"][b, h] = s
            for i in range(sq):
                row = s[i]
                if np.all(row == -np.inf):
                    continue  # fully masked: weights and output stay 0
                e = np.exp(row - np.max(row))
                p = e / e.sum()
                stages["weights"][b, h, i] = p
                kept = p != 0  # a masked key (weight 0) takes no part, NaN or inf in its value included
                y[b, h, i] = p[kept] @ v[b, kvh][kept]
    return y, stages


def split_heads(x, heads):
    b, s, hidden = x.shape
    return np.asarray(x, np.float64).reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def linear(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    return y if b is None else y + np.asarray(b, np.float64)


def mha(query, key, value, weights, *, num_heads, num_kv_heads=None, past_key=None, past_value=None,
        **core_kwargs):
    """Projected multi-head attention; returns (y, present_key, present_value, stages)."""
    num_kv_heads = num_kv_heads or num_heads
    w = {n: np.asarray(a, np.float64) for n, a in weights.items()}
    q = split_heads(linear(query, w["w_q"], w.get("b_q")), num_heads)
    k = split_heads(linear(key, w["w_k"], w.get("b_k")), num_kv_heads)
    v = split_heads(linear(value, w["w_v"], w.get("b_v")), num_kv_heads)
    if past_key is not None:
        k = np.concatenate([np.asarray(past_key, np.float64), k], axis=2)
        v = np.concatenate([np.asarray(past_value, np.float64), v], axis=2)
        core_kwargs.setdefault("offset", past_key.shape[2])
    ctx, stages = core(q, k, v, **core_kwargs)
    y = linear(merge_heads(ctx), w["w_o"], w.get("b_o"))
    return y, k, v, stages
