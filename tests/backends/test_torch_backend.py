"""The torch backend beyond the shared semantics matrix: when SDPA is used, devices, tensors in and
out, bfloat16 round trips, and torch.compile."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from attngraph_backends.torch import kernels as torch_kernels  # noqa: E402
from attngraph_backends.torch.backend import to_array, to_tensor  # noqa: E402
from conftest import assert_close  # noqa: E402

import attngraph as ag  # noqa: E402

NO_MASK = {"causal": False, "offset": 0, "window_left": -1, "window_right": -1}


@pytest.mark.parametrize("knobs, operands, plan", [
    ({}, {}, "none"),
    ({"causal": True}, {}, "causal"),
    ({"causal": True, "offset": 3}, {}, "mask"),              # KV cache: is_causal would misalign
    ({"causal": True, "offset": np.array([1, 2])}, {}, "mask"),  # per-row offsets (align to lengths)
    ({"window_left": 2}, {}, "mask"),
    ({}, {"bool": None}, "mask"),
    ({}, {"lengths": None}, "mask"),
    ({"softcap": 5.0}, {}, "explicit"),
    ({"return_weights": True}, {}, "explicit"),
])
def test_sdpa_is_chosen_only_where_it_is_exact(knobs, operands, plan):
    args = {**NO_MASK, "softcap": 0.0, "return_weights": False, **knobs}
    assert torch_kernels.sdpa_plan(operands, **args) == plan


# more queries than EXPLICIT_MAX_QUERIES: shorter steps (decode) always take the explicit path
T = 20


def _case(seed=0, **knobs):
    g = ag.core_attention(4, 8, num_kv_heads=2, **knobs)
    rng = np.random.default_rng(seed)
    x = {"q": rng.standard_normal((2, 4, T, 8), dtype=np.float32)}
    kv = T + (3 if knobs.get("kv_cache") else 0)
    x.update(k=rng.standard_normal((2, 2, T, 8), dtype=np.float32),
             v=rng.standard_normal((2, 2, T, 8), dtype=np.float32))
    if knobs.get("kv_cache"):
        x.update(past_key=rng.standard_normal((2, 2, 3, 8), dtype=np.float32),
                 past_value=rng.standard_normal((2, 2, 3, 8), dtype=np.float32))
    return g, x, kv


@pytest.mark.parametrize("knobs", [{"causal": True}, {"causal": True, "kv_cache": True}, {"mask": "bool"}])
def test_sdpa_and_explicit_paths_agree_with_the_oracle(knobs):
    g, x, kv = _case(**knobs)
    if knobs.get("mask"):
        x["attn_mask"] = np.random.default_rng(3).random((T, kv)) > 0.4
    sdpa = ag.compile(g, "torch")(x)
    explicit = ag.compile(g, "torch", sdpa=False)(x)
    k = np.concatenate([x["past_key"], x["k"]], 2) if "past_key" in x else x["k"]
    v = np.concatenate([x["past_value"], x["v"]], 2) if "past_value" in x else x["v"]
    ref, _ = oracle.core(x["q"], k, v, causal=knobs.get("causal", False), offset=kv - T if knobs.get("causal") else 0,
                         bool_mask=x.get("attn_mask"))
    assert_close(sdpa["y"], ref, "float32")
    assert_close(explicit["y"], ref, "float32")


@pytest.mark.parametrize("knobs", [
    {"causal": True, "alibi": "after_scale"},
    {"causal": True, "alibi": "before_scale", "window": (6, 0), "key_padding": True},
    {"rel_bias": True, "rel_buckets": 8, "rel_max_distance": 12},
    {"causal": True, "rel_bias": True, "rel_buckets": 8, "rel_max_distance": 12, "kv_cache": True},
    {"causal": True, "alibi": "after_scale", "kv_cache": True, "mask": "bool"},   # dense masks cut to the
    {"causal": True, "alibi": "after_scale", "kv_cache": True, "mask": "additive"},   # chunk's causal key prefix
])
def test_position_biases_through_sdpa_match_the_reference(knobs, monkeypatch):
    """ALiBi and T5's bias as SDPA's float mask, a few query rows at a time (a small max_scores_bytes forces
    several chunks), against the float64 reference and the explicit path; a fully masked row is 0."""
    from attngraph.conformance.reference import evaluate

    g, x, kv = _case(**knobs)
    weights = ag.Weights.random(g, seed=1)
    if knobs.get("key_padding"):
        x["key_lengths"] = np.array([T, 0])  # row 1: every key masked
    if knobs.get("mask") == "bool":
        x["attn_mask"] = np.random.default_rng(3).random((T, kv)) > 0.3
    if knobs.get("mask") == "additive":
        x["attn_mask"] = np.random.default_rng(3).standard_normal((T, kv)).astype(np.float32)
    calls = []
    real = torch_kernels.sdpa_position_bias
    monkeypatch.setattr(torch_kernels, "sdpa_position_bias", lambda *a, **k: calls.append(k) or real(*a, **k))
    y = ag.compile(g, "torch", weights=weights, max_scores_bytes=4096)(x)["y"]
    assert calls, "the SDPA position-bias path did not run"
    ref = evaluate(g, weights, x)["y"]
    assert_close(y, ref, "float32")
    assert_close(ag.compile(g, "torch", weights=weights, sdpa=False)(x)["y"], ref, "float32")
    if knobs.get("key_padding"):
        assert not np.asarray(y)[1].any()


def test_tensors_in_tensors_out_without_copies():
    g, x, _ = _case(causal=True)
    ex = ag.compile(g, "torch", device="cpu", outputs="torch")
    tensors = {n: torch.from_numpy(a) for n, a in x.items()}
    assert to_tensor(tensors["q"], torch.device("cpu")) is tensors["q"]
    y = ex(tensors)["y"]
    assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
    np.testing.assert_allclose(y.numpy(), ag.compile(g, "numpy")(x)["y"], atol=1e-5)


def test_bfloat16_graph_round_trips_through_numpy():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    g = ag.core_attention(2, 4, dtype="bfloat16", causal=True)
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((1, 2, 6, 4)).astype(ml_dtypes.bfloat16) for n in "qkv"}
    y = ag.compile(g, "torch")(x)["y"]
    assert y.dtype == ml_dtypes.bfloat16
    assert_close(y, ag.compile(g, "numpy")(x)["y"].astype(np.float64), "bfloat16")
    t = torch.randn(3, dtype=torch.bfloat16)
    np.testing.assert_array_equal(to_array(t).astype(np.float32), t.float().numpy())


def test_missing_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device.*device='cpu'"):
        ag.compile(ag.core_attention(1, 4), "torch", device="cuda")


def test_torch_compile_option_gives_the_same_numbers():
    g = ag.causal_self_attention(16, 2)
    w = ag.Weights.random(g, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 7, 16)).astype(np.float32)
    ex = ag.compile(g, "torch", weights=w, torch_compile="eager")  # dynamo tracing, no C++ build in CI
    want = ag.compile(g, "numpy", weights=w)(x=x)["y"]
    np.testing.assert_allclose(ex(x=x)["y"], want, atol=1e-5)
    x2 = x[:1, :4]  # a new shape: dynamo re-traces
    np.testing.assert_allclose(ex(x=x2)["y"], ag.compile(g, "numpy", weights=w)(x=x2)["y"], atol=1e-5)
