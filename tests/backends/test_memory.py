"""The NumPy backend walks queries in chunks: its peak memory is bounded, not T x T."""

from __future__ import annotations

import tracemalloc

import numpy as np

import attngraph as ag


def test_fused_attention_never_holds_the_full_score_matrix():
    t, heads, d = 4096, 2, 16
    g = ag.core_attention(heads, d, causal=True)
    run = ag.compile(g, "numpy", max_scores_bytes=4 << 20)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, heads, t, d), dtype=np.float32) for _ in range(3))
    tracemalloc.start()
    y = run(q=q, k=k, v=v)["y"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_scores = heads * t * t * 4  # 128 MiB
    assert y.shape == (1, heads, t, d)
    assert peak < full_scores / 4, f"peak {peak / 2**20:.1f} MiB; the full score matrix would be {full_scores / 2**20:.0f} MiB"
