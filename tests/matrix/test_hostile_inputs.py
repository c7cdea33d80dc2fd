"""Hostile and unusual input, as properties on every backend and ONNX export style against the float64
reference: non-finite values in masked positions, zero-size dims, byte orders and memory layouts; and
weights that the caller changes after compile."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngraph as ag
from attngraph.conformance.reference import evaluate

# every backend, and the ONNX backend in each export style
TARGETS = [("numpy", {}), ("numba", {}), ("torch", {}), ("onnx", {"style": "attention"}),
           ("onnx", {"style": "decomposed"})]
IDS = ["numpy", "numba", "torch", "onnx-attention", "onnx-decomposed"]
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(target, graph, inputs, pipeline="O1"):
    """Every output against the float64 reference; non-finite inputs raise no NumPy RuntimeWarning (they
    propagate, or are masked, by the semantics table)."""
    name, options = target
    ref = evaluate(graph, {}, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = ag.compile(ag.run_pipeline(graph, pipeline), name, **options)(inputs)
    for out, want in ref.items():
        assert_close(got[out], want, "float32", out)


@st.composite
def masked_garbage(draw):
    """A core attention case whose masked positions (by key lengths, a key-padding bool mask or the causal
    future) hold NaN or +-inf in K and/or V; every other value is finite."""
    kind = draw(st.sampled_from(["lengths", "bool", "causal"]))
    q_len, kv_len = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    knobs = {"lengths": {"key_padding": True}, "bool": {"mask": "bool", "mask_shape": ("batch", 1, 1, "kv_len")},
             "causal": {"causal": True}}[kind]
    graph = ag.core_attention(4, 4, num_kv_heads=2, return_weights=True, **knobs)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = {n: rng.standard_normal(s).astype(np.float32) for n, s in
         (("q", (2, 4, q_len, 4)), ("k", (2, 2, kv_len, 4)), ("v", (2, 2, kv_len, 4)))}
    if kind == "lengths":
        x["key_lengths"] = rng.integers(0, kv_len + 1, size=2)
        masked = np.arange(kv_len)[None, :] >= x["key_lengths"][:, None]
    elif kind == "bool":
        keep = rng.random((2, kv_len)) > 0.4
        x["attn_mask"] = keep[:, None, None, :]
        masked = ~keep
    else:  # keys no query can see: beyond the last query's causal frontier
        masked = np.broadcast_to(np.arange(kv_len)[None, :] >= q_len, (2, kv_len))
    value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    where = draw(st.sampled_from(["k", "v", "kv"]))
    for tensor in where:
        arr = x["k" if tensor == "k" else "v"]
        arr[np.broadcast_to(masked[:, None, :, None], arr.shape)] = value
    return graph, x


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
@SETTINGS
@given(case=masked_garbage())
def test_non_finite_values_in_masked_positions_take_no_part(target, case):
    _check(target, *case)


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
@SETTINGS
@given(batch=st.sampled_from([0, 1, 2]), q_len=st.sampled_from([0, 1, 3]), kv_len=st.sampled_from([0, 1, 4]),
       mask=st.sampled_from([None, "bool", "lengths"]), causal=st.booleans())
def test_zero_size_dims_follow_the_semantics(target, batch, q_len, kv_len, mask, causal):
    graph = ag.core_attention(2, 4, causal=causal, return_weights=True, mask="bool" if mask == "bool" else None,
                              key_padding=mask == "lengths")
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal(s).astype(np.float32) for n, s in
         (("q", (batch, 2, q_len, 4)), ("k", (batch, 2, kv_len, 4)), ("v", (batch, 2, kv_len, 4)))}
    if mask == "bool":
        x["attn_mask"] = rng.random((q_len, kv_len)) > 0.3
    if mask == "lengths":
        x["key_lengths"] = np.full(batch, kv_len, np.int64)
    _check(target, graph, x)


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    wide[..., ::2] = x
    return {"big-endian": x.astype(x.dtype.newbyteorder(">")), "fortran": np.asfortranarray(x),
            "strided": wide[..., ::2], "reversed": np.ascontiguousarray(x[::-1])[::-1]}


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
@pytest.mark.parametrize("layout", ["big-endian", "fortran", "strided", "reversed"])
def test_byte_orders_and_layouts_give_the_same_numbers(target, layout):
    graph = ag.causal_self_attention(16, 4, num_kv_heads=2)
    w = ag.Weights.random(graph, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    run = ag.compile(graph, target[0], weights=w, **target[1])
    want = run(x=x)["y"]
    np.testing.assert_array_equal(run(x=_layouts(x)[layout])["y"], want)


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
@pytest.mark.parametrize("pipeline", ["O0", "O1"])
def test_compiled_graphs_keep_their_own_copy_of_the_weights(target, pipeline):
    graph = ag.causal_self_attention(16, 4, num_kv_heads=2)
    w = {k: np.array(v) for k, v in ag.Weights.random(graph, seed=3).items()}
    x = np.random.default_rng(4).standard_normal((1, 4, 16)).astype(np.float32)
    run = ag.compile(ag.run_pipeline(graph, pipeline), target[0], weights=w, **target[1])
    before = run(x=x)["y"]
    for arr in w.values():
        arr[...] = 0  # the caller reuses its buffers
    np.testing.assert_array_equal(run(x=x)["y"], before)


def test_weights_are_read_only_copies():
    graph = ag.self_attention(8, 2)
    raw = {k: np.array(v) for k, v in ag.Weights.random(graph).items()}
    weights = ag.Weights(raw)
    assert all(not weights[k].flags.writeable for k in weights)
    with pytest.raises(ValueError):
        weights["w_q"][0, 0] = 1.0
    raw["w_q"][0, 0] = 123.0
    assert weights["w_q"][0, 0] != 123.0
