"""Multi-head latent attention (MLA): the conformance cases on every backend (as built and after O1), the absorbed
form against the naive one, the decoupled rope against an independent oracle (and its negative control), the
static latent cache through DecodeSession, and bad configurations refused by name."""

from __future__ import annotations

import mla_oracle
import numpy as np
import pytest
from conftest import assert_close

import attngraph as ag
from attngraph.conformance import run_conformance, targets_for
from attngraph.conformance.latent_cases import MLA, latent_cases
from attngraph.conformance.reference import evaluate
from attngraph.errors import ConfigError
from attngraph.ir import Op

DIMS = {"heads": MLA["num_heads"], "nope": MLA["qk_nope_head_dim"], "rope": MLA["qk_rope_head_dim"],
        "v_dim": MLA["v_head_dim"], "rank": MLA["kv_lora_rank"]}


def _case(name):
    return next(c for c in latent_cases() if c.name == name).build()


def test_latent_cases_pass_on_every_backend(backend):
    results = run_conformance(latent_cases(), targets_for([backend.name], ("O0", "O1")), progress=False)
    failed = [f"{r.case} {r.target}: {r.detail}" for r in results if r.status != "passed"]
    assert not failed, failed
    assert {r.case for r in results} == {c.name for c in latent_cases()}


def test_absorbed_equals_naive_on_every_backend(backend):
    """The absorbed graph on each backend against the float64 reference of the naive graph (the same weights)."""
    naive, w, inputs = _case("mla_naive")
    absorbed, w2, inputs2 = _case("mla_absorbed")
    assert all(np.array_equal(w[k], w2[k]) for k in w) and all(np.array_equal(inputs[k], inputs2[k]) for k in inputs)
    ref = evaluate(naive, w, inputs)["y"]
    np.testing.assert_allclose(evaluate(absorbed, w, inputs)["y"], ref, rtol=1e-12, atol=1e-12)
    assert_close(ag.compile(absorbed, backend, weights=w)(inputs)["y"], ref, "float32", "absorbed vs naive")


def test_absorb_mla_rewrites_the_core_only():
    """The absorbed graph keeps the signature, has one latent_attention and no per-head key/value expansion."""
    naive, *_ = _case("mla_decode_static_cache")
    absorbed = ag.absorb_mla(ag.latent_attention(**MLA, kv_cache="static", max_len=16))
    assert [v.name for v in absorbed.inputs] == [v.name for v in naive.inputs]
    assert absorbed.count(Op.LATENT_ATTENTION) == 1 and absorbed.count(Op.WEIGHTED_SUM) == 0
    assert absorbed.count(Op.LINEAR) == ag.latent_attention(**MLA).count(Op.LINEAR) - 1  # no c @ w_kv_b
    core = next(n for n in absorbed.nodes if n.op is Op.LATENT_ATTENTION)
    assert [v.name for v in core.inputs[2:4]] == ["present_latent", "present_rope_key"]  # the caches themselves
    assert ag.absorb_mla(absorbed) is absorbed


@pytest.mark.parametrize("q_lora_rank", [None, 12])
def test_naive_graph_matches_the_independent_oracle(q_lora_rank):
    g = ag.latent_attention(**MLA, q_lora_rank=q_lora_rank, position_ids=True)
    case = next(c for c in latent_cases() if c.name == "mla_rope_decoupled")
    _, w, inputs = case.build()
    if q_lora_rank is None:
        w = ag.Weights.random(g, seed=3)
    ref = evaluate(g, w, inputs)["y"]
    want = mla_oracle.mla(inputs["x"], w, positions=inputs["position_ids"], **DIMS)
    np.testing.assert_allclose(ref, want, rtol=1e-10, atol=1e-10)
    wrong = mla_oracle.mla(inputs["x"], w, positions=inputs["position_ids"], rope_everywhere=True, **DIMS)
    assert np.linalg.norm(wrong - ref) > 1e-2 * np.linalg.norm(ref), "rope on the nope dims should differ"


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_decode_session_caches_the_latent_only(backend_name):
    """Prefill 4 tokens, then 3 steps, into the static latent cache: equal to the whole causal sequence."""
    g = ag.latent_attention(**MLA, q_lora_rank=12, kv_cache="static", max_len=12)
    w = ag.Weights.random(g, seed=1)
    x = np.random.default_rng(1).standard_normal((2, 7, MLA["hidden_size"])).astype(np.float32)
    ref = evaluate(ag.latent_attention(**MLA, q_lora_rank=12), w, {"x": x})["y"]
    session = ag.DecodeSession(ag.absorb_mla(g), backend_name, weights=w, batch=2)
    assert {n: c.shape for n, c in session._caches.items()} == {"past_latent": (2, 1, 12, MLA["kv_lora_rank"]),
                                                                "past_rope_key": (2, 1, 12, MLA["qk_rope_head_dim"])}
    got = np.concatenate([session.prefill(x[:, :4])] + [session.step(x[:, t:t + 1]) for t in range(4, 7)], axis=1)
    assert_close(got, ref, "float32", "decode steps vs whole sequence")
    assert list(session.lengths) == [7, 7]


def test_numba_latent_kernel_with_a_dense_mask_operand():
    """latent_attention with a bool mask operand runs the numba backend's dense path, equal to the reference."""
    rng = np.random.default_rng(2)
    b = ag.GraphBuilder("latent_core")
    ins = [b.input(n, "float32", ("batch", h, s, d)) for n, h, s, d in
           (("q_lat", 4, "q_len", 16), ("q_rope", 4, "q_len", 4), ("c", 1, "kv_len", 16), ("k_rope", 1, "kv_len", 4))]
    m = b.input("attn_mask", "bool", ("q_len", "kv_len"))
    y = b.op(Op.LATENT_ATTENTION, *ins, m, scale=0.3, operands=("bool",), name="y")
    g = b.build([y])
    feed = {v.name: rng.standard_normal((2, v.type.shape[1], 3 if "q" in v.name else 9, v.type.shape[3]))
            .astype(np.float32) for v in ins}
    feed["attn_mask"] = rng.random((3, 9)) < 0.6
    feed["attn_mask"][1] = False  # a fully masked row: 0
    got = ag.compile(g, "numba", weights={})(feed)["y"]
    assert_close(got, evaluate(g, {}, feed)["y"], "float32", "numba latent core, bool mask")
    assert np.all(got[:, :, 1] == 0)


@pytest.mark.parametrize("knobs,word", [({"kv_lora_rank": 0}, "kv_lora_rank"), ({"qk_rope_head_dim": 3}, "even"),
                                        ({"rotary": "gptj"}, "rotary"), ({"kv_cache": "static"}, "max_len"),
                                        ({"q_lora_rank": -1}, "q_lora_rank"), ({"kv_cache": True}, "kv_cache")])
def test_bad_configurations_are_refused_by_name(knobs, word):
    with pytest.raises(ConfigError, match=word):
        ag.latent_attention(**{**MLA, **knobs})
