"""The reference rule of ``varlen_attention`` (packed sequences), in float64, key by key from its definition
(``attngraph.ir.varlen_specs``): each query row of sequence ``s`` attends over the keys of sequence ``s`` only,
causal and the window at local positions with the per-sequence offset of ``align``; a row with no visible key
is 0."""

from __future__ import annotations

import numpy as np

from attngraph.ir import Op


def _varlen_attention(node, bound, q, k, v, cu_q, cu_k):
    _, hq, _, _ = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    out = np.zeros(q.shape[:3] + (dv,))
    scale, causal = float(node.attr("scale")), bool(node.attr("causal"))
    wl, wr = int(node.attr("window_left")), int(node.attr("window_right"))
    cap = float(node.attr("softcap"))
    for s in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        offset = (k1 - k0) - (q1 - q0) if node.attr("align") == "bottom_right" else 0
        for h in range(hq):
            kvh = h // (hq // hkv)
            for a in range(q1 - q0):
                pos = a + offset
                visible = [c for c in range(k1 - k0) if (not causal or c <= pos) and (wl < 0 or c >= pos - wl)
                           and (wr < 0 or c <= pos + wr)]
                if not visible:
                    continue  # no key: the row is 0
                keys = [k0 + c for c in visible]
                scores = np.array([q[0, h, q0 + a] @ k[0, kvh, j] for j in keys]) * scale
                if cap:
                    scores = cap * np.tanh(scores / cap)
                e = np.exp(scores - np.max(scores))
                p = e / e.sum()
                used = p != 0  # a key of weight exactly 0 takes no part (NaN/inf in its value included)
                out[0, h, q0 + a] = p[used] @ v[0, kvh][np.asarray(keys)[used]]
    return out


VARLEN_OPS = {Op.VARLEN_ATTENTION: _varlen_attention}
