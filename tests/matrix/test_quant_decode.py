"""``DecodeSession`` with an int8 KV cache on every backend: the session holds int8 cache buffers and float32
scale buffers, and prefill + steps stay within the step-derived bound of the float64 attention without
quantization (``conformance.quant_budgets``), carried through the output projection."""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag
from attngraph.conformance.quant_budgets import attention_bound, element_error

HEADS, KV_HEADS, D_MODEL, T = 8, 2, 32, 12


def _heads(x, w, b, heads):
    y = x @ w + b
    return y.reshape(y.shape[0], y.shape[1], heads, -1).transpose(0, 2, 1, 3)


def _truth_and_bound(weights, x):
    """The float64 causal attention over the whole sequence, and the bound on |y - truth| of an int8 cache."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x = x.astype(np.float64)
    q, k, v = (_heads(x, w[f"w_{t}"], w[f"b_{t}"], h) for t, h in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)))
    scale = 1.0 / np.sqrt(q.shape[-1])
    group = HEADS // KV_HEADS
    s = np.einsum("bhid,bhjd->bhij", q, np.repeat(k, group, axis=1)) * scale
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = p @ np.repeat(v, group, axis=1)
    merge = lambda t: t.transpose(0, 2, 1, 3).reshape(t.shape[0], T, -1)  # noqa: E731
    truth = merge(ctx) @ w["w_o"] + w["b_o"]
    step = lambda t: np.max(np.abs(t), -1, keepdims=True) / 127  # noqa: E731 - per token and head
    dk, dv = element_error(k, step(k), "int8"), element_error(v, step(v), "int8")
    bound = attention_bound(q, k, v, dk * 1.001, dv * 1.001, np.zeros(x.shape[0], np.int64), scale)
    return truth, merge(bound) @ np.abs(w["w_o"])


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch", "onnx"])
def test_int8_cache_session_stays_within_the_derived_bound(backend):
    graph = ag.causal_self_attention(D_MODEL, HEADS, num_kv_heads=KV_HEADS, kv_cache="static", max_len=20,
                                     kv_cache_dtype="int8")
    weights = dict(ag.Weights.random(graph, seed=3))
    x = np.random.default_rng(0).standard_normal((2, T, D_MODEL)).astype(np.float32) * 3
    session = ag.DecodeSession(graph, backend, weights=weights, batch=2)
    assert session._caches["past_key"].dtype == np.int8 and session._caches["past_key_scale"].dtype == np.float32
    ys = [session.prefill(x[:, :5])] + [session.step(x[:, t:t + 1]) for t in range(5, T)]
    got = np.concatenate(ys, axis=1).astype(np.float64)
    truth, bound = _truth_and_bound(weights, x)
    err = np.abs(got - truth)
    assert np.all(err <= bound), f"{backend}: worst error / bound {np.max(err / bound):.2f}"
    assert err.max() > 1e-5, "nothing was quantized"
    assert list(session.lengths) == [T, T]
    # the cache holds each token once, as int8 on the grid, with its write-time scale
    stored = session._caches["past_key"][:, :, :T].astype(np.float32) * session._caches["past_key_scale"][:, :, :T]
    k_true = _heads(x.astype(np.float64), weights["w_k"].astype(np.float64), weights["b_k"].astype(np.float64),
                    KV_HEADS)
    assert np.all(np.abs(stored - k_true) <= session._caches["past_key_scale"][:, :, :T] * 0.5001 + 1e-6)
