"""The Numba streaming kernel at its edges: tile boundaries, T=1, kv_len=1, fully masked rows at block
edges, every tile size, and thread counts. Compared with the float64 oracle."""

from __future__ import annotations

import textwrap

import numpy as np
import oracle
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import attngraph as ag

pytest.importorskip("numba")


def _run(graph, inputs, **options):
    return ag.compile(graph, "numba", **options)(inputs)


@settings(max_examples=40, deadline=None)
@given(q_len=st.integers(1, 40), kv_len=st.integers(1, 40), block_q=st.sampled_from([1, 3, 16, 64]),
       block_k=st.sampled_from([1, 5, 32, 256]), causal=st.booleans(), heads=st.sampled_from([(2, 1), (4, 2), (3, 3)]),
       lengths=st.booleans(), window=st.sampled_from([None, (0, 0), (3, 1)]), seed=st.integers(0, 999))
def test_random_shapes_and_tiles(q_len, kv_len, block_q, block_k, causal, heads, lengths, window, seed):
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    g = ag.core_attention(hq, 5, num_kv_heads=hkv, causal=causal, window=window, key_padding=lengths,
                          mask="bool", return_weights=True)
    x = {"q": rng.standard_normal((2, hq, q_len, 5), dtype=np.float32),
         "k": rng.standard_normal((2, hkv, kv_len, 5), dtype=np.float32),
         "v": rng.standard_normal((2, hkv, kv_len, 5), dtype=np.float32),
         "attn_mask": rng.random((q_len, kv_len)) > 0.3}
    if lengths:
        x["key_lengths"] = rng.integers(0, kv_len + 1, size=2).astype(np.int64)
    out = _run(g, x, block_q=block_q, block_k=block_k)
    y, stages = oracle.core(x["q"], x["k"], x["v"], causal=causal, window=window or (-1, -1),
                            bool_mask=x["attn_mask"], key_lengths=x.get("key_lengths"))
    assert_close(out["y"], y, "float32")
    assert_close(out["attn_weights"], stages["weights"], "float32", "weights")


@pytest.mark.parametrize("dead_row", [0, 15, 16, 31])
def test_fully_masked_rows_at_block_edges(dead_row):
    g = ag.core_attention(1, 4, mask="bool")
    rng = np.random.default_rng(dead_row)
    x = {n: rng.standard_normal((1, 1, 32, 4), dtype=np.float32) for n in "qkv"}
    x["attn_mask"] = np.ones((32, 32), bool)
    x["attn_mask"][dead_row] = False
    x["attn_mask"][:, 16] = False  # a masked column on a key-block edge too
    y = _run(g, x, block_q=16, block_k=16)["y"]
    assert np.all(y[0, 0, dead_row] == 0)
    ref, _ = oracle.core(x["q"], x["k"], x["v"], bool_mask=x["attn_mask"])
    assert_close(y, ref, "float32")


def test_results_do_not_depend_on_thread_count():
    import numba

    g = ag.core_attention(4, 8, causal=True)
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((2, 4, 100, 8), dtype=np.float32) for n in "qkv"}
    outs = [_run(g, x, threads=t, block_q=8)["y"] for t in sorted({1, numba.config.NUMBA_NUM_THREADS})]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)  # each task is independent: bitwise equal


def test_bad_tile_size_is_refused():
    with pytest.raises(ValueError, match="block_q must be >= 1"):
        ag.compile(ag.core_attention(1, 4), "numba", block_q=0)


def test_calls_from_several_python_threads_at_once():
    """The workqueue threading layer aborts on concurrent entry; the backend serialises kernel calls."""
    from concurrent.futures import ThreadPoolExecutor

    g = ag.core_attention(2, 8, causal=True)
    rng = np.random.default_rng(0)
    xs = [{n: rng.standard_normal((2, 2, 70, 8), dtype=np.float32) for n in "qkv"} for _ in range(6)]
    run = ag.compile(g, "numba")
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda x: run(x)["y"], xs))
    for x, y in zip(xs, outs, strict=True):
        assert_close(y, oracle.core(x["q"], x["k"], x["v"], causal=True)[0], "float32")


_LAYER_CHECK = textwrap.dedent("""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    import numba, numpy as np, attngraph as ag
    sys.path.insert(0, sys.argv[1])
    import oracle
    rng = np.random.default_rng(0)
    prefill = ag.core_attention(4, 16, num_kv_heads=2, causal=True, alibi="after_scale")
    run = ag.compile(prefill, "numba")
    xs = [{n: rng.standard_normal((2, 4 if n == "q" else 2, 90, 16), dtype=np.float32) for n in "qkv"}
          for _ in range(4)]
    with ThreadPoolExecutor(2) as pool:          # two Python threads entering the kernels at once
        outs = list(pool.map(lambda x: run(x)["y"], xs))
    ref = ag.compile(prefill, "numpy")
    worst = max(float(np.abs(y - ref(x)["y"]).max()) for x, y in zip(xs, outs))
    step = ag.core_attention(4, 16, num_kv_heads=2, causal=True, kv_cache="static", max_len=600)
    cache = {n: rng.standard_normal((2, 2, 600, 16), dtype=np.float32) for n in ("past_key", "past_value")}
    feed = {"q": rng.standard_normal((2, 4, 1, 16), dtype=np.float32),
            "k": rng.standard_normal((2, 2, 1, 16), dtype=np.float32),
            "v": rng.standard_normal((2, 2, 1, 16), dtype=np.float32),
            "cache_lengths": np.array([599, 300]), **cache}
    want = ag.compile(step, "numpy")({**feed, **{n: c.copy() for n, c in cache.items()}})["y"]
    got = ag.compile(step, "numba")(feed)["y"]
    print(numba.threading_layer(), worst, float(np.abs(got - want).max()))
""")


@pytest.mark.parametrize("policy, layer", [("PASSIVE", "omp"), (None, "workqueue")])
def test_threading_layer_follows_the_wait_policy(policy, layer):
    """OMP_WAIT_POLICY=PASSIVE: numba's OpenMP layer (its workers sleep at once, and wake faster than
    workqueue's); otherwise workqueue. Either way prefill from two Python threads at once and a decode step
    agree with numpy. A fresh process: the layer is chosen once per process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", _LAYER_CHECK, str(Path(__file__).parents[1])], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got_layer, prefill_err, decode_err = done.stdout.split()[-3:]
    assert got_layer == layer
    assert float(prefill_err) < 1e-5 and float(decode_err) < 1e-5, done.stdout


def test_the_console_command_sets_a_passive_wait_policy_unless_one_is_given(monkeypatch):
    import importlib

    cli = importlib.import_module("attngraph.cli.main")  # the module (attngraph.cli.main is also the function)

    for policy, expected in [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")]:
        env = {} if policy is None else {"OMP_WAIT_POLICY": policy}
        monkeypatch.setattr(cli.os, "environ", env)
        monkeypatch.setattr(cli.sys, "argv", ["attngraph", "--help"])
        with pytest.raises(SystemExit):
            cli.console()
        assert env["OMP_WAIT_POLICY"] == expected
