"""Length and position inputs out of range are refused before any backend runs, by name and the same on every
backend (defects s3-1 and s3-2): a static cache's lengths, key lengths, ONNX's nonpad_kv_seqlen, and rotary
positions read from cos/sin caches. Values at the ends of each range still run, and give the oracle's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import core

import attngraph as ag
from attngraph.errors import InputError

BACKENDS = ["numpy", "numba", "torch", "onnx"]


def _static_step(lengths, q_len=2, max_len=8):
    """A causal static-cache step of core attention: the compiled inputs, with caches that hold row numbers."""
    rng = np.random.default_rng(0)
    batch = len(lengths)
    cache = np.arange(batch * 2 * max_len * 8, dtype=np.float32).reshape(batch, 2, max_len, 8)
    return {"q": rng.standard_normal((batch, 4, q_len, 8), dtype=np.float32),
            "k": rng.standard_normal((batch, 2, q_len, 8), dtype=np.float32),
            "v": rng.standard_normal((batch, 2, q_len, 8), dtype=np.float32),
            "past_key": cache, "past_value": cache.copy(), "cache_lengths": np.array(lengths, np.int64)}


STATIC_CACHE_REFUSALS = {
    "overflow": ([3, 7], r"cache overflow: row 1 holds 7 entries and this step adds 2, past the cache's max_len 8 "
                         r"\(input 'cache_lengths' takes 0\.\.6 for a step of 2\)\. Fix: allocate a longer cache"),
    "negative": ([-1, 0], r"input 'cache_lengths': row 0 is -1; a cache length is >= 0"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(STATIC_CACHE_REFUSALS))
def test_s3_1_static_cache_out_of_range_is_input_error_on_every_backend(backend, case, capfd):
    """Defect s3-1: onnx raised onnxruntime's own RuntimeError from TensorScatter and printed its error log; numpy
    wrote the valid rows into the caller's cache before refusing the bad one. Now the one check runs first, on
    every backend: nothing is written, and nothing reaches stderr."""
    lengths, message = STATIC_CACHE_REFUSALS[case]
    run = ag.compile(ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=8), backend)
    feed = _static_step(lengths)
    before = feed["past_key"].copy()
    capfd.readouterr()
    with pytest.raises(InputError, match=message):
        run(feed)
    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(feed["past_key"], before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_s3_1_static_cache_filled_to_max_len_runs(backend):
    """The end of the range: rows that fill the cache exactly, and an empty row, match the oracle."""
    run = ag.compile(ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=8), backend)
    feed = _static_step([6, 0])
    keys, values = feed["past_key"].copy(), feed["past_value"].copy()
    y = np.asarray(run({**feed, "past_key": keys, "past_value": values})["y"])
    for row, n in enumerate((6, 0)):
        k = np.concatenate([feed["past_key"][row:row + 1, :, :n], feed["k"][row:row + 1]], axis=2)
        v = np.concatenate([feed["past_value"][row:row + 1, :, :n], feed["v"][row:row + 1]], axis=2)
        want, _ = core(feed["q"][row:row + 1], k, v, causal=True, offset=n)
        np.testing.assert_allclose(y[row:row + 1], want, rtol=1e-5, atol=1e-5)


def test_s3_1_onnxruntime_failures_are_attngraph_errors_without_its_log(capfd):
    """Behind the value checks (the backend's own ``run``, which ``Executable.__call__`` calls after them), a
    failure inside onnxruntime is attngraph's LoweringError, and onnxruntime logs nothing to stderr."""
    run = ag.compile(ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=8), "onnx")
    feed = _static_step([3, 7])
    capfd.readouterr()
    with pytest.raises(ag.LoweringError, match=r"onnxruntime failed to run the model on CPUExecutionProvider: .*"
                                               r"TensorScatter"):
        run.run(feed, {"batch": 2, "q_len": 2})
    assert capfd.readouterr().err == ""


KEY_LENGTH_REFUSALS = {"negative": ([-1, 5], 0, -1), "past_the_keys": ([3, 7], 1, 7)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(KEY_LENGTH_REFUSALS))
def test_s3_2_key_lengths_out_of_range_are_refused_by_name(backend, case):
    """Defect s3-2: key_lengths [-1, 7] at kv_len 5 ran on every backend (row 0 fully masked, row 1 every key)."""
    lengths, row, value = KEY_LENGTH_REFUSALS[case]
    run = ag.compile(ag.core_attention(4, 16, key_padding=True), backend)
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, s, 16), dtype=np.float32) for s in (3, 5, 5))
    with pytest.raises(InputError, match=rf"input 'key_lengths': row {row} is {value}, outside 0\.\.5: a key length "
                                         r"counts a row's valid keys and the key axis holds 5\. Fix: pass each row"):
        run(q=q, k=k, v=v, key_lengths=np.array(lengths))
    y = np.asarray(run(q=q, k=k, v=v, key_lengths=np.array([0, 5]))["y"])  # both ends of the range
    np.testing.assert_allclose(y, core(q, k, v, key_lengths=[0, 5])[0], rtol=1e-5, atol=1e-6)
    assert not y[0].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_s3_2_nonpad_kv_seqlen_out_of_range_is_refused(backend):
    """ONNX's nonpad_kv_seqlen is the key lengths under another name: the same check, naming it."""
    from onnx import TensorProto, helper

    node = helper.make_node("Attention", ["Q", "K", "V", "", "", "", "N"], ["Y"], q_num_heads=2, kv_num_heads=2)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["B", "S", 8]),
        helper.make_tensor_value_info("K", TensorProto.FLOAT, ["B", "L", 8]),
        helper.make_tensor_value_info("V", TensorProto.FLOAT, ["B", "L", 8]),
        helper.make_tensor_value_info("N", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])
    model.ir_version = 10
    run = ag.compile(ag.from_onnx(model), backend)
    q = np.zeros((1, 2, 8), np.float32)
    kv = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(InputError, match=r"input 'N': row 0 is 5, outside 0\.\.4"):
        run(Q=q, K=kv, V=kv, N=np.array([5]))


def _rope_graph(**knobs):
    return ag.causal_self_attention(32, 4, rotary="half", rope_cache=True, **knobs)


def _rope_inputs(positions=4, seq=3, batch=1):
    rng = np.random.default_rng(2)
    angles = rng.standard_normal((positions, 4)).astype(np.float32)
    return {"x": rng.standard_normal((batch, seq, 32), dtype=np.float32), "cos_cache": np.cos(angles),
            "sin_cache": np.sin(angles)}


ROTARY_REFUSALS = {"negative": ([[-1, 0, 1]], r"input 'position_ids': row 0 reaches rotary position -1, outside "
                                              r"0\.\.3: the cos/sin caches \('cos_cache'\) hold 4 positions"),
                   "past_the_caches": ([[1, 2, 4]], r"input 'position_ids': row 0 reaches rotary position 4")}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(ROTARY_REFUSALS))
def test_s3_2_rotary_positions_outside_the_cos_sin_caches_are_refused(backend, case):
    """A negative position_id silently read the caches' last row on every backend (NumPy's and torch's negative
    index, onnxruntime's Gather); one past them raised IndexError or onnxruntime's INVALID_ARGUMENT."""
    positions, message = ROTARY_REFUSALS[case]
    graph = _rope_graph(position_ids=True)
    run = ag.compile(graph, backend, weights=ag.Weights.random(graph, seed=0))
    with pytest.raises(InputError, match=message):
        run(**_rope_inputs(), position_ids=np.array(positions))


@pytest.mark.parametrize("backend", BACKENDS)
def test_s3_2_rotary_positions_from_a_cache_length_are_refused(backend):
    """Positions the graph computes (a static cache's lengths + 0..q_len-1; the tokens' own 0..q_len-1) are
    checked the same, naming the inputs they come from."""
    graph = _rope_graph(kv_cache="static", max_len=16)
    run = ag.compile(graph, backend, weights=ag.Weights.random(graph, seed=0))
    cache = np.zeros((2, 4, 16, 8), np.float32)
    feed = {**_rope_inputs(batch=2), "past_key": cache, "past_value": cache.copy()}
    with pytest.raises(InputError, match=r"'positions' \(computed from input 'cache_lengths'\): row 1 reaches rotary "
                                         r"position 5, outside 0\.\.3"):
        run(feed, cache_lengths=np.array([1, 3]))
    plain = _rope_graph()
    run = ag.compile(plain, backend, weights=ag.Weights.random(plain, seed=0))
    with pytest.raises(InputError, match=r"the tokens' rotary positions \(0 \+ 0\.\.q_len - 1, no position_ids\): "
                                         r"reach rotary position 4, outside 0\.\.3"):
        run(_rope_inputs(seq=5))
