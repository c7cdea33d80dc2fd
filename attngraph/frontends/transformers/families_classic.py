"""Family adapters for the models without rotary embeddings: GPT-2, BERT/RoBERTa, OPT, Bloom, MPT (ALiBi), T5
(relative position bias), BART and Whisper (encoder, decoder and cross attention). See ``families.py``.
"""

from __future__ import annotations

from typing import Any

from attngraph.errors import ConfigError
from attngraph.frontends.transformers.spec import LayerSpec

_BART = ("q_proj", "k_proj", "v_proj", "out_proj")


def _spec(idx: int | None, *, kind: str, causal: bool, d_model: int, heads: int, head_dim: int, **rest) -> LayerSpec:
    return LayerSpec(family="", module="", layer_idx=idx, kind=kind, causal=causal, d_model=d_model,
                     num_heads=heads, num_kv_heads=heads, head_dim=head_dim, **rest)


def gpt2(m, cfg, idx, opts) -> LayerSpec:
    """GPT-2: Conv1D weights, scale ``1/sqrt(hd)`` (``scale_attn_weights``) divided by ``layer_idx + 1`` with
    ``scale_attn_by_inverse_layer_idx`` (the module's ``scaling`` holds both); cross attention reads the
    encoder states through ``q_attn`` and ``c_attn`` = [k | v]."""
    cross = bool(m.is_cross_attention)
    return _spec(idx, kind="cross" if cross else "self", causal=not cross, d_model=m.embed_dim, heads=m.num_heads,
                 head_dim=m.head_dim, layout="conv1d_cross" if cross else "conv1d",
                 projections=("c_attn", "c_proj"), scale=float(m.scaling),
                 kdim=int(m.c_attn.weight.shape[0]) if cross else None, cache=True)


def bert(m, cfg, idx, opts) -> LayerSpec:
    """BERT/RoBERTa ``*SelfAttention``/``*CrossAttention``: the module returns the context before the output
    projection (``attention.output.dense``, then residual and LayerNorm, live in ``BertSelfOutput``), so the
    graph's output projection is an exact identity; causal with a cache when the model is a decoder."""
    cross = type(m).__name__.endswith("CrossAttention")
    return _spec(idx, kind="cross" if cross else "self", causal=bool(m.is_causal) and not cross,
                 d_model=m.num_attention_heads * m.attention_head_size, heads=m.num_attention_heads,
                 head_dim=m.attention_head_size, layout="separate", projections=("query", "key", "value", None),
                 scale=float(m.scaling), kdim=m.key.in_features if cross else None,
                 cache=bool(m.is_causal) or cross, context_only=True,
                 notes=("the module returns the context before attention.output.dense: identity output projection",))


def opt(m, cfg, idx, opts) -> LayerSpec:
    """OPT: scales q after its bias, which is the default ``1/sqrt(hd)`` on the scores."""
    return _spec(idx, kind="self", causal=True, d_model=m.embed_dim, heads=m.num_heads, head_dim=m.head_dim,
                 layout="separate", projections=_BART, scale=float(m.scaling), cache=True)


def bloom(m, cfg, idx, opts) -> LayerSpec:
    """Bloom: fused ``query_key_value`` per head, ``q.k / sqrt(hd) + alibi`` (not scaled); returns
    ``dense(ctx) + residual``."""
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    heads = m.num_heads
    slopes = build_alibi_tensor(torch.ones((1, 2), dtype=torch.long), heads, torch.float32).reshape(heads, 2)[:, 1]
    return _spec(idx, kind="self", causal=True, d_model=m.hidden_size, heads=heads, head_dim=m.head_dim,
                 layout="per_head", projections=("query_key_value", "dense"), scale=float(m.inv_norm_factor),
                 alibi="after_scale", alibi_slopes=tuple(float(s) for s in slopes), alibi_counts_tokens=True,
                 cache=True, returns_residual=True,
                 notes=("BloomAttention returns dense(ctx) + residual: pass residual= to outputs()",))


def mpt(m, cfg, idx, opts) -> LayerSpec:
    """MPT: ``Wqkv`` rows [q | k | v] clamped to ``clip_qkv``, ``softmax_scale``, ALiBi after the scale with the
    slopes the model builds (``build_mpt_alibi_tensor``, alibi_bias_max 8 whatever the config says)."""
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    bias = build_mpt_alibi_tensor(m.n_heads, 2)  # (H, 1, 2): slope * (j - 1) for j = 0, 1
    return _spec(idx, kind="self", causal=True, d_model=m.hidden_size, heads=m.n_heads, head_dim=m.head_dim,
                 layout="rows", projections=("Wqkv", "out_proj"), scale=float(m.softmax_scale),
                 clip_qkv=float(m.clip_qkv) if m.clip_qkv else None, alibi="after_scale",
                 alibi_slopes=tuple(float(-s) for s in bias[:, 0, 0]), cache=True)


def t5(m, cfg, idx, opts) -> LayerSpec:
    """T5: no scale; self attention adds the relative position bias of the stack's first layer (bidirectional
    buckets in the encoder, causal ones in the decoder); cross attention has none."""
    cross = opts.cross if opts.cross is not None else bool(m.is_decoder and not m.is_causal)
    rel = None
    if not cross:
        rel = (int(m.relative_attention_num_buckets), int(m.relative_attention_max_distance), not m.is_decoder)
        if not m.has_relative_attention_bias and opts.relative_attention_bias is None:
            raise ConfigError(
                f"this T5 self-attention (layer {idx}) has no relative_attention_bias: T5 computes the bias in the "
                "stack's first layer and passes it on. Pass relative_attention_bias=<stack>.block[0].layer[0]."
                "SelfAttention.relative_attention_bias, or import the whole model: attngraph.from_transformers(model)")
    return _spec(idx, kind="cross" if cross else "self", causal=bool(m.is_causal) and not cross, d_model=m.d_model,
                 heads=m.n_heads, head_dim=m.key_value_proj_dim, layout="separate", projections=("q", "k", "v", "o"),
                 scale=float(m.scaling), kdim=m.k.in_features if cross else None, rel_bias=rel,
                 cache=bool(m.is_decoder))


def bart(m, cfg, idx, opts) -> LayerSpec:
    """BART and Whisper (whose ``k_proj`` has no bias): encoder self, decoder causal self, decoder cross (one
    class for all three: cross attention is the decoder's module that is not causal, or ``cross=``)."""
    cross = opts.cross if opts.cross is not None else bool(m.is_decoder and not m.is_causal)
    return _spec(idx, kind="cross" if cross else "self", causal=bool(m.is_causal) and not cross, d_model=m.embed_dim,
                 heads=m.num_heads, head_dim=m.head_dim, layout="separate", projections=_BART,
                 scale=float(m.scaling), kdim=m.k_proj.in_features if cross else None, cache=bool(m.is_decoder))


def relative_table(m: Any, opts: Any) -> Any:
    """The (buckets, heads) table of a T5 self-attention: its own, or the stack's first layer's."""
    own = getattr(m, "relative_attention_bias", None)
    given = opts.relative_attention_bias
    source = own if own is not None else given
    return getattr(source, "weight", source)


FAMILIES: dict[str, tuple[str, Any]] = {
    "GPT2Attention": ("gpt2", gpt2),
    "BertSelfAttention": ("bert", bert),
    "BertCrossAttention": ("bert", bert),
    "RobertaSelfAttention": ("roberta", bert),
    "RobertaCrossAttention": ("roberta", bert),
    "OPTAttention": ("opt", opt),
    "BloomAttention": ("bloom", bloom),
    "MptAttention": ("mpt", mpt),
    "T5Attention": ("t5", t5),
    "BartAttention": ("bart", bart),
    "WhisperAttention": ("whisper", bart),
}
