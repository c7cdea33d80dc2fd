"""``LayerSpec``: what a family adapter reads from one Hugging Face attention module, in the module's own terms,
and ``to_config``: the same layer as an ``AttentionConfig`` (the knobs of ``attngraph.frontends.config``).

A spec is plain data, so a whole model can be listed without building a graph, and two layers with equal
configs share one export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attngraph.errors import ConfigError
from attngraph.frontends.config import AttentionConfig
from attngraph.ir import dims

PADDINGS = ("mask", "lengths", None)


@dataclass(frozen=True)
class RopeSpec:
    """The rotary embedding of one layer: rotate_half over the first ``rotary_dim`` dims of each head, with
    ``theta`` and the model's ``scaling`` dict (Hugging Face's ``rope_parameters``), or, where the graph cannot
    compute the frequencies itself (``cache=True``: dynamic NTK, LongRoPE, ...), cos/sin caches that the
    adapter makes with the model's own rotary module at every call."""

    rotary_dim: int
    theta: float
    scaling: dict | None = None
    cache: bool = False
    layer_type: str | None = None  # Gemma 3: the rotary module is asked per layer type

    def describe(self, head_dim: int) -> str:
        kind = str((self.scaling or {}).get("rope_type", "default"))
        text = f"half {self.rotary_dim}/{head_dim} θ={self.theta:g}"
        if kind != "default":
            factor = (self.scaling or {}).get("factor")
            text += f" {kind}" + (f"×{factor:g}" if isinstance(factor, int | float) else "")
        return text + (" (cos/sin cache)" if self.cache else "")


@dataclass(frozen=True)
class LayerSpec:
    """One attention module as its family defines it (see ``families.py``)."""

    family: str
    module: str
    layer_idx: int | None
    kind: str                        # "self" or "cross"
    causal: bool
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layout: str                      # the weight layout (``weights.py``)
    projections: tuple[str | None, ...]  # the module's projection attributes, in the layout's order
    scale: float
    bias: bool | str = False         # filled in from the module's weights
    kdim: int | None = None          # cross attention: the width of the states it reads
    layer_type: str | None = None
    window: int | None = None        # Hugging Face's sliding_window W: query i keeps keys i-W < j <= i
    rope: RopeSpec | None = None
    softcap: float | None = None
    qk_norm: str | None = None
    qk_norm_eps: float = 1e-6
    sinks: bool = False
    clip_qkv: float | None = None
    alibi: str | None = None
    alibi_slopes: tuple[float, ...] | None = None
    alibi_counts_tokens: bool = False  # Bloom/Falcon: ALiBi positions count the real tokens of the 2-D mask
    rel_bias: tuple[int, int, bool] | None = None  # T5: (buckets, max_distance, bidirectional)
    cache: bool = False              # imported with a KV cache by default
    cache_heads: int | None = None   # Falcon new_decoder_architecture: the model caches K/V expanded to H heads
    returns_residual: bool = False   # Bloom: the module returns dense(ctx) + residual
    context_only: bool = False       # BERT: the module returns the context, before any output projection
    notes: tuple[str, ...] = field(default=())

    @property
    def sliding(self) -> bool:
        return self.window is not None


def to_config(spec: LayerSpec, *, cache: bool, padding: str | None, output_attentions: bool, dtype: str,
              name: str | None = None) -> AttentionConfig:
    """The ``AttentionConfig`` of ``spec``: its masks (a 2-D padding mask as a (batch, 1, 1, keys) bool mask,
    or key lengths), cache, positions and score tweaks."""
    if padding not in PADDINGS:
        raise ConfigError(f"padding={padding!r} is unknown; choose 'mask' (the model's 2-D padding mask, any "
                          "padding), 'lengths' (right padding only, as key lengths) or None (no padding input)")
    kv = "q_len" if spec.kind == "self" else "kv_len"
    keys = dims.add("past_len", kv) if cache else kv
    knobs: dict[str, Any] = {}
    if spec.rope:
        knobs.update(rotary="half", rotary_dim=spec.rope.rotary_dim, rope_theta=float(spec.rope.theta),
                     position_ids=True, rope_cache=spec.rope.cache,
                     rope_scaling=None if spec.rope.cache else spec.rope.scaling)
    if spec.rel_bias:
        buckets, distance, bidirectional = spec.rel_bias
        knobs.update(rel_bias=True, rel_buckets=buckets, rel_max_distance=distance, rel_bidirectional=bidirectional)
    return AttentionConfig(
        kind=spec.kind, num_heads=spec.num_heads, d_model=spec.d_model, num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim, kdim=spec.kdim if spec.kind == "cross" else None,
        vdim=spec.kdim if spec.kind == "cross" else None, bias=spec.bias, causal=spec.causal,
        window=(spec.window - 1, 0) if spec.window else None,  # HF keeps W keys: the query and W-1 before it
        mask="bool" if padding == "mask" else None, mask_shape=("batch", 1, 1, keys) if padding == "mask" else None,
        key_padding=padding == "lengths", scale=float(spec.scale), softcap=spec.softcap, clip_qkv=spec.clip_qkv,
        qk_norm=spec.qk_norm, qk_norm_eps=float(spec.qk_norm_eps), sinks=spec.sinks, alibi=spec.alibi,
        alibi_slopes=spec.alibi_slopes, kv_cache=cache, score_outputs=("weights",) if output_attentions else (),
        dtype=dtype, name=name, **knobs)


def describe(spec: LayerSpec) -> dict[str, str]:
    """The listing's columns for one layer: kind, heads, head dim, rotary, window, extras."""
    kind = spec.kind + (" causal" if spec.causal else "" if spec.kind == "cross" else " bidirectional")
    extras = []
    if spec.softcap:
        extras.append(f"softcap {spec.softcap:g}")
    if spec.qk_norm:
        extras.append(f"qk_norm {spec.qk_norm}")
    if spec.sinks:
        extras.append("sinks")
    if spec.alibi:
        extras.append(f"alibi {spec.alibi}")
    if spec.rel_bias:
        extras.append(f"t5 rel_bias {spec.rel_bias[0]}/{spec.rel_bias[1]}")
    if spec.clip_qkv:
        extras.append(f"clip_qkv {spec.clip_qkv:g}")
    if abs(spec.scale * spec.head_dim ** 0.5 - 1) > 1e-9:
        extras.append(f"scale {spec.scale:.4g}")
    if spec.bias:
        extras.append(f"bias {spec.bias if isinstance(spec.bias, str) else 'qkvo'}")
    return {"kind": kind, "heads": f"{spec.num_heads}/{spec.num_kv_heads}", "head dim": str(spec.head_dim),
            "rotary": spec.rope.describe(spec.head_dim) if spec.rope else "-",
            "window": str(spec.window) if spec.window else "-", "extras": ", ".join(extras) or "-"}
