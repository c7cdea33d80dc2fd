"""An independent float64 oracle of multi-head latent attention (DeepSeek-V2/V3), written from the semantics table.

It imports nothing from attngraph; the core is ``oracle.core``. ``rope_everywhere=True`` is the classic mistake
(rotating the whole q/k head, the no-position part too): the negative control of the decoupled rope."""

from __future__ import annotations

import numpy as np
import oracle


def rms(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_interleaved(x, positions, theta=10000.0):
    """x (B, H, S, d): pairs (2k, 2k+1) turned by angle ``position * theta^(-2k/d)``; positions (B, S)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = np.asarray(positions, np.float64)[:, None, :, None] * inv  # (B, 1, S, d/2)
    cos, sin = np.cos(ang), np.sin(ang)
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 1::2] * cos + x[..., 0::2] * sin
    return out


def mla(x, w, *, heads, nope, rope, v_dim, rank, positions=None, rope_everywhere=False):
    """Naive MLA over a whole sequence (causal, no cache); ``w`` holds attngraph's param names ((in, out))."""
    x = np.asarray(x, np.float64)
    w = {k: np.asarray(a, np.float64) for k, a in w.items()}
    batch, seq, _ = x.shape
    positions = np.broadcast_to(np.arange(seq), (batch, seq)) if positions is None else positions
    q = x @ w["w_q"] if "w_q" in w else rms(x @ w["w_q_a"], w["q_a_norm"]) @ w["w_q_b"]
    q = q.reshape(batch, seq, heads, nope + rope).transpose(0, 2, 1, 3)
    kv_a = x @ w["w_kv_a"]
    c, k_rope = rms(kv_a[..., :rank], w["kv_a_norm"]), kv_a[..., rank:][:, None]  # (B, S, r), (B, 1, S, dr)
    kv = (c @ w["w_kv_b"]).reshape(batch, seq, heads, nope + v_dim).transpose(0, 2, 1, 3)
    k = np.concatenate([kv[..., :nope], np.broadcast_to(k_rope, (batch, heads, seq, rope))], axis=-1)
    if rope_everywhere:
        q, k = rope_interleaved(q, positions), rope_interleaved(k, positions)
    else:
        q = np.concatenate([q[..., :nope], rope_interleaved(q[..., nope:], positions)], axis=-1)
        k = np.concatenate([k[..., :nope], rope_interleaved(k[..., nope:], positions)], axis=-1)
    y, _ = oracle.core(q, k, kv[..., nope:], scale=1.0 / np.sqrt(nope + rope), causal=True)
    return y.transpose(0, 2, 1, 3).reshape(batch, seq, heads * v_dim) @ w["w_o"]
