"""transformers' multi-head latent attention (``DeepseekV3Attention``, ``DeepseekV2Attention``) as an attngraph
``latent_attention`` graph.

    imported = attngraph.from_transformers(model.model.layers[0].self_attn)   # or the module built alone
    feed = imported.inputs(hidden_states, position_ids=position_ids)
    out = imported.outputs(attngraph.compile(imported, "numba")(feed)).output

What is read from the module: the widths (``q_lora_rank`` may be None, ``kv_lora_rank``, ``qk_nope_head_dim``,
``qk_rope_head_dim``, ``v_head_dim``), its ``scaling`` (YaRN's ``mscale`` folded in by transformers), the RMSNorm
epsilons, the projections' biases (``attention_bias``) and the rope: V2 rotates interleaved pairs (complex
``freqs_cis``); V3 too with ``rope_interleave=True`` (it writes the rotated pairs de-interleaved: every score is
the same), else ``half``. Frequencies are computed in the graph when they equal the model's rotary module's.

The imported graph is causal self-attention over the call's tokens (no padding mask, no cache); ``absorb=True``
gives the absorbed form. For decoding, build ``latent_attention(..., kv_cache="static")`` with these weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends.latent import latent_attention
from attngraph.frontends.transformers.inputs import LayerOutputs
from attngraph.frontends.transformers.rope import rope_spec
from attngraph.ir import Graph
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering.weights import Weights
from attngraph.passes.absorb_mla import absorb_mla

LATENT_CLASSES = {"DeepseekV3Attention": "deepseek_v3", "DeepseekV2Attention": "deepseek_v2"}
OPTIONS = ("layer_idx", "absorb", "name", "cache")
# (attngraph param, module attribute, bias param): torch Linear weights are (out, in), ours (in, out)
_LINEARS = (("w_q", "q_proj", None), ("w_q_a", "q_a_proj", "b_q_a"), ("w_q_b", "q_b_proj", None),
            ("w_kv_a", "kv_a_proj_with_mqa", "b_kv_a"), ("w_kv_b", "kv_b_proj", None), ("w_o", "o_proj", "b_o"))
_NORMS = (("q_a_norm", "q_a_layernorm"), ("kv_a_norm", "kv_a_layernorm"))


@dataclass
class ImportedLatentLayer:
    """An imported MLA layer: ``graph`` and ``weights`` (iterable as the pair; ``compile`` takes it whole), the
    family, the module's class and how its quirks were handled (``notes``)."""

    graph: Graph
    weights: Weights
    family: str
    module: str
    notes: tuple[str, ...]

    def __iter__(self):
        return iter((self.graph, self.weights))

    def inputs(self, hidden_states: Any, *, position_ids: Any = None) -> dict[str, np.ndarray]:
        """The graph's inputs from the module's: hidden states (batch, seq, hidden) and the positions (default
        ``arange(seq)``, as the model gives a fresh sequence)."""
        dtype = to_numpy(self.graph.inputs[0].type.dtype)
        x = _array(hidden_states, dtype)
        width = self.graph.inputs[0].type.shape[2]
        if x.ndim != 3 or x.shape[2] != width:
            raise ConfigError(f"hidden_states must be (batch, seq, {width}), got {x.shape}")
        if position_ids is None:
            positions = np.broadcast_to(np.arange(x.shape[1], dtype=np.int64), x.shape[:2]).copy()
        else:
            positions = np.broadcast_to(_array(position_ids, np.int64), x.shape[:2]).copy()
        return {"x": x, "position_ids": positions}

    def outputs(self, result: dict[str, Any]) -> LayerOutputs:
        """The module's output (no attention weights, no cache entry: see the module docstring)."""
        return LayerOutputs(np.asarray(result["y"]), None, None)


def import_latent_layer(module: Any, config: Any = None, **options: Any) -> ImportedLatentLayer:
    """Import a DeepSeek V2/V3 attention module (see the module docstring); ``absorb=True``: the absorbed form."""
    name = type(module).__name__
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for from_transformers on {name}; valid: {', '.join(OPTIONS)}")
    if options.get("cache"):
        raise UnsupportedConfig(f"{name}: the imported graph has no transformers cache; for decoding build "
                                "attngraph.latent_attention(..., kv_cache='static') with the imported weights and run "
                                "it in a DecodeSession")
    if getattr(module, "training", False):
        raise ConfigError(f"{name} is in training mode (dropout active): call model.eval() first")
    config = config if config is not None else module.config
    dtype = {"torch.float32": "float32", "torch.float64": "float64"}.get(str(next(module.parameters()).dtype))
    if dtype is None:
        raise UnsupportedConfig(f"{name} in {next(module.parameters()).dtype}: MLA imports float32 or float64 "
                                "modules; call module.float() first")
    dr = int(module.qk_rope_head_dim)
    spec = rope_spec(module, config, dr)
    if spec.cache:
        raise UnsupportedConfig(f"{name}: rope parameters {spec.scaling} are not computed in the graph (default, "
                                "linear, llama3 and yarn are)")
    layout, notes = _layout(module, config, name)
    graph = latent_attention(
        int(module.hidden_size), int(module.num_heads), kv_lora_rank=int(module.kv_lora_rank),
        qk_nope_head_dim=int(module.qk_nope_head_dim), qk_rope_head_dim=dr, v_head_dim=int(module.v_head_dim),
        q_lora_rank=None if module.q_lora_rank is None else int(module.q_lora_rank), rotary=layout,
        rope_theta=spec.theta, rope_scaling=spec.scaling, scale=float(module.scaling),
        norm_eps=float(module.kv_a_layernorm.variance_epsilon), bias=module.o_proj.bias is not None,
        position_ids=True, dtype=dtype, name=options.get("name") or f"{LATENT_CLASSES[name]}_attention")
    if module.q_a_layernorm is not None and module.q_a_layernorm.variance_epsilon != module.kv_a_layernorm.variance_epsilon:
        raise UnsupportedConfig(f"{name}: q_a_layernorm and kv_a_layernorm have different epsilons")
    weights = Weights(_weights(module, to_numpy(graph.inputs[0].type.dtype)))
    weights.check(graph)
    if options.get("absorb"):
        graph = absorb_mla(graph)
    return ImportedLatentLayer(graph, weights, LATENT_CLASSES[name], name, notes)


def _layout(module: Any, config: Any, name: str) -> tuple[str, tuple[str, ...]]:
    if name == "DeepseekV2Attention":
        return "interleaved", ("rope: V2 multiplies interleaved pairs by complex freqs_cis: layout 'interleaved'",)
    if getattr(config, "rope_interleave", True):
        return "interleaved", ("rope: rope_interleave=True turns pairs (2k, 2k+1) and writes them de-interleaved; "
                               "attngraph keeps them in place: the same scores, the same output",)
    return "half", ("rope: rope_interleave=False: rotate_half",)


def _weights(module: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
    out = {}
    for ours, attr, bias in _LINEARS:
        lin = getattr(module, attr, None)
        if lin is None:
            continue
        out[ours] = lin.weight.detach().cpu().numpy().T.astype(dtype)
        if bias and lin.bias is not None:
            out[bias] = lin.bias.detach().cpu().numpy().astype(dtype)
    for ours, attr in _NORMS:
        norm = getattr(module, attr, None)
        if norm is not None:
            out[ours] = norm.weight.detach().cpu().numpy().astype(dtype)
    return out


def _array(x: Any, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False)
