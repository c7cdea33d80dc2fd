"""One small adapter per Hugging Face family: what each attention module means, read from the module and its
config into a ``LayerSpec``. ``FAMILIES`` maps the module's class name to its family and adapter; this file
holds the rotary decoders (Llama and its kin, GPT-NeoX, Falcon), ``families_classic.py`` the others.

Each adapter reads the module's own attributes first (``scaling``, ``head_dim``, ``sliding_window``, ...: what
the module computes with) and the config where the module keeps nothing, so per-layer differences (sliding
or full layer, the rope parameters of its layer type, ``query_pre_attn_scalar``) come out per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends.transformers import families_classic as classic
from attngraph.frontends.transformers import weights
from attngraph.frontends.transformers.rope import rope_spec
from attngraph.frontends.transformers.spec import LayerSpec

_LAYER_TYPES = ("full_attention", "sliding_attention")
_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ReadOptions:
    """The import options an adapter may need (see ``from_transformers``)."""

    cross: bool | None = None
    implementation: str | None = None
    output_attentions: bool = False
    relative_attention_bias: Any = None


def read_layer(module: Any, config: Any, layer_idx: int | None, options: ReadOptions) -> LayerSpec:
    """The ``LayerSpec`` of ``module``; refuses a class no family adapter knows, by name."""
    name = type(module).__name__
    entry = FAMILIES.get(name)
    if entry is None:
        raise UnsupportedConfig(
            f"{name} is not an attention module from_transformers knows (families: {', '.join(sorted(FAMILY_NAMES))}; "
            f"classes: {', '.join(sorted(FAMILIES))}); export the model with torch.onnx.export and import the "
            "attention with attngraph.from_onnx, or add a family adapter in attngraph/frontends/transformers")
    family, adapter = entry
    spec = adapter(module, config, layer_idx, options)
    spec = replace(spec, family=family, module=name, layer_idx=layer_idx)
    return replace(spec, bias=weights.bias_letters(weights.projections(module, spec)) or False)


def layer_type(module: Any, config: Any, layer_idx: int | None) -> str:
    """"full_attention" or "sliding_attention": the module's own ``layer_type``, else ``config.layer_types``
    (Gemma 2/3, GPT-OSS, Qwen2/3 with ``max_window_layers``), else every layer slides when the config has a
    ``sliding_window`` (Mistral, Phi-3)."""
    found = getattr(module, "layer_type", None)
    types = getattr(config, "layer_types", None)
    if found is None and types is not None:
        if layer_idx is None:
            raise ConfigError(f"{type(module).__name__} has no layer_idx and the config has layer_types: pass "
                              "layer_idx= so the layer's type (sliding or full) is known")
        found = types[layer_idx]
    if found is None:
        found = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    if found not in _LAYER_TYPES:
        raise UnsupportedConfig(f"layer type {found!r} (layer {layer_idx}) is not one attngraph can express; "
                                f"supported: {_LAYER_TYPES}")
    return found


def _decoder(m: Any, cfg: Any, idx: int | None, *, rotary_dim: int | None = None, layout: str = "separate",
             projections: tuple = _PROJ, **extra) -> LayerSpec:
    """The Llama-like decoder layer: causal, GQA, rotate_half RoPE, the module's ``scaling``, the layer's
    sliding window, a KV cache."""
    kind = layer_type(m, cfg, idx)
    window = getattr(m, "sliding_window", None) or getattr(cfg, "sliding_window", None)
    heads = cfg.num_attention_heads
    return LayerSpec(
        family="", module="", layer_idx=idx, kind="self", causal=True, d_model=cfg.hidden_size, num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=m.head_dim, layout=layout,
        projections=projections, scale=float(m.scaling), layer_type=kind,
        window=int(window) if kind == "sliding_attention" else None,
        rope=rope_spec(m, cfg, m.head_dim, rotary_dim, kind), cache=True, **extra)


def llama(m, cfg, idx, opts) -> LayerSpec:
    """Llama, Mistral (every layer slides when ``sliding_window`` is set), Qwen2 (bias on q, k, v)."""
    return _decoder(m, cfg, idx)


def qwen3(m, cfg, idx, opts) -> LayerSpec:
    """Qwen3: RMSNorm over each head of Q and K (one weight of head_dim), before RoPE."""
    return _decoder(m, cfg, idx, qk_norm="rms", qk_norm_eps=float(m.q_norm.variance_epsilon))


def gemma2(m, cfg, idx, opts) -> LayerSpec:
    """Gemma 2: scale ``query_pre_attn_scalar**-0.5``, ``attn_logit_softcapping``, alternating sliding layers."""
    cap = getattr(m, "attn_logit_softcapping", None)
    return _decoder(m, cfg, idx, softcap=float(cap) if cap else None)


def gemma3(m, cfg, idx, opts) -> LayerSpec:
    """Gemma 3: (1 + w) QK-norm, rope parameters per layer type; its ``attn_logit_softcapping`` is never applied."""
    if getattr(cfg, "use_bidirectional_attention", False):
        raise UnsupportedConfig("Gemma 3 with use_bidirectional_attention=True (its masks look both ways within "
                                "a halved window) is not imported; build it with use_bidirectional_attention=False")
    notes = ("Gemma 3 keeps attn_logit_softcapping in its config but its attention never applies it: not imported",)
    return _decoder(m, cfg, idx, qk_norm="rms_plus_one", qk_norm_eps=float(m.q_norm.eps), notes=notes)


def phi3(m, cfg, idx, opts) -> LayerSpec:
    """Phi-3: fused ``qkv_proj`` rows [q | k | v], partial rotary ``int(head_dim * partial_rotary_factor)``."""
    factor = (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor",
                                                                getattr(cfg, "partial_rotary_factor", 1.0))
    return _decoder(m, cfg, idx, rotary_dim=int(m.head_dim * float(factor)), layout="rows",
                    projections=("qkv_proj", "o_proj"))


def gpt_oss(m, cfg, idx, opts) -> LayerSpec:
    """GPT-OSS: a learned sink logit per head, YaRN rope, alternating sliding layers, biases."""
    return _decoder(m, cfg, idx, sinks=True)


def gpt_neox(m, cfg, idx, opts) -> LayerSpec:
    """GPT-NeoX: fused ``query_key_value`` interleaved per head, partial rotary (``rotary_ndims``)."""
    heads = cfg.num_attention_heads
    return LayerSpec(
        family="", module="", layer_idx=idx, kind="self", causal=True, d_model=cfg.hidden_size, num_heads=heads,
        num_kv_heads=heads, head_dim=m.head_size, layout="per_head", projections=("query_key_value", "dense"),
        scale=float(m.scaling), rope=rope_spec(m, cfg, m.head_size, m.rotary_ndims), cache=True)


def falcon(m, cfg, idx, opts) -> LayerSpec:
    """Falcon: three fused layouts; RoPE, or ALiBi added before the scale."""
    heads, hd = m.num_heads, m.head_dim
    if cfg.new_decoder_architecture:
        layout, kv = "grouped", cfg.num_kv_heads
    elif cfg.multi_query:
        layout, kv = "rows", 1
    else:
        layout, kv = "per_head", heads
    # transformers >= 5.25 runs Falcon through the shared attention interface (``num_key_value_groups`` marks it):
    # its cache keeps the kv heads as they are and ALiBi enters once, through the mask, in every implementation
    shared_interface = hasattr(m, "num_key_value_groups")
    common = {"family": "", "module": "", "layer_idx": idx, "kind": "self", "causal": True,
              "d_model": m.hidden_size, "num_heads": heads, "num_kv_heads": kv, "head_dim": hd, "layout": layout,
              "projections": ("query_key_value", "dense"), "scale": float(m.inv_norm_factor), "cache": True,
              "cache_heads": heads if cfg.new_decoder_architecture and not shared_interface else None}
    if not cfg.alibi:
        return LayerSpec(rope=rope_spec(m, cfg, hd), **common)
    return LayerSpec(**common, **_falcon_alibi(heads, cfg, opts, shared_interface))


def _falcon_alibi(heads: int, cfg: Any, opts: ReadOptions, shared_interface: bool) -> dict:
    """Falcon's ALiBi: ``(q.k + alibi) * scale``. Before transformers 5.25 its eager path added the ALiBi twice
    (once to the scores, once more through the model's mask, which carries alibi * scale) while sdpa added it
    once: the slopes are doubled to match the module's configured implementation (eager too under sdpa with
    output_attentions, which falls back to the eager path). From 5.25 on, both add it once, through the mask."""
    import torch
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    impl = opts.implementation or getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise UnsupportedConfig(f"Falcon ALiBi under attn_implementation={impl!r} is not imported (its ALiBi "
                                "handling differs); load the model with attn_implementation='eager' or 'sdpa'")
    twice = (impl == "eager" or opts.output_attentions) and not shared_interface
    # slope * position 1, as Falcon computes it (slopes rounded to bfloat16)
    slopes = build_alibi_tensor(torch.ones((1, 2), dtype=torch.long), heads, torch.float32).reshape(heads, 2)[:, 1]
    note = (f"Falcon {'eager' if twice else 'sdpa'}: ALiBi applied {'twice' if twice else 'once'} "
            f"({'slopes doubled' if twice else 'as sdpa adds it'}); bfloat16 slopes as Falcon rounds them")
    return {"alibi": "before_scale", "alibi_slopes": tuple(float(s) * (2 if twice else 1) for s in slopes),
            "alibi_counts_tokens": True, "notes": (note,)}


FAMILIES: dict[str, tuple[str, Any]] = {
    "LlamaAttention": ("llama", llama),
    "MistralAttention": ("mistral", llama),
    "Qwen2Attention": ("qwen2", llama),
    "Qwen3Attention": ("qwen3", qwen3),
    "Gemma2Attention": ("gemma2", gemma2),
    "Gemma3Attention": ("gemma3", gemma3),
    "Phi3Attention": ("phi3", phi3),
    "GptOssAttention": ("gpt_oss", gpt_oss),
    "GPTNeoXAttention": ("gpt_neox", gpt_neox),
    "FalconAttention": ("falcon", falcon),
    **classic.FAMILIES,
}
FAMILY_NAMES = sorted({family for family, _ in FAMILIES.values()})
