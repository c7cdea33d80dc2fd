"""Seeded weights and inputs for a case, the float64 reference, and error metrics.

The reference is plain float64 NumPy written here (not attngraph), walking queries in chunks so
big cases fit in memory. Weights are stored ``(in, out)``; each implementation converts.
"""

from __future__ import annotations

import numpy as np

from bench.cases import BenchCase


def make_weights(case: BenchCase, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, hd = case.d_model, case.head_dim
    shapes = {"w_q": (d, case.heads * hd), "w_k": (d, case.kv_heads * hd), "w_v": (d, case.kv_heads * hd),
              "w_o": (case.heads * hd, d)}
    out = {}
    for name, shape in shapes.items():
        bound = 1 / np.sqrt(shape[0])
        out[name] = rng.uniform(-bound, bound, shape).astype(case.dtype)
        out["b" + name[1:]] = rng.uniform(-bound, bound, shape[1]).astype(case.dtype)
    return out


def make_input(case: BenchCase, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal((case.batch, case.seq, case.d_model)).astype(case.dtype)


def reference(case: BenchCase, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """float64 multi-head self-attention on the case's seeded weights and input."""
    w = {k: v.astype(np.float64) for k, v in make_weights(case, seed).items()}
    x = make_input(case, seed).astype(np.float64)
    b, t, _ = x.shape
    h, hkv, hd = case.heads, case.kv_heads, case.head_dim

    def heads(y, n):
        return y.reshape(b, t, n, hd).transpose(0, 2, 1, 3)

    q = heads(x @ w["w_q"] + w["b_q"], h)
    k = np.repeat(heads(x @ w["w_k"] + w["b_k"], hkv), h // hkv, axis=1)
    v = np.repeat(heads(x @ w["w_v"] + w["b_v"], hkv), h // hkv, axis=1)
    ctx = np.empty_like(q)
    for r0 in range(0, t, chunk):
        r1 = min(t, r0 + chunk)
        s = q[:, :, r0:r1] @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        if case.causal:
            s = np.where(np.arange(t)[None, :] <= np.arange(r0, r1)[:, None], s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        ctx[:, :, r0:r1] = (s / s.sum(axis=-1, keepdims=True)) @ v
    return ctx.transpose(0, 2, 1, 3).reshape(b, t, h * hd) @ w["w_o"] + w["b_o"]


def errors(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Relative L2 error, max abs error, and NaN count of ``got`` against ``ref``."""
    g = np.asarray(got, dtype=np.float64)
    nan = int(np.isnan(g).sum())
    diff = np.nan_to_num(g - ref, nan=np.inf)
    return {"rel_err": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "max_abs_err": float(np.max(np.abs(diff))), "nan_count": nan}
