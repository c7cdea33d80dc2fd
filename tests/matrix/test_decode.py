"""The decode loop on every backend: ``DecodeSession`` prefill + N one-token steps equal one full-sequence
run; the cache is written in place (the output cache is the caller's buffer); a rolling cache wraps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import attngraph as ag
from attngraph.errors import InputError

BACKENDS = ["numpy", "numba", "torch", "onnx"]
KNOBS = {
    "rotary": {"rotary": "half"},
    "rotary_sinks_qknorm": {"rotary": "half", "sinks": True, "qk_norm": "rms"},
    "alibi_window": {"alibi": "after_scale", "window": (5, 0)},
}


def _full_run(knobs, weights, x):
    """The oracle: the same layer without a cache over the whole sequence, in float64 on NumPy."""
    graph = ag.causal_self_attention(32, 8, num_kv_heads=2, dtype="float64", **knobs)
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    return ag.compile(graph, "numpy", weights=w64)(x=x.astype(np.float64))["y"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("knobs", list(KNOBS), ids=list(KNOBS))
def test_steps_equal_full_sequence(backend, knobs):
    knob = KNOBS[knobs]
    graph = ag.causal_self_attention(32, 8, num_kv_heads=2, kv_cache="static", max_len=20, **knob)
    weights = ag.Weights.random(graph, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 12, 32)).astype(np.float32)
    session = ag.DecodeSession(graph, backend, weights=weights, batch=2)
    ys = [session.prefill(x[:, :5])] + [session.step(x[:, t:t + 1]) for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate(ys, axis=1), _full_run(knob, dict(weights), x), atol=2e-5, rtol=1e-4)
    assert list(session.lengths) == [12, 12]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ragged_prompts_then_steps(backend):
    """Right-padded prompts of lengths 6 and 2: each row continues from its own length."""
    knob = {"rotary": "half"}
    graph = ag.causal_self_attention(32, 8, num_kv_heads=2, kv_cache="static", max_len=16, **knob)
    weights = ag.Weights.random(graph, seed=5)
    rng = np.random.default_rng(1)
    prompt = rng.standard_normal((2, 6, 32)).astype(np.float32)
    prompt[1, 2:] = np.nan  # padding: never read
    steps = rng.standard_normal((2, 4, 32)).astype(np.float32)
    session = ag.DecodeSession(graph, backend, weights=weights, batch=2)
    first = session.prefill(prompt, lengths=[6, 2])
    later = np.concatenate([session.step(steps[:, t:t + 1]) for t in range(4)], axis=1)
    for row, n in enumerate((6, 2)):
        seq = np.concatenate([prompt[row:row + 1, :n], steps[row:row + 1]], axis=1)
        ref = _full_run(knob, dict(weights), seq)
        np.testing.assert_allclose(first[row:row + 1, :n], ref[:, :n], atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(later[row:row + 1], ref[:, n:], atol=2e-5, rtol=1e-4)
    assert list(session.lengths) == [10, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_cache_wraps(backend):
    """A rolling cache of 6 slots for a window of 6 keys: 15 tokens one by one wrap it twice."""
    knob = {"rotary": "half", "window": (5, 0)}
    graph = ag.causal_self_attention(32, 8, num_kv_heads=2, kv_cache="rolling", max_len=6, **knob)
    weights = ag.Weights.random(graph, seed=7)
    x = np.random.default_rng(2).standard_normal((1, 15, 32)).astype(np.float32)
    session = ag.DecodeSession(graph, backend, weights=weights, batch=1)
    ys = [session.prefill(x[:, :4])] + [session.step(x[:, t:t + 1]) for t in range(4, 15)]
    np.testing.assert_allclose(np.concatenate(ys, axis=1), _full_run(knob, dict(weights), x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_written_in_place(backend):
    """The present caches are the caller's past buffers, holding the new keys at each row's slot; nothing
    else in them changes."""
    graph = ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=32)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 1, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 2, 1, 8)).astype(np.float32) for _ in range(2))
    past_k, past_v = (rng.standard_normal((2, 2, 32, 8)).astype(np.float32) for _ in range(2))
    before_k, before_v = past_k.copy(), past_v.copy()
    lengths = np.array([5, 17])
    out = ag.compile(graph, backend)(q=q, k=k, v=v, past_key=past_k, past_value=past_v, cache_lengths=lengths)
    assert np.shares_memory(np.asarray(out["present_key"]), past_k)
    assert np.shares_memory(np.asarray(out["present_value"]), past_v)
    for cache, before, new in ((past_k, before_k, k), (past_v, before_v, v)):
        expected = before.copy()
        for row, n in enumerate(lengths):
            expected[row, :, n] = new[row, :, 0]
        np.testing.assert_array_equal(cache, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_form_leaves_input(backend):
    """``cache_inplace=False`` keeps the input buffer as it was and returns a new cache."""
    graph = ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=16)
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 4, 1, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 1, 8)).astype(np.float32) for _ in range(2))
    past = np.zeros((1, 2, 16, 8), np.float32)
    out = ag.compile(graph, backend, cache_inplace=False)(q=q, k=k, v=v, past_key=past, past_value=past.copy(),
                                                          cache_lengths=np.array([3]))
    assert not past.any()
    np.testing.assert_array_equal(np.asarray(out["present_key"])[0, :, 3], k[0, :, 0])


def test_session_refuses_overflow():
    graph = ag.causal_self_attention(32, 8, kv_cache="static", max_len=4)
    session = ag.DecodeSession(graph, "numpy", weights=ag.Weights.random(graph, seed=0))
    session.prefill(np.zeros((1, 4, 32), np.float32))
    with pytest.raises(InputError, match="cache overflow: row 0 holds 4 entries"):
        session.step(np.zeros((1, 1, 32), np.float32))
    session.reset()
    assert session.lengths.tolist() == [0]
    session.step(np.zeros((1, 1, 32), np.float32))


def test_onnx_export_is_tensorscatter_and_attention24(tmp_path):
    """The exported step: TensorScatter writes straight into the graph's present outputs (no Identity copy,
    so onnxruntime updates an I/O-bound buffer in place), and Attention-24 reads it with nonpad_kv_seqlen."""
    graph = ag.core_attention(4, 8, num_kv_heads=2, causal=True, kv_cache="static", max_len=32)
    model = onnx.load(ag.export_onnx(graph, tmp_path / "step.onnx"))
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {24}
    scatters = [n for n in model.graph.node if n.op_type == "TensorScatter"]
    assert sorted(o for n in scatters for o in n.output) == ["present_key", "present_value"]

    def nodes(graph):
        for n in graph.node:
            yield n
            for a in n.attribute:
                if a.g.node:
                    yield from nodes(a.g)
    attention = [n for n in nodes(model.graph) if n.op_type == "Attention"]
    assert attention and all(len(n.input) == 7 and n.input[6] for n in attention)


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_cache_of_symbolic_length_takes_the_callers_buffer(backend):
    """``max_len`` may be a dim name (the buffer each call passes fixes it, as onnxruntime's GroupQueryAttention
    takes it): one graph runs on a 9-slot and a 14-slot buffer, each equal to the fixed-length graph's output;
    DecodeSession, which allocates the buffer, refuses it by name."""
    from attngraph.errors import ConfigError

    sym = ag.causal_self_attention(32, 8, num_kv_heads=2, kv_cache="static", max_len="max_len", rotary="half")
    weights = ag.Weights.random(sym, seed=5)
    rng = np.random.default_rng(1)
    for slots in (9, 14):
        fixed = ag.causal_self_attention(32, 8, num_kv_heads=2, kv_cache="static", max_len=slots, rotary="half")
        feeds = {"x": rng.standard_normal((2, 3, 32)).astype(np.float32), "cache_lengths": np.array([2, 6]),
                 "past_key": rng.standard_normal((2, 2, slots, 4)).astype(np.float32),
                 "past_value": rng.standard_normal((2, 2, slots, 4)).astype(np.float32)}
        want = ag.compile(fixed, "numpy", weights=weights, cache_inplace=False)({k: v.copy() for k, v in feeds.items()})
        got = ag.compile(sym, backend, weights=weights)({k: v.copy() for k, v in feeds.items()})
        np.testing.assert_allclose(got["y"], want["y"], atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(got["present_key"], want["present_key"], atol=1e-6)
    with pytest.raises(ConfigError, match="needs a fixed max_len"):
        ag.DecodeSession(sym, "numpy", weights=weights)
