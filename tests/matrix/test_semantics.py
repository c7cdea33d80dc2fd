"""Every row of the semantics table (attngraph.ir.semantics), on every backend, as the primitive chain and fused."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import assert_close, rand
from semantics_cases import MODES, check_core, run_graph

import attngraph as ag

pytestmark = pytest.mark.parametrize("mode", sorted(MODES))


def test_plain_attention(backend, mode):
    check_core(backend, mode)


def test_bool_mask_true_means_attend(backend, mode):
    """Only key 2 is True: every output row is exactly value row 2."""
    rng = np.random.default_rng(1)
    g = ag.core_attention(2, 4, mask="bool")
    q, k, v = rand(rng, (1, 2, 3, 4)), rand(rng, (1, 2, 5, 4)), rand(rng, (1, 2, 5, 4))
    mask = np.zeros((3, 5), bool)
    mask[:, 2] = True
    y = run_graph(backend, mode, g, {"q": q, "k": k, "v": v, "attn_mask": mask})["y"]
    np.testing.assert_allclose(y, np.broadcast_to(v[:, :, 2:3], y.shape), rtol=1e-6)


def test_random_bool_mask(backend, mode):
    check_core(backend, mode, mask="bool")


def test_additive_mask_with_neg_inf(backend, mode):
    check_core(backend, mode, mask="additive")


@pytest.mark.parametrize("shape", [("kv_len",), (1, "kv_len"), ("q_len", "kv_len"), (4, "q_len", "kv_len"),
                                   ("batch", 1, "q_len", "kv_len"), ("batch", 4, "q_len", "kv_len"),
                                   ("batch", 1, 1, "kv_len"), (1, 4, 1, "kv_len")], ids=str)
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_broadcasting_right_aligned(backend, mode, kind, shape):
    check_core(backend, mode, mask=kind, mask_shape=shape)


@pytest.mark.parametrize("q_len,kv_len", [(3, 5), (5, 3), (1, 6), (4, 4)])
def test_causal_top_left(backend, mode, q_len, kv_len):
    check_core(backend, mode, causal=True, q_len=q_len, kv_len=kv_len)


def test_causal_is_top_left_literal(backend, mode):
    """q_len=1 < kv_len: without a cache the single query sees key 0 only (top-left, like SDPA)."""
    rng = np.random.default_rng(2)
    g = ag.core_attention(1, 4, causal=True)
    q, k, v = rand(rng, (1, 1, 1, 4)), rand(rng, (1, 1, 6, 4)), rand(rng, (1, 1, 6, 4))
    y = run_graph(backend, mode, g, {"q": q, "k": k, "v": v})["y"]
    np.testing.assert_allclose(y[0, 0, 0], v[0, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("q_len,past_len", [(1, 5), (3, 4)])
def test_causal_with_kv_cache_offsets_by_past(backend, mode, q_len, past_len):
    check_core(backend, mode, causal=True, q_len=q_len, kv_len=q_len, past_len=past_len)


def test_kv_cache_present_is_concat(backend, mode):
    check_core(backend, mode, past_len=3, kv_len=2, q_len=2, mask="bool", mask_shape=("q_len", "kv_len+past_len"))


@pytest.mark.parametrize("kind", ["bool", "additive", "lengths", "window"])
def test_fully_masked_row_is_zero(backend, mode, kind):
    def kill(inputs):
        if kind == "bool":
            inputs["attn_mask"][1, :] = False
        elif kind == "additive":
            inputs["attn_mask"][1, :] = -np.inf

    knobs = {"bool": {"mask": "bool"}, "additive": {"mask": "additive"},
             "lengths": {"key_lengths": [0, 3]}, "window": {"window": (0, 0), "q_len": 6, "kv_len": 4}}[kind]
    out, _ = check_core(backend, mode, inputs_hook=kill, **knobs)
    rows = {"bool": (slice(None), slice(None), 1), "additive": (slice(None), slice(None), 1),
            "lengths": (0,), "window": (slice(None), slice(None), slice(4, 6))}[kind]
    assert np.all(out["y"][rows] == 0), "a fully masked row must give exactly 0"
    assert np.all(out["attn_weights"][rows] == 0), "a fully masked row's weights must be 0"
    assert not np.isnan(out["y"]).any()


@pytest.mark.parametrize("scale", [None, 0.01, 2.0])
def test_scale_default_and_override(backend, mode, scale):
    check_core(backend, mode, scale=scale)


def test_default_scale_uses_qk_head_dim(backend, mode):
    out, _ = check_core(backend, mode, head_dim=16, v_head_dim=4)


def test_softcap_before_mask_keeps_neg_inf(backend, mode):
    check_core(backend, mode, softcap=2.0, mask="additive")
    check_core(backend, mode, softcap=0.5, causal=True, seed=3)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 3), (4, 1)], ids=["gqa", "gqa3", "mqa"])
def test_gqa_mqa_mapping(backend, mode, heads, kv_heads):
    check_core(backend, mode, heads=heads, kv_heads=kv_heads, causal=True)


def test_gqa_mapping_literal(backend, mode):
    """q head h uses kv head h // (Hq/Hkv): with value rows constant per kv head the output shows which."""
    g = ag.core_attention(4, 2, num_kv_heads=2)
    rng = np.random.default_rng(4)
    q, k = rand(rng, (1, 4, 2, 2)), rand(rng, (1, 2, 3, 2))
    v = np.stack([np.full((3, 2), 10.0), np.full((3, 2), 20.0)])[None].astype(np.float32)
    y = run_graph(backend, mode, g, {"q": q, "k": k, "v": v})["y"]
    np.testing.assert_allclose(y[0, :, 0, 0], [10, 10, 20, 20], rtol=1e-6)


@pytest.mark.parametrize("heads,kv_heads", [(3, 3), (6, 2)])
def test_3d_layout_splits_head_major(backend, mode, heads, kv_heads):
    check_core(backend, mode, layout="3d", heads=heads, kv_heads=kv_heads, v_head_dim=5, mask="bool")


def test_value_head_dim_differs(backend, mode):
    check_core(backend, mode, head_dim=8, v_head_dim=10, causal=True)


@pytest.mark.parametrize("window", [(2, 0), (1, 2), (-1, 1), (0, -1)])
def test_sliding_window(backend, mode, window):
    check_core(backend, mode, window=window, q_len=6, kv_len=8)
    check_core(backend, mode, window=window, causal=True, q_len=6, kv_len=8)


def test_key_lengths(backend, mode):
    check_core(backend, mode, key_lengths=[7, 2], causal=True, mask="bool")


@pytest.mark.parametrize("window", [None, (2, 0)])
def test_causal_aligned_to_each_rows_key_lengths(backend, mode, window):
    """Padded-batch decode (ONNX nonpad_kv_seqlen): row b's queries are the last q_len of its valid keys;
    a row with fewer valid keys than queries has empty leading rows (exactly 0)."""
    out, _ = check_core(backend, mode, causal=True, window=window, key_lengths=[7, 2], align_to_lengths=True,
                        q_len=3, kv_len=7)
    assert np.all(out["y"][1, :, 0] == 0), "row 0 of batch 1 sits before its first key: a zero row"


def test_nan_propagates(backend, mode):
    def poison(inputs):
        inputs["q"][0, 1, 2, 0] = np.nan
        inputs["v"][1, 0, 3, 1] = np.inf

    out, y = check_core(backend, mode, inputs_hook=poison)
    assert np.isnan(out["y"][0, 1, 2]).all(), "NaN in q must reach its output row"
    assert np.isnan(out["y"]).sum() == np.isnan(y).sum()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes(backend, mode, dtype):
    pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    check_core(backend, mode, dtype=dtype, causal=True, mask="additive", heads=4, kv_heads=2)


@pytest.mark.parametrize("kind", ["self", "cross", "causal"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_mha_matches_oracle(backend, mode, kind, dtype):
    rng = np.random.default_rng(5)
    knobs = dict(num_kv_heads=2, dtype=dtype, return_weights=True)
    if kind == "cross":
        g = ag.cross_attention(16, 4, kdim=12, vdim=20, mask="bool", **knobs)
        x = {"query": rand(rng, (2, 3, 16), dtype), "key": rand(rng, (2, 5, 12), dtype),
             "value": rand(rng, (2, 5, 20), dtype), "attn_mask": rng.random((3, 5)) > 0.3}
        extra = {"bool_mask": x["attn_mask"]}
        args = (x["query"], x["key"], x["value"])
    else:
        g = (ag.causal_self_attention if kind == "causal" else ag.self_attention)(16, 4, **knobs)
        x = {"x": rand(rng, (2, 6, 16), dtype)}
        extra = {"causal": kind == "causal"}
        args = (x["x"],) * 3
    w = ag.Weights.random(g, seed=1)
    out = run_graph(backend, mode, g, x, weights=w)
    y, _, _, stages = oracle.mha(*args, w, num_heads=4, num_kv_heads=2, **extra)
    assert_close(out["y"], y, dtype)
    assert_close(out["attn_weights"], stages["weights"], dtype, "weights")


def test_kv_cache_decode_matches_full_sequence(backend, mode):
    """Decoding token by token with a cache gives the same rows as one causal pass over the sequence."""
    rng = np.random.default_rng(6)
    full = ag.causal_self_attention(16, 4, num_kv_heads=2)
    step = ag.causal_self_attention(16, 4, num_kv_heads=2, kv_cache=True)
    w = ag.Weights.random(full, seed=2)
    x = rand(rng, (2, 5, 16))
    want = run_graph(backend, mode, full, {"x": x}, weights=w)["y"]
    pk = np.zeros((2, 2, 0, 4), np.float32)
    pv = np.zeros((2, 2, 0, 4), np.float32)
    for t in range(5):
        out = run_graph(backend, mode, step, {"x": x[:, t:t + 1], "past_key": pk, "past_value": pv}, weights=w)
        np.testing.assert_allclose(out["y"][:, 0], want[:, t], rtol=2e-5, atol=2e-6)
        pk, pv = out["present_key"], out["present_value"]
    assert pk.shape == (2, 2, 5, 4)
