"""Property test: random configurations through build -> verify -> JSON -> passes -> NumPy vs the oracle."""

from __future__ import annotations

import numpy as np
import oracle
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngraph as ag


@st.composite
def configs(draw):
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 6))
    c = dict(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
             v_head_dim=draw(st.sampled_from([None, 3])), bias=draw(st.booleans()),
             causal=draw(st.booleans()), mask=draw(st.sampled_from([None, "bool", "additive"])),
             softcap=draw(st.sampled_from([None, 1.5])), scale=draw(st.sampled_from([None, 0.3])),
             window=draw(st.sampled_from([None, (1, 0), (2, 1)])), kv_cache=draw(st.booleans()),
             key_padding=draw(st.booleans()), dtype=draw(st.sampled_from(["float32", "float64"])))
    shape = dict(batch=draw(st.integers(1, 2)), q_len=draw(st.integers(1, 5)), past=draw(st.integers(0, 3)),
                 d_model=heads * head_dim, pipeline=draw(st.sampled_from(["O0", "O1"])),
                 fuse=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))
    return c, shape


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_self_attention_matches_oracle(case):
    c, s = case
    if not c["kv_cache"]:
        s["past"] = 0
    g = ag.self_attention(s["d_model"], c.pop("num_heads"), **c)
    g = ag.from_json(ag.to_json(g))
    g = ag.run_pipeline(g, s["pipeline"])
    w = ag.Weights.random(g, seed=s["seed"])
    rng = np.random.default_rng(s["seed"])
    b, t, p, dt = s["batch"], s["q_len"], s["past"], c["dtype"]
    hkv, d, dv = c["num_kv_heads"], c["head_dim"], c["v_head_dim"] or c["head_dim"]
    x = {"x": rng.standard_normal((b, t, s["d_model"])).astype(dt)}
    if c["kv_cache"]:
        x["past_key"] = rng.standard_normal((b, hkv, p, d)).astype(dt)
        x["past_value"] = rng.standard_normal((b, hkv, p, dv)).astype(dt)
    if c["mask"] == "bool":
        x["attn_mask"] = rng.random((t, t + p)) > 0.3
    elif c["mask"] == "additive":
        x["attn_mask"] = rng.standard_normal((t, t + p)).astype(dt)
    if c["key_padding"]:
        x["key_lengths"] = rng.integers(0, t + p + 1, size=b).astype(np.int64)
    out = ag.compile(g, "numpy", weights=w, fuse=s["fuse"])(x)
    y, pk, _, _ = oracle.mha(
        x["x"], x["x"], x["x"], w, num_heads=g.nodes and c_heads(g), num_kv_heads=hkv,
        past_key=x.get("past_key"), past_value=x.get("past_value"), scale=c["scale"],
        softcap=c["softcap"] or 0.0, causal=c["causal"], window=c["window"] or (-1, -1),
        bool_mask=x.get("attn_mask") if c["mask"] == "bool" else None,
        bias=x.get("attn_mask") if c["mask"] == "additive" else None, key_lengths=x.get("key_lengths"))
    assert_close(out["y"], y, dt)
    if c["kv_cache"]:
        assert_close(out["present_key"], pk, dt, "present_key")


def c_heads(g):
    return next(n.attr("heads") for n in g.nodes if n.op is ag.Op.SPLIT_HEADS)
