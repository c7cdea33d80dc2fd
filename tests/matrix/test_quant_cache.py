"""The quantized KV cache on every backend: the quantized graph's own float64 reference (the rounding rule,
bit for bit), the step-derived bound against the unquantized attention, the outlier token, ties at half a
step (a fault that rounds them away from zero is caught), float8 refused by name where it cannot run."""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag
from attngraph.conformance.quant_cases import QUANT_CASES, quant_cases, quant_setup
from attngraph.conformance.reference import evaluate
from attngraph.conformance.runner import run_case, targets_for
from attngraph.errors import ConfigError, Unsupported
from attngraph.ir import Op
from attngraph.lowering.rules import Rules


def _run(setup, backend: str) -> np.ndarray:
    graph, weights, inputs = setup.quant
    fresh = {k: np.array(v, copy=True) for k, v in inputs.items()}
    return ag.compile(graph, backend, weights=weights)(fresh)["y"]


def test_quant_cases_match_the_quantized_reference(backend):
    results = [r for c in quant_cases() for r in run_case(c, targets_for([backend.name]))]
    bad = [f"{r.case} on {r.target}: {r.detail}" for r in results
           if r.status == "failed" or (r.status == "skipped" and not ("float8" in r.case and r.target.startswith("onnx")))]
    assert not bad, "\n".join(bad)
    assert sum(r.status == "passed" for r in results) >= 4


def test_within_the_step_derived_bound_of_the_unquantized_attention(backend):
    for name in QUANT_CASES:
        s = quant_setup(name)
        try:
            got = _run(s, backend.name)
        except Unsupported:
            assert backend.name == "onnx" and "float8" in name
            continue
        truth = evaluate(*s.truth)["y"]
        err = np.abs(got.astype(np.float64) - truth)
        assert np.isfinite(got).all(), name  # NaN garbage past each row's length is never read
        worst = float(np.max(err / s.bound))
        assert worst <= 1.0, f"{name} on {backend.name}: error {err.max():.3e} exceeds the derived bound ({worst:.2f}x)"
        assert err.max() > 0, "the case quantizes nothing"


def test_an_outlier_costs_a_per_head_scale_more_than_per_token_scales():
    errs = {}
    for name in ("quant_int8_outlier_per_token", "quant_int8_outlier_per_head"):
        s = quant_setup(name)
        truth = evaluate(*s.truth)["y"]
        errs[name] = np.linalg.norm(_run(s, "numpy") - truth) / np.linalg.norm(truth)
    assert errs["quant_int8_outlier_per_head"] > 1.3 * errs["quant_int8_outlier_per_token"], errs


def test_ties_round_half_to_even_in_the_stored_cache():
    s = quant_setup("quant_int8_round_half_even")
    graph, weights, inputs = s.quant
    out = ag.compile(graph, "numpy", weights=weights)({k: np.array(v, copy=True) for k, v in inputs.items()})
    row = out["present_key"][0, 0, 5]  # row 0 held 5 tokens: the new key sits at slot 5
    assert row.tolist() == [127, 0, 2, 2, 0, -2, -2, 8]
    assert out["present_key_scale"][0, 0, 5, 0] == np.float32(0.125)


def test_a_backend_rounding_ties_away_from_zero_fails_the_tie_case():
    from attngraph_backends.numpy import backend as numpy_backend

    def away(ctx, x, scale):
        y = np.clip(np.asarray(x, np.float32) / scale, -127, 127)
        return (np.sign(y) * np.floor(np.abs(y) + 0.5)).astype(np.int8)

    rules = Rules("fault-round-away")
    rules.update({o: f for o, f in numpy_backend.rules.items() if o is not Op.ATTENTION})
    rules[Op.QUANTIZE] = away

    class Faulty(numpy_backend.NumpyBackend):
        name = "fault-round-away"

    Faulty.rules = rules
    from attngraph.lowering.registry import unregister_backend

    ag.register_backend(Faulty.name, Faulty)
    try:
        status = {c.name: run_case(c, targets_for([Faulty.name]))[0].status for c in quant_cases()
                  if c.name in ("quant_int8_round_half_even", "quant_int8_outlier_per_token")}
    finally:
        unregister_backend(Faulty.name)
    assert status == {"quant_int8_round_half_even": "failed", "quant_int8_outlier_per_token": "passed"}


def test_float8_on_onnx_is_refused_by_name():
    pytest.importorskip("onnxruntime")
    g = ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=16,
                          kv_cache_dtype="float8_e4m3fn")
    with pytest.raises(Unsupported, match="float8_e4m3fn"):
        ag.compile(g, "onnx")


@pytest.mark.parametrize("knobs, words", [
    ({"kv_cache": False, "kv_cache_dtype": "int8"}, "kv_cache='static'"),
    ({"kv_cache": "static", "max_len": 8, "kv_cache_dtype": "int4"}, "int4"),
    ({"kv_cache": "static", "max_len": 8, "kv_cache_dtype": "int8", "kv_scale": "per_row"}, "per_row"),
    ({"kv_cache": "static", "max_len": 8, "kv_cache_dtype": "int8", "dtype": "float16"}, "float32"),
])
def test_bad_quantized_cache_configs_name_the_knob(knobs, words):
    with pytest.raises(ConfigError, match=words):
        ag.core_attention(2, 4, causal=True, **knobs)
