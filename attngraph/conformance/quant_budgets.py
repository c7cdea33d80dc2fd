"""Error budgets of the quantized KV cache, derived from the quantisation step (beside ``budgets.py``).

Two comparisons pin the quantized cache:

* against the float64 reference of the **quantized graph** (the rounding rule applied exactly): the usual
  float32 budget of ``BUDGETS``, since the stored values are the rule's, bit for bit (``present_key`` is compared
  too, so a backend that rounds a tie away from zero fails by a whole step);
* against the float64 reference of the **same attention without quantization**: the bound below, derived from
  the step. Each stored element is within ``delta`` of its true value (``QUANT_BUDGETS``: int8 half a step,
  ``scale / 2``; float8 e4m3fn half an ulp, ``|x| / 16``, or half the smallest subnormal step, ``scale / 1024``).
  A key error moves score ``j`` by at most ``eps_j = attn_scale * sum_d |q_d| delta_k[j, d]``; with the true
  weights ``p``, the softmax's normaliser moves by at most ``W = log sum_i p_i exp(eps_i)`` (either way, by
  convexity), so ``|p'_j - p_j| <= p_j (exp(eps_j + W) - 1)``, and for each output element
  ``|y - y_true| <= sum_j p_j [(exp(eps_j + W) - 1) (|v_j| + delta_v[j]) + exp(eps_j + W) delta_v[j]]``,
  plus the float32 budget's rounding. The bound is rigorous, and tight where the weights are spread.
"""

from __future__ import annotations

import numpy as np

from attngraph.conformance.budgets import BUDGETS

# dtype -> (fraction of the scale that bounds an element's error, relative bound of float8's half ulp)
QUANT_BUDGETS: dict[str, tuple[float, float]] = {
    "int8": (0.5, 0.0),                   # round to nearest: at most half a step (scale / 2); no saturation
    "float8_e4m3fn": (2.0 ** -10, 2.0 ** -4),  # subnormal half step (2^-10 * scale) or half an ulp (|x| / 16)
}


def element_error(x: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """The most a stored element can differ from its true value ``x`` (float64), for the write's ``scale``."""
    of_scale, relative = QUANT_BUDGETS[dtype]
    return np.maximum(of_scale * np.abs(scale), relative * np.abs(x))


def attention_bound(q: np.ndarray, k: np.ndarray, v: np.ndarray, dk: np.ndarray, dv: np.ndarray,
                    cached: np.ndarray, attn_scale: float) -> np.ndarray:
    """The bound on ``|y - y_true|`` (B, Hq, Sq, Dv) of a causal static-cache step: true ``q`` (B, Hq, Sq, D) and
    cache after the write ``k``/``v`` (B, Hkv, T, .) with element errors ``dk``/``dv``; row b held ``cached[b]``
    tokens before the step, so query i sees keys ``j <= cached[b] + i`` (bottom-right)."""
    batch, hq, sq, _ = q.shape
    group = hq // k.shape[1]
    out = np.zeros((batch, hq, sq, v.shape[3]))
    for b in range(batch):
        for h in range(hq):
            kv = h // group
            for i in range(sq):
                n = int(cached[b]) + i + 1
                s = attn_scale * (k[b, kv, :n] @ q[b, h, i])
                p = np.exp(s - s.max())
                p /= p.sum()
                eps = attn_scale * (dk[b, kv, :n] @ np.abs(q[b, h, i]))
                grow = np.exp(eps + np.log(np.sum(p * np.exp(eps))))  # exp(eps_j + W)
                out[b, h, i] = p @ ((grow - 1)[:, None] * (np.abs(v[b, kv, :n]) + dv[b, kv, :n])
                                    + grow[:, None] * dv[b, kv, :n])
    _rel, elem = BUDGETS["float32"]
    return out + elem * max(float(np.max(np.abs(v), initial=1.0)), 1.0)
