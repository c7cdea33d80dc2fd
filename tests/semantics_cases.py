"""Shared driver for semantics tests: build a core-attention graph, run it, compare with the oracle.

Backend issues reuse this for their own matrix, so every convention is tested on every backend.
"""

from __future__ import annotations

import numpy as np
import oracle
from conftest import assert_close, rand

import attngraph as ag
from attngraph.frontends.constructors import SCORE_STAGES
from attngraph.ir import Op, dims

# "chain": the primitive ops one by one; "fused": the O1 pipeline and the backend's fused kernel.
MODES = {"chain": ("O0", False), "fused": ("O1", True)}
# (backend, dtype) pairs whose fused mode runs the chain on purpose, with the reason
UNFUSED_BY_DESIGN = {("onnx", "float64"): "style 'auto' exports float64 decomposed: onnxruntime's Attention kernel "
                                          "is float32 (a known deviation of onnx:attention)"}


def run_graph(backend, mode: str, graph, inputs, weights=None, **options):
    """Run ``graph`` in ``mode``; in fused mode, assert the backend really ran its fused attention."""
    pipeline, fuse = MODES[mode]
    graph = ag.run_pipeline(graph, pipeline)
    ex = ag.compile(graph, backend, weights=weights, fuse=fuse, **options)
    dtype = graph.inputs[0].type.dtype.value
    if mode == "fused" and (backend.name, dtype) not in UNFUSED_BY_DESIGN and graph.count(Op.MATMUL) == 0:
        assert ex.graph.count(Op.ATTENTION) == 1, f"{backend.name} did not run the fused kernel:\n{ex.graph}"
    if mode == "chain":
        assert ex.graph.count(Op.ATTENTION) == 0, f"{backend.name} fused in chain mode"
    return ex(inputs)


def check_core(backend, mode: str, *, dtype="float32", batch=2, heads=4, kv_heads=None, head_dim=8,
               v_head_dim=None, q_len=5, kv_len=7, past_len=0, layout="4d", mask=None, mask_shape=None,
               key_lengths=None, seed=0, inputs_hook=None, **knobs):
    """Run core attention on ``backend`` and assert every output against the oracle.

    ``mask`` is None, "bool" or "additive"; its array is random (about 1/4 masked) unless
    ``inputs_hook(inputs)`` overwrites it. Returns (outputs, reference y) for extra checks.
    """
    rng = np.random.default_rng(seed)
    kv_heads = kv_heads or heads
    dv = v_head_dim or head_dim
    stages = ("scaled", "softcapped", "masked", "weights")
    wanted = tuple(s for s in stages if s != "softcapped" or knobs.get("softcap"))
    has_mask = mask or key_lengths is not None or knobs.get("causal") or knobs.get("window")
    wanted = tuple(s for s in wanted if s != "masked" or has_mask)
    if mode == "fused":  # a score stage as an output keeps the chain apart; only the weights fuse
        wanted = tuple(s for s in wanted if s == "weights")
    g = ag.core_attention(heads, head_dim, num_kv_heads=kv_heads, v_head_dim=v_head_dim, layout=layout,
                          dtype=dtype, mask=mask, mask_shape=mask_shape, kv_cache=past_len > 0,
                          key_padding=key_lengths is not None, score_outputs=wanted, **knobs)
    q4 = rand(rng, (batch, heads, q_len, head_dim), dtype)
    k4 = rand(rng, (batch, kv_heads, kv_len, head_dim), dtype)
    v4 = rand(rng, (batch, kv_heads, kv_len, dv), dtype)
    inputs = {}
    if layout == "4d":
        inputs.update(q=q4, k=k4, v=v4)
    else:
        inputs.update(q=oracle.merge_heads(q4).astype(q4.dtype), k=oracle.merge_heads(k4).astype(q4.dtype),
                      v=oracle.merge_heads(v4).astype(q4.dtype))
    total = kv_len + past_len
    if past_len:
        inputs["past_key"] = rand(rng, (batch, kv_heads, past_len, head_dim), dtype)
        inputs["past_value"] = rand(rng, (batch, kv_heads, past_len, dv), dtype)
    if mask:
        env = {"batch": batch, "q_len": q_len, "kv_len": kv_len, "past_len": past_len}
        shape = tuple(dims.evaluate(d, env) for d in (mask_shape or (q_len, total)))
        if mask == "bool":
            inputs["attn_mask"] = rng.random(shape) > 0.25
        else:
            bias = rand(rng, shape, dtype)
            bias[rng.random(shape) < 0.2] = -np.inf
            inputs["attn_mask"] = bias
    if key_lengths is not None:
        inputs["key_lengths"] = np.asarray(key_lengths, dtype=np.int64)
    if inputs_hook:
        inputs_hook(inputs)
    out = run_graph(backend, mode, g, inputs)
    if layout == "4d":
        q_ref, k_all, v_all = inputs["q"], inputs["k"], inputs["v"]
    else:
        q_ref, k_all, v_all = (oracle.split_heads(inputs[n], h) for n, h in (("q", heads), ("k", kv_heads),
                                                                              ("v", kv_heads)))
    if past_len:
        k_all = np.concatenate([inputs["past_key"], k_all], axis=2)
        v_all = np.concatenate([inputs["past_value"], v_all], axis=2)
    y, ref_stages = oracle.core(
        q_ref, k_all, v_all, scale=knobs.get("scale"), softcap=knobs.get("softcap") or 0.0,
        causal=knobs.get("causal", False), offset=past_len, window=knobs.get("window") or (-1, -1),
        bool_mask=inputs.get("attn_mask") if mask == "bool" else None,
        bias=inputs.get("attn_mask") if mask == "additive" else None, key_lengths=inputs.get("key_lengths"),
        align_to_lengths=knobs.get("align_to_lengths", False))
    if layout == "3d":
        y = oracle.merge_heads(y)
    assert out["y"].dtype == np.dtype(inputs["q"].dtype), f"y dtype {out['y'].dtype} != {inputs['q'].dtype}"
    assert_close(out["y"], y, dtype, "y")
    for s in wanted:
        assert_close(out[SCORE_STAGES[s]], ref_stages[s], dtype, s)
    if past_len:
        assert np.array_equal(out["present_key"], k_all) and np.array_equal(out["present_value"], v_all)
    return out, y
