"""``from_transformers`` on multi-head latent attention: transformers' DeepseekV3Attention and DeepseekV2Attention,
built from tiny configs with random weights, equal the module itself (eager and sdpa) on every backend, naive and
absorbed; the rope layout is read per family (V3's ``rope_interleave``), and a wrong one breaks the match."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import attngraph as ag
from attngraph.errors import UnsupportedConfig

B, S = 2, 6
TOL = 2e-5  # float32: relative L2 error of the layer's output


def _config(family: str, impl: str = "eager", **extra):
    common = {"vocab_size": 64, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 24, "qk_nope_head_dim": 12,
              "qk_rope_head_dim": 8, "v_head_dim": 10, "max_position_embeddings": 128}
    cls = transformers.DeepseekV3Config if family == "v3" else transformers.DeepseekV2Config
    config = cls(**{**common, **extra})
    config._attn_implementation = impl
    return config


def _module(family: str, config):
    torch.manual_seed(0)
    if family == "v3":
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m
        attn, rotary = m.DeepseekV3Attention(config, 0), m.DeepseekV3RotaryEmbedding(config)
    else:
        from transformers.models.deepseek_v2 import modeling_deepseek_v2 as m
        attn, rotary = m.DeepseekV2Attention(config, 0), m.DeepseekV2RotaryEmbedding(config)
    with torch.no_grad():  # larger Q/K projections: softmax rows far from uniform, so a wrong rope or scale shows
        for lin in (attn.q_b_proj or attn.q_proj, attn.kv_a_proj_with_mqa):
            lin.weight.mul_(4.0)
    return attn.eval(), rotary.eval()


def _reference(attn, rotary, config, x, positions):
    """The module's output, called as its model calls it: position embeddings, a causal mask (eager) or none (sdpa,
    which is causal by itself)."""
    with torch.no_grad():
        emb = rotary(x, positions)
        mask = None
        if config._attn_implementation == "eager":
            mask = torch.full((S, S), float("-inf")).triu(1)[None, None].expand(B, 1, S, S)
        kwargs = {"position_embeddings": emb, "attention_mask": mask}
        return attn(x, **kwargs)[0].numpy()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, S, 48, generator=g)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])  # row 1 continues a sequence
    return x, positions


def _rel(got, ref):
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


CASES = [("v3", {"q_lora_rank": 16}), ("v3", {"q_lora_rank": None}), ("v3", {"q_lora_rank": 16, "rope_interleave": False}),
         ("v2", {"q_lora_rank": 16}), ("v2", {"q_lora_rank": None, "attention_bias": True}),
         ("v3", {"q_lora_rank": 16, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                       "original_max_position_embeddings": 32, "mscale": 1.0,
                                                       "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}})]


@pytest.mark.parametrize("family,extra", CASES, ids=["v3-q_lora", "v3-no_q_lora", "v3-rotate_half", "v2-q_lora",
                                                    "v2-no_q_lora-bias", "v3-yarn_mscale"])
def test_module_matches_on_every_backend(family, extra, backend):
    config = _config(family, **extra)
    attn, rotary = _module(family, config)
    x, positions = _inputs()
    ref = _reference(attn, rotary, config, x, positions)
    for absorb in (False, True):
        imported = ag.from_transformers(attn, absorb=absorb)
        out = imported.outputs(ag.compile(imported, backend)(imported.inputs(x, position_ids=positions))).output
        assert _rel(out, ref) < TOL, f"{family} {extra} absorb={absorb} on {backend.name}: {_rel(out, ref):.2e}"


@pytest.mark.parametrize("family", ["v3", "v2"])
def test_module_matches_under_sdpa(family):
    config = _config(family, "sdpa", q_lora_rank=16)
    attn, rotary = _module(family, config)
    x, positions = _inputs()
    imported = ag.from_transformers(attn)
    out = imported.outputs(ag.compile(imported, "numpy")(imported.inputs(x, position_ids=positions))).output
    assert _rel(out, _reference(attn, rotary, config, x, positions)) < TOL


def test_wrong_rope_layout_breaks_the_match():
    """Negative control: V3 with rope_interleave=True imported with 'half' pairs is far off."""
    config = _config("v3", q_lora_rank=16)
    attn, rotary = _module("v3", config)
    x, positions = _inputs()
    ref = _reference(attn, rotary, config, x, positions)
    imported = ag.from_transformers(attn)
    assert any("rope_interleave=True" in n for n in imported.notes)
    wrong = ag.latent_attention(48, 4, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
                                q_lora_rank=16, rotary="half", scale=float(attn.scaling), position_ids=True)
    out = ag.compile(wrong, "numpy", weights=imported.weights)(imported.inputs(x, position_ids=positions))["y"]
    assert _rel(out, ref) > 100 * TOL


def test_a_transformers_cache_is_refused_by_name():
    attn, _ = _module("v3", _config("v3", q_lora_rank=16))
    with pytest.raises(UnsupportedConfig, match="kv_cache='static'"):
        ag.from_transformers(attn, cache=True)
