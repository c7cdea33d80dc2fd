"""The Numba decode kernel of the quantized cache: it runs (not the dequantizing fallback), reads the int8 /
float8 cache in place (no float copy of it is allocated), and equals the float64 reference and the NumPy
backend with a window, sinks and softcap on ragged rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import attngraph as ag
from attngraph.conformance.budgets import BUDGETS, compare
from attngraph.conformance.reference import evaluate
from attngraph.conformance.reference.quant_ops import quantize_values
from attngraph.ir import DType
from attngraph.ir.dtypes import to_numpy

pytest.importorskip("numba")


def _inputs(g, dtype: str, lengths, q_len: int, max_len: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dt = DType.parse(dtype)
    out = {"cache_lengths": np.asarray(lengths, np.int64)}
    for v in g.inputs:
        shape = tuple(len(lengths) if d == "batch" else q_len if d == "q_len" else int(d) for d in v.type.shape)
        if v.name in ("q", "k", "v"):
            out[v.name] = rng.standard_normal(shape).astype(np.float32)
    for tag in ("key", "value"):
        shape = out["k" if tag == "key" else "v"].shape[:2] + (max_len, out["k"].shape[3])
        x = rng.standard_normal(shape).astype(np.float32)
        scale = (np.max(np.abs(x), -1, keepdims=True) / np.float32(127 if dt is DType.INT8 else 448)).astype(np.float32)
        out[f"past_{tag}"] = quantize_values(x, scale, dt).astype(to_numpy(dt))
        out[f"past_{tag}_scale"] = scale
        for b, n in enumerate(lengths):
            out[f"past_{tag}_scale"][b, :, n:] = np.nan  # never read
    return out


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_the_kernel_runs_and_matches_reference_and_numpy(dtype, monkeypatch):
    g = ag.core_attention(4, 16, num_kv_heads=2, causal=True, kv_cache="static", max_len=40, window=(9, 0),
                          sinks=True, softcap=4.0, kv_cache_dtype=dtype)
    w = {"sinks": np.array([0.5, -1.0, 0.0, 2.0], np.float32)}
    inputs = _inputs(g, dtype, [3, 30, 0], 2, 40)
    ref = evaluate(g, w, inputs)
    numpy_y = ag.compile(g, "numpy", weights=w)({k: np.array(v, copy=True) for k, v in inputs.items()})["y"]

    from attngraph_backends.numba import quant_decode

    calls = []
    kernel = quant_decode.quant_decode_attention
    monkeypatch.setattr(quant_decode, "quant_decode_attention", lambda *a: calls.append(1) or kernel(*a))
    run = ag.compile(g, "numba", weights=w)
    got = run({k: np.array(v, copy=True) for k, v in inputs.items()})
    assert calls, "the decode step did not run the quantized kernel"
    for name in ref:
        verdict = compare(got[name], ref[name], BUDGETS["float32"], name)
        assert verdict.ok, verdict.detail
    assert compare(got["y"], numpy_y, BUDGETS["float32"]).ok


def test_a_decode_step_allocates_no_float_copy_of_the_cache():
    max_len, hkv, d = 8192, 2, 64
    g = ag.core_attention(8, d, num_kv_heads=hkv, causal=True, kv_cache="static", max_len=max_len,
                          kv_cache_dtype="int8")
    inputs = _inputs(g, "int8", [max_len - 1], 1, max_len)
    run = ag.compile(g, "numba")
    run({k: np.array(v, copy=True) for k, v in inputs.items()})  # compile first
    tracemalloc.start()
    run(inputs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    float_cache = hkv * max_len * d * 4  # one float32 copy of K: 4 MiB
    assert peak < float_cache / 4, f"peak {peak / 2**20:.2f} MiB; a float copy of K is {float_cache / 2**20:.0f} MiB"
