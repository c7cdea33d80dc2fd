"""Bad input gets attngraph's own error naming the input, the expectation and the fix."""

from __future__ import annotations

import numpy as np
import pytest

import attngraph as ag


@pytest.fixture(scope="module")
def run():
    g = ag.causal_self_attention(16, 4, num_kv_heads=2, kv_cache=True, mask="bool",
                                 mask_shape=("batch", 1, "q_len", "past_len+q_len"))
    return ag.compile(g, "numpy", weights=ag.Weights.random(g))


def _inputs(b=2, s=3, past=4):
    return {"x": np.zeros((b, s, 16), np.float32), "past_key": np.zeros((b, 2, past, 4), np.float32),
            "past_value": np.zeros((b, 2, past, 4), np.float32),
            "attn_mask": np.ones((b, 1, s, past + s), bool)}


def test_good_inputs_run(run):
    assert run(_inputs())["y"].shape == (2, 3, 16)


def test_missing_input(run):
    x = _inputs()
    del x["past_value"]
    with pytest.raises(ag.InputError, match=r"needs input\(s\) \['past_value'\]; it takes x: f32\[batch,q_len,16\]"):
        run(x)


def test_unexpected_input_and_weights_given_as_inputs(run):
    with pytest.raises(ag.InputError, match=r"has no input\(s\) \['w_q'\] \(weights go to compile"):
        run({**_inputs(), "w_q": np.zeros((16, 16), np.float32)})


def test_wrong_rank(run):
    with pytest.raises(ag.InputError, match=r"input 'x': rank must be 3; expected f32\[batch,q_len,16\], got float32 "
                                            r"array of shape \(3, 16\)\. Fix: pass an array of shape \(batch, q_len, 16\)"):
        run({**_inputs(), "x": np.zeros((3, 16), np.float32)})


def test_wrong_fixed_dim(run):
    with pytest.raises(ag.InputError, match=r"input 'x': dim 2 must be 16"):
        run({**_inputs(), "x": np.zeros((2, 3, 12), np.float32)})


def test_inconsistent_symbolic_dim(run):
    x = _inputs()
    x["past_key"] = np.zeros((5, 2, 4, 4), np.float32)
    with pytest.raises(ag.InputError, match=r"input 'past_key': dim 0 \(batch\) is 5 but input 'x' set batch=2"):
        run(x)


def test_compound_dim_checked(run):
    x = _inputs()
    x["attn_mask"] = np.ones((2, 1, 3, 3), bool)
    with pytest.raises(ag.InputError, match=r"input 'attn_mask': dim 3 must be past_len\+q_len = 7"):
        run(x)


def test_wrong_dtype(run):
    with pytest.raises(ag.InputError, match=r"input 'x': dtype must be float32.*Fix: convert with \.astype\('float32'\)"):
        run({**_inputs(), "x": np.zeros((2, 3, 16), np.float64)})


def test_integer_mask_rejected_at_call(run):
    with pytest.raises(ag.InputError, match="input 'attn_mask': dtype must be bool.*pass a bool mask \\(True = attend\\)"):
        run({**_inputs(), "attn_mask": np.ones((2, 1, 3, 7), np.int64)})


def test_integer_mask_rejected_at_build():
    with pytest.raises(ag.ConfigError, match="integer masks are rejected: ONNX adds them; use 'bool'"):
        ag.self_attention(16, 4, mask="int64")


def test_heads_must_divide_d_model():
    with pytest.raises(ag.ConfigError, match="num_heads=3 does not divide d_model=16: pick num_heads that divides"):
        ag.self_attention(16, 3)


def test_q_heads_multiple_of_kv_heads():
    with pytest.raises(ag.ConfigError, match=r"num_heads=4 must be a multiple of num_kv_heads=3 \(GQA"):
        ag.self_attention(16, 4, num_kv_heads=3)


def test_unknown_knob_lists_valid_ones():
    with pytest.raises(ag.ConfigError, match="unexpected keyword argument 'casual'.*valid options:.*causal"):
        ag.self_attention(16, 4, casual=True)


def test_missing_and_misshaped_weights():
    g = ag.self_attention(16, 4)
    w = dict(ag.Weights.random(g))
    del w["w_k"]
    with pytest.raises(ag.WeightError, match=r"needs weight\(s\) \['w_k'\] that were not given"):
        ag.compile(g, "numpy", weights=w)
    w = dict(ag.Weights.random(g))
    w["w_o"] = w["w_o"].T[:8]
    with pytest.raises(ag.WeightError, match=r"weight 'w_o' has shape \(8, 16\), expected \(16, 16\).*stored \(in, out\)"):
        ag.compile(g, "numpy", weights=w)
    w = dict(ag.Weights.random(g))
    w["b_q"] = w["b_q"].astype(np.float64)
    with pytest.raises(ag.WeightError, match=r"weight 'b_q' has dtype float64, expected float32"):
        ag.compile(g, "numpy", weights=w)


def test_unknown_backend_and_option():
    g = ag.core_attention(2, 4)
    with pytest.raises(KeyError, match="unknown backend 'nope'; known:.*numpy"):
        ag.compile(g, "nope")
    with pytest.raises(ag.AttnGraphError, match=r"backend 'numpy' has no option\(s\) \['chunk'\]; its options are"):
        ag.compile(g, "numpy", chunk=3)


def test_non_array_input():
    g = ag.core_attention(1, 2)
    run = ag.compile(g, "numpy")
    with pytest.raises(ag.InputError, match="input 'q' must be an array, got list"):
        run(q=[[1.0]], k=np.zeros((1, 1, 1, 2), np.float32), v=np.zeros((1, 1, 1, 2), np.float32))
