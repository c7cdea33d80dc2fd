"""Each pass: the structure it promises, and equal results before and after on the NumPy backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rand

import attngraph as ag
from attngraph import Op
from attngraph.passes import (
    decompose_attention,
    eliminate_dead_code,
    fold_scales,
    fuse_attention,
    fuse_qkv_projection,
    run_pipeline,
)


def _run(graph, weights, inputs, fuse=False):
    return ag.compile(graph, "numpy", weights=weights, fuse=fuse)(inputs)


def _mha(**knobs):
    g = ag.causal_self_attention(32, 4, num_kv_heads=2, **knobs)
    w = ag.Weights.random(g, seed=0)
    x = {"x": rand(np.random.default_rng(0), (2, 7, 32))}
    return g, w, x


def test_dce_removes_dead_nodes_and_keeps_results_bitwise():
    g, w, x = _mha(return_weights=True)
    trimmed = g.replace(outputs=(g.outputs[0],))
    cleaned = eliminate_dead_code(trimmed)
    assert cleaned.nodes == trimmed.nodes, "attn_weights still feeds y, so nothing is dead"
    b = ag.GraphBuilder("dead")
    q = b.input("q", "float32", ("batch", 2, "s", 4))
    b.op(Op.SCALE, q, value=3.0, name="unused")
    y = b.op(Op.SOFTMAX, q, name="y")
    dead = b.build([y])
    assert eliminate_dead_code(dead).count(Op.SCALE) == 0
    assert eliminate_dead_code(cleaned) is cleaned, "no change returns the same object"
    arr = rand(np.random.default_rng(1), (1, 2, 3, 4))
    np.testing.assert_array_equal(_run(dead, {}, {"q": arr})["y"], _run(eliminate_dead_code(dead), {}, {"q": arr})["y"])


def test_fold_scales_merges_chains_and_drops_unit_scales():
    b = ag.GraphBuilder("scales")
    q = b.input("q", "float64", (1, 2, 3, 4))
    s = b.op(Op.SCALE, q, value=0.5)
    s = b.op(Op.SCALE, s, value=4.0)
    s = b.op(Op.SCALE, s, value=0.5)
    y = b.op(Op.SOFTMAX, s, name="y")
    g = b.build([y])
    folded = run_pipeline(g, [fold_scales])
    assert folded.count(Op.SCALE) == 0, "0.5 * 4 * 0.5 == 1 folds away entirely"
    arr = rand(np.random.default_rng(2), (1, 2, 3, 4), "float64")
    np.testing.assert_allclose(_run(folded, {}, {"q": arr})["y"], _run(g, {}, {"q": arr})["y"], rtol=1e-15)
    assert fold_scales(folded) is folded


def test_fold_scales_leaves_graph_outputs_alone():
    g, _, _ = _mha(score_outputs=("scaled",))
    assert fold_scales(g) is g


def test_fuse_qkv_makes_one_matmul_and_same_numbers():
    g, w, x = _mha()
    fused = run_pipeline(g, [fuse_qkv_projection])
    assert fused.count(Op.LINEAR) == 2 and fused.count(Op.SPLIT) == 1 and fused.count(Op.CONCAT) == 2
    np.testing.assert_allclose(_run(fused, w, x)["y"], _run(g, w, x)["y"], rtol=2e-6, atol=1e-6)
    cross = ag.cross_attention(16, 2, kdim=8)
    assert fuse_qkv_projection(cross) is cross, "different inputs: nothing to fuse"


def test_unfuse_qkv_is_the_inverse_of_fuse_qkv():
    from attngraph.passes import unfuse_qkv_projection

    g, w, x = _mha()
    fused = run_pipeline(g, [fuse_qkv_projection])
    back = run_pipeline(fused, [unfuse_qkv_projection])
    assert [n.op for n in back.nodes] == [n.op for n in g.nodes]
    assert unfuse_qkv_projection(g) is g
    np.testing.assert_array_equal(_run(back, w, x)["y"], _run(g, w, x)["y"])


def test_fuse_attention_structure_and_numbers():
    g, w, x = _mha()
    fused = run_pipeline(g, [fuse_attention])
    assert fused.count(Op.ATTENTION) == 1
    for op in (Op.MATMUL, Op.SCALE, Op.MASK, Op.SOFTMAX, Op.WEIGHTED_SUM):
        assert fused.count(op) == 0, f"{op} should be fused away"
    node = next(n for n in fused.nodes if n.op is Op.ATTENTION)
    assert node.attr("causal") is True and node.attr("scale") == pytest.approx(1 / np.sqrt(8))
    np.testing.assert_allclose(_run(fused, w, x)["y"], _run(g, w, x)["y"], rtol=2e-6, atol=1e-6)


def test_fuse_attention_keeps_weights_output():
    g, w, x = _mha(return_weights=True)
    fused = fuse_attention(g)
    node = next(n for n in fused.nodes if n.op is Op.ATTENTION)
    assert node.attr("return_weights") and len(node.outputs) == 2
    a, b = _run(fused, w, x), _run(g, w, x)
    np.testing.assert_allclose(a["attn_weights"], b["attn_weights"], rtol=2e-6, atol=1e-7)


def test_fuse_attention_refuses_when_intermediate_scores_are_outputs():
    g, _, _ = _mha(score_outputs=("masked",))
    assert fuse_attention(g) is g


def test_decompose_is_the_inverse_of_fuse():
    g, w, x = _mha(softcap=3.0, return_weights=True)
    fused = fuse_attention(g)
    back = decompose_attention(fused)
    assert [n.op for n in back.nodes] == [n.op for n in g.nodes]
    assert decompose_attention(g) is g
    np.testing.assert_array_equal(_run(back, w, x)["y"], _run(g, w, x)["y"])


@pytest.mark.parametrize("pipeline", ["O0", "O1"])
def test_named_pipelines(pipeline):
    g, w, x = _mha()
    out = run_pipeline(g, pipeline)
    if pipeline == "O0":
        assert out is g
    else:
        assert out.count(Op.ATTENTION) == 1 and out.count(Op.SPLIT) == 1
    np.testing.assert_allclose(_run(out, w, x, fuse=True)["y"], _run(g, w, x)["y"], rtol=2e-6, atol=1e-6)
    with pytest.raises(KeyError, match="unknown pipeline"):
        run_pipeline(g, "O9")


def test_pipeline_verifies_after_each_pass():
    g, _, _ = _mha()

    def broken(graph):
        return graph.replace(nodes=graph.nodes[1:])

    with pytest.raises(ag.GraphError, match="used before it is defined"):
        run_pipeline(g, [broken])


def test_weight_only_nodes_are_folded_once_per_compile():
    g, w, x = _mha()
    fused = run_pipeline(g, "O1")
    calls = []
    from attngraph_backends.numpy import backend as numpy_backend

    original = numpy_backend.rules[Op.CONCAT]
    numpy_backend.rules[Op.CONCAT] = lambda ctx, *xs: calls.append(1) or original(ctx, *xs)
    try:
        run = ag.compile(fused, "numpy", weights=w)
        run(x)
        run(x)
    finally:
        numpy_backend.rules[Op.CONCAT] = original
    assert len(calls) == 2, "two weight concats, folded at compile, not re-run per call"
