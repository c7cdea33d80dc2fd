"""The torch backend's decode plans (``backends/torch/plans.py``, defect s3-4): a static-cache step reads
the valid keys as a slice of the caller's cache -- no key-sized mask, no copy of the cache -- and matches
the float64 reference; the CUDA plan (SDPA over the valid keys, no mask) is chosen by the same function."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attngraph as ag  # noqa: E402

from tests.conftest import assert_close  # noqa: E402

HEADS, KV_HEADS, D, MAX_LEN = 4, 2, 16, 64


def _reference(q, keys, values, lengths):
    """float64 attention of each row's queries over its first lengths[b] keys (GQA repeated)."""
    group = q.shape[1] // keys.shape[1]
    out = np.zeros(q.shape, np.float64)
    for b, n in enumerate(lengths):
        kk = np.repeat(keys[b, :, :n].astype(np.float64), group, axis=0)
        vv = np.repeat(values[b, :, :n].astype(np.float64), group, axis=0)
        s = q[b].astype(np.float64) @ kk.transpose(0, 2, 1) / np.sqrt(q.shape[3])
        p = np.exp(s - s.max(-1, keepdims=True))
        out[b] = (p / p.sum(-1, keepdims=True)) @ vv
    return out


def _step(batch, cached, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, HEADS, 1, D), dtype=np.float32)
    k, v = (rng.standard_normal((batch, KV_HEADS, 1, D), dtype=np.float32) for _ in range(2))
    caches = [rng.standard_normal((batch, KV_HEADS, MAX_LEN, D), dtype=np.float32) for _ in range(2)]
    for c in caches:  # NaN past each row's valid keys: a step that reads the unused tail turns NaN
        for b, n in enumerate(cached):
            c[b, :, n:] = np.nan
    graph = ag.core_attention(HEADS, D, num_kv_heads=KV_HEADS, causal=True, kv_cache="static", max_len=MAX_LEN)
    feed = {"q": q, "k": k, "v": v, "past_key": caches[0], "past_value": caches[1],
            "cache_lengths": np.asarray(cached, np.int64)}
    return graph, feed


@pytest.mark.parametrize("cached", [[37], [37, 37], [5, 40, 0]])
def test_torch_static_decode_matches_reference(cached):
    graph, feed = _step(len(cached), cached)
    ex = ag.compile(graph, "torch", device="cpu")
    y = np.asarray(ex(feed)["y"])
    lengths = [n + 1 for n in cached]
    assert_close(y, _reference(feed["q"], feed["past_key"], feed["past_value"], lengths), "float32")


def test_defect_s3_4_torch_static_decode_uses_lean_plan():
    """Defect s3-4: a decode step on the torch backend built a (B, 1, 1, max_len) keep mask from the lengths
    and ran the general masked path each step. Now: the lean plan, no op touches a tensor of the cache's key
    length other than the two products and the in-place cache write, and nothing copies the cache."""
    from torch.profiler import ProfilerActivity, profile

    cached = [37, 20]
    graph, feed = _step(2, cached)
    ex = ag.compile(graph, "torch", device="cpu")
    ex(feed)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        ex(feed)
    key_sized = {MAX_LEN, max(cached) + 1}  # the full cache or its valid prefix along the key axis
    offenders = []
    for event in prof.events():
        shapes = [s for s in (event.input_shapes or []) if isinstance(s, list) and len(s) == 4]
        if any(s[2] in key_sized or s[3] in key_sized for s in shapes) and event.name in {
                "aten::copy_", "aten::clone", "aten::contiguous", "aten::lt", "aten::le", "aten::ge",
                "aten::logical_and", "aten::where", "aten::masked_fill", "aten::masked_fill_", "aten::arange",
                "aten::scaled_dot_product_attention", "aten::isfinite"}:
            offenders.append((event.name, shapes))
    names = {e.name for e in prof.events()}
    assert not offenders, f"a decode step built a key-sized mask or copied the cache: {offenders[:5]}"
    assert "aten::arange" not in names, "the step built a key index (a mask) it does not need"
    assert "aten::scaled_dot_product_attention" not in names  # the CPU plan is the lean one


@pytest.mark.parametrize(("device", "lengths", "offsets", "want"), [
    ("cpu", [38], [37], "lean"),
    ("cuda", [38, 38], [37, 37], "sdpa_valid"),  # one length: SDPA over k[:, :, :38], no attn_mask
    ("cuda", [38, 21], [37, 20], "lean"),        # rows of different lengths: no mask either, one slice a row
    ("cpu", [38], [30], None),                   # causal rows that do not see every valid key: general path
])
def test_decode_plan_choice(device, lengths, offsets, want):
    from attngraph_backends.torch import plans

    got = plans.decode_plan(device, 1 if want else 8, MAX_LEN, lengths, offsets, operands={"lengths": None},
                            softcap=0.0, return_weights=False, has_biases=False, causal=True, window_left=-1,
                            window_right=-1)
    assert got == want


@pytest.mark.parametrize("change", [{"softcap": 30.0}, {"return_weights": True}, {"has_biases": True},
                                    {"window_left": 8}, {"operands": {"lengths": None, "bool": None}}])
def test_decode_plan_declines_what_it_cannot_do_exactly(change):
    from attngraph_backends.torch import plans

    args = dict(operands={"lengths": None}, softcap=0.0, return_weights=False, has_biases=False, causal=True,
                window_left=-1, window_right=-1)
    assert plans.decode_plan("cuda", 1, MAX_LEN, [10], [9], **{**args, **change}) is None


def test_lean_plan_keeps_nan_and_zero_rows():
    """A NaN in a valid key keeps the row NaN (the safe softmax's rule); a row with no keys gives 0."""
    from attngraph_backends.torch import plans

    q = torch.ones((2, HEADS, 1, D))
    k = torch.ones((2, KV_HEADS, 8, D))
    v = torch.ones((2, KV_HEADS, 8, D))
    k[0, 0, 3, 0] = torch.nan
    y = plans.run_decode_plan("lean", q, k, v, [8, 0], scale=0.25)
    group = HEADS // KV_HEADS
    assert torch.isnan(y[0, :group]).all() and torch.isfinite(y[0, group:]).all()
    assert (y[1] == 0).all()
