"""Streaming kernels hold no T x T tensor: the NumPy backend walks queries in chunks, the Numba kernel computes
ALiBi, T5's bias and sinks inside its key-block loop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import attngraph as ag


@pytest.mark.parametrize("knobs", [{}, {"alibi": "after_scale", "sinks": True},
                                   {"rel_bias": True, "rel_buckets": 32, "rel_max_distance": 128}])
def test_fused_attention_never_holds_the_full_score_matrix(knobs):
    t, heads, d = 4096, 2, 16
    g = ag.core_attention(heads, d, causal=True, **knobs)
    run = ag.compile(g, "numpy", weights=ag.Weights.random(g, seed=0), max_scores_bytes=4 << 20)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, heads, t, d), dtype=np.float32) for _ in range(3))
    tracemalloc.start()
    y = run(q=q, k=k, v=v)["y"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_scores = heads * t * t * 4  # 128 MiB
    assert y.shape == (1, heads, t, d) and np.isfinite(y).all()
    assert peak < full_scores / 4, f"peak {peak / 2**20:.1f} MiB; the full score matrix would be {full_scores / 2**20:.0f} MiB"


_NUMBA_PEAK = textwrap.dedent("""
    import resource, numpy as np, attngraph as ag
    g = ag.core_attention(8, 64, causal=True, alibi="after_scale", sinks=True)
    run = ag.compile(g, "numba", weights=ag.Weights.random(g, seed=0))
    rng = np.random.default_rng(0)
    run({n: rng.standard_normal((1, 8, 64, 64), dtype=np.float32) for n in "qkv"})   # compile first
    big = {n: rng.standard_normal((1, 8, 8192, 64), dtype=np.float32) for n in "qkv"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = run(big)["y"]
    assert np.isfinite(y).all()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


def test_numba_position_biases_stream_without_a_score_matrix():
    """Causal + ALiBi + sinks at T 8192, 8 heads: a (H, T, T) float32 score tensor would be 2 GiB; the
    kernel's peak grows by a small fraction of that (measured: ~32 MiB). A fresh process, so the peak
    RSS is this call's."""
    pytest.importorskip("numba")
    done = subprocess.run([sys.executable, "-c", _NUMBA_PEAK], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_NUM_THREADS": "2"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = int(done.stdout.split()[-1])
    full_scores = 8 * 8192 * 8192 * 4
    assert grown < full_scores / 8, f"peak RSS grew {grown / 2**20:.0f} MiB; full scores are 2048 MiB"
