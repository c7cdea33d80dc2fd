"""``AttentionConfig``: every knob that shapes one attention graph, validated on construction.

The knobs, grouped (each convention is the semantics table's, ``attngraph.ir.semantics``):

* shape: ``kind`` ("self", "cross", "core"), ``num_heads``, ``d_model``, ``num_kv_heads`` (GQA/MQA),
  ``head_dim``, ``v_head_dim``, ``kdim``/``vdim`` (cross), ``layout`` ("4d"/"3d", core), ``dtype``;
* projections: ``bias`` (True, False, or the projections that have one, e.g. "qkv" for Qwen2, "qvo"
  for Whisper), ``clip_qkv`` (MPT);
* positions: ``rotary`` ("half" or "interleaved") with ``rotary_dim`` (partial), ``rope_theta``,
  ``rope_scaling`` (linear, llama3, yarn), ``position_ids`` (an explicit (batch, q_len) input) or
  ``rope_cache`` (cos/sin caches as inputs, for any other scheme); ``alibi`` ("after_scale" or
  "before_scale") with ``alibi_slopes``; ``rel_bias`` (T5) with ``rel_buckets``, ``rel_max_distance``,
  ``rel_bidirectional``;
* normalisation: ``qk_norm`` ("rms", "rms_plus_one" (Gemma), "rms_full" (over the whole projection,
  OLMo 2)) with ``qk_norm_eps``;
* scores: ``scale``, ``softcap``, ``sinks``, ``causal``, ``window``, ``key_padding``,
  ``align_to_lengths``, ``mask``/``mask_shape``;
* cache and outputs: ``kv_cache`` (False; True or "concat": ``present = concat(past, new)``; "static": fixed
  (batch, kv_heads, ``max_len``, head_dim) buffers written at each row's ``cache_lengths``, ``max_len`` an int or
  a dim name; "rolling": the same with circular writes, ``max_len`` = the sliding window), ``max_len``,
  ``kv_cache_dtype`` (None; "int8" or "float8_e4m3fn": the static/rolling cache stored quantized) with
  ``kv_scale`` ("per_token_head": a scale per written token and head, kept in past/present_key_scale buffers;
  "per_head": calibrated parameters k_scale/v_scale), ``score_outputs``, ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from attngraph.errors import ConfigError
from attngraph.ir import DType, dims

SCORE_STAGES = {"scaled": "qk_scaled", "softcapped": "qk_softcapped", "masked": "qk_masked", "weights": "attn_weights"}
KINDS = ("self", "cross", "core")
QK_NORMS = ("rms", "rms_plus_one", "rms_full")
QUANT_CACHE_DTYPES = ("int8", "float8_e4m3fn")
KV_SCALES = ("per_token_head", "per_head")


@dataclass(frozen=True)
class AttentionConfig:
    """Everything that shapes one attention graph (see the module docstring). Validated on construction."""

    kind: str = "self"
    num_heads: int = 1
    d_model: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    v_head_dim: int | None = None
    kdim: int | None = None
    vdim: int | None = None
    bias: bool | str = True
    causal: bool = False
    window: tuple[int, int] | None = None
    key_padding: bool = False
    align_to_lengths: bool = False
    mask: str | None = None
    mask_shape: tuple[dims.Dim, ...] | None = None
    scale: float | None = None
    softcap: float | None = None
    clip_qkv: float | None = None
    rotary: str | None = None
    rotary_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    position_ids: bool = False
    rope_cache: bool = False
    qk_norm: str | None = None
    qk_norm_eps: float = 1e-6
    sinks: bool = False
    alibi: str | None = None
    alibi_slopes: tuple[float, ...] | None = None
    rel_bias: bool = False
    rel_buckets: int = 32
    rel_max_distance: int = 128
    rel_bidirectional: bool | None = None
    kv_cache: bool | str = False
    max_len: int | str | None = None
    kv_cache_dtype: str | None = None
    kv_scale: str = "per_token_head"
    score_outputs: tuple[str, ...] = field(default=())
    layout: str = "4d"
    dtype: str = "float32"
    name: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def qk_head_dim(self) -> int:
        if self.head_dim:
            return self.head_dim
        return self.d_model // self.num_heads  # type: ignore[operator]

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim or self.qk_head_dim

    @property
    def effective_scale(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.qk_head_dim)

    @property
    def cache(self) -> str | None:
        """The cache kind: None, "concat", "static" or "rolling"."""
        if self.kv_cache is True:
            return "concat"
        return self.kv_cache or None

    @property
    def has_mask(self) -> bool:
        return bool(self.causal or self.window or self.key_padding or self.mask or self.cache in ("static", "rolling"))

    @property
    def relative_bidirectional(self) -> bool:
        """T5's relative buckets look both ways in an encoder (not causal), one way in a decoder."""
        return self.rel_bidirectional if self.rel_bidirectional is not None else not self.causal

    @property
    def effective_rotary_dim(self) -> int:
        return self.rotary_dim or self.qk_head_dim

    def has_bias(self, projection: str) -> bool:
        """Whether projection ``projection`` ("q", "k", "v" or "o") has a bias."""
        return projection in self.bias if isinstance(self.bias, str) else bool(self.bias)

    def with_(self, **changes) -> AttentionConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _validate(c: AttentionConfig) -> None:
    _validate_shape(c)
    _validate_cache(c)
    _validate_masks(c)
    _validate_positions(c)
    dtype = DType.parse(c.dtype)
    if not dtype.is_float:
        raise ConfigError(f"dtype must be a float type, got {c.dtype!r}")


def _validate_shape(c: AttentionConfig) -> None:
    fail = _fail
    if c.kind not in KINDS:
        fail(f"kind={c.kind!r} is unknown; choose one of {KINDS}")
    if not isinstance(c.num_heads, int) or c.num_heads <= 0:
        fail(f"num_heads must be a positive int, got {c.num_heads!r}")
    if c.kind != "core":
        if not c.d_model or c.d_model <= 0:
            fail(f"{c.kind}-attention needs d_model > 0, got {c.d_model!r}")
        if not c.head_dim and c.d_model % c.num_heads:
            fail(f"num_heads={c.num_heads} does not divide d_model={c.d_model}: "
                 "pick num_heads that divides d_model, or set head_dim explicitly")
    elif not c.head_dim:
        fail("core attention needs head_dim (the size of one Q/K head)")
    if c.layout not in ("4d", "3d"):
        fail(f"layout={c.layout!r} is unknown; choose '4d' (B,H,S,D) or '3d' (B,S,H*D)")
    if c.num_kv_heads is not None and (c.num_kv_heads <= 0 or c.num_heads % c.num_kv_heads):
        fail(f"num_heads={c.num_heads} must be a multiple of num_kv_heads={c.num_kv_heads} "
             "(GQA: q head h uses kv head h // (num_heads / num_kv_heads))")
    if c.kind == "self" and (c.kdim or c.vdim):
        fail("kdim/vdim apply to cross attention only; use kind='cross'")
    if isinstance(c.bias, str) and (set(c.bias) - set("qkvo") or len(set(c.bias)) != len(c.bias)):
        fail(f"bias={c.bias!r}: name the projections that have a bias with the letters q, k, v, o (e.g. 'qkv')")
    if c.clip_qkv is not None and not (math.isfinite(c.clip_qkv) and c.clip_qkv > 0):
        fail(f"clip_qkv must be a finite number > 0 (or None for off), got {c.clip_qkv!r}")


def _validate_quant_cache(c: AttentionConfig) -> None:
    """The quantized cache (``attngraph.ir.quant_specs``): a static or rolling float32 cache only."""
    if c.kv_cache_dtype is None:
        return
    if c.kv_cache_dtype not in QUANT_CACHE_DTYPES:
        _fail(f"kv_cache_dtype={c.kv_cache_dtype!r} is unknown; choose one of {QUANT_CACHE_DTYPES} (or None)")
    if c.kv_scale not in KV_SCALES:
        _fail(f"kv_scale={c.kv_scale!r} is unknown; choose one of {KV_SCALES}")
    if c.cache not in ("static", "rolling"):
        _fail(f"kv_cache_dtype={c.kv_cache_dtype!r} quantizes a fixed cache buffer: set kv_cache='static' or "
              f"'rolling' (got kv_cache={c.kv_cache!r})")
    if c.dtype != "float32":
        _fail(f"kv_cache_dtype={c.kv_cache_dtype!r} is built for float32 graphs (the scales are float32), got "
              f"dtype={c.dtype!r}: build with dtype='float32'")


def _validate_cache(c: AttentionConfig) -> None:
    fail = _fail
    if c.kv_cache not in (False, True, None, "concat", "static", "rolling"):
        fail(f"kv_cache={c.kv_cache!r} is unknown; choose False, 'concat' (or True), 'static' or 'rolling'")
    if c.cache in ("static", "rolling"):
        symbolic = c.cache == "static" and isinstance(c.max_len, str) and dims.symbols(c.max_len)
        if not symbolic and (not isinstance(c.max_len, int) or isinstance(c.max_len, bool) or c.max_len <= 0):
            fail(f"kv_cache={c.cache!r} needs max_len, the cache's fixed length (a positive int; a static cache "
                 f"may name a dim, e.g. 'max_len', fixed by the buffer each call passes), got {c.max_len!r}")
        if c.kind == "cross":
            fail(f"kv_cache={c.cache!r} caches self-attention keys; cross attention computes its keys once")
        if c.mask or c.key_padding:
            fail(f"kv_cache={c.cache!r} masks by its own cache_lengths input: drop mask/key_padding (pad by lengths)")
    elif c.max_len is not None:
        fail("max_len is the length of a static or rolling cache: set kv_cache='static' or 'rolling'")
    _validate_quant_cache(c)
    if c.cache == "rolling":
        left = c.window[0] if c.window else -1
        if not c.causal or left != c.max_len - 1:
            fail(f"a rolling cache holds the last max_len={c.max_len} keys: it needs causal attention with window "
                 f"(max_len - 1, 0) = ({c.max_len - 1}, 0), got causal={c.causal}, window={c.window}")
        if c.alibi or c.rel_bias:
            fail("a rolling cache forgets where its keys sit; ALiBi and T5 biases need those positions: use 'static'")


def _validate_masks(c: AttentionConfig) -> None:
    fail = _fail
    if c.mask not in (None, "bool", "additive"):
        hint = " (integer masks are rejected: ONNX adds them; use 'bool')" if "int" in str(c.mask) else ""
        fail(f"mask={c.mask!r} is unknown; choose None, 'bool' (True = attend) or 'additive'{hint}")
    if c.mask_shape is not None and not c.mask:
        fail("mask_shape is set but mask is None; set mask='bool' or 'additive'")
    if c.window is not None and (len(c.window) != 2 or any(int(w) < -1 for w in c.window)):
        fail(f"window must be (left, right) with each -1 (unbounded) or >= 0, got {c.window!r}")
    if c.align_to_lengths and (not c.key_padding or c.kv_cache):
        fail("align_to_lengths puts each batch row's queries at the end of its key_lengths: it needs "
             "key_padding=True and no kv_cache")
    if c.softcap is not None and not (math.isfinite(c.softcap) and c.softcap > 0):
        fail(f"softcap must be a finite number > 0 (or None for off), got {c.softcap!r}")
    if c.scale is not None and not math.isfinite(c.scale):
        fail(f"scale must be a finite float, got {c.scale!r}")
    unknown = set(c.score_outputs) - set(SCORE_STAGES)
    if unknown:
        fail(f"score_outputs {sorted(unknown)} unknown; choose from {sorted(SCORE_STAGES)}")
    if "softcapped" in c.score_outputs and not c.softcap:
        fail("score_outputs asks for 'softcapped' but softcap is off; set softcap or ask for 'scaled'")
    if "masked" in c.score_outputs and not c.has_mask:
        fail("score_outputs asks for 'masked' but the graph has no mask; ask for 'scaled' instead")


def _validate_positions(c: AttentionConfig) -> None:
    fail = _fail
    if c.rotary not in (None, "half", "interleaved"):
        fail(f"rotary={c.rotary!r} is unknown; choose 'half' (rotate_half: Llama, NeoX, Qwen, Gemma, Phi) or "
             "'interleaved' (GPT-J, ONNX interleaved=1)")
    rotary_only = {"rotary_dim": c.rotary_dim, "rope_scaling": c.rope_scaling, "position_ids": c.position_ids,
                   "rope_cache": c.rope_cache}
    if not c.rotary and any(v for v in rotary_only.values()):
        fail(f"{[k for k, v in rotary_only.items() if v]} apply to rotary embeddings; "
             "set rotary='half' or 'interleaved'")
    if c.rotary:
        rd = c.effective_rotary_dim
        if rd % 2 or not 2 <= rd <= c.qk_head_dim:
            fail(f"rotary_dim must be even and in 2..{c.qk_head_dim} (the head dim), got {rd}")
        if c.kind == "cross":
            fail("rotary embeddings apply to self and core attention: cross attention's keys have positions of "
                 "another sequence; rotate them outside the graph")
    if c.qk_norm not in (None, *QK_NORMS):
        fail(f"qk_norm={c.qk_norm!r} is unknown; choose one of {QK_NORMS}")
    if c.qk_norm and not (math.isfinite(c.qk_norm_eps) and c.qk_norm_eps > 0):
        fail(f"qk_norm_eps must be a finite number > 0, got {c.qk_norm_eps!r}")
    if c.qk_norm == "rms_full" and c.kind == "core" and c.layout == "4d":
        fail("qk_norm='rms_full' normalises the whole projection before the head split: use layout '3d' or 'rms'")
    if c.alibi not in (None, "after_scale", "before_scale"):
        fail(f"alibi={c.alibi!r} is unknown; choose 'after_scale' (Bloom, MPT) or 'before_scale' (Falcon)")
    if c.alibi_slopes is not None and (not c.alibi or len(c.alibi_slopes) != c.num_heads
                                       or not all(math.isfinite(s) for s in c.alibi_slopes)):
        fail(f"alibi_slopes must be {c.num_heads} finite numbers, with alibi set; got {c.alibi_slopes!r}")
    if c.rel_bias:
        exact = (c.rel_buckets // 2 if c.relative_bidirectional else c.rel_buckets) // 2
        if exact < 1 or c.rel_max_distance <= exact:
            fail(f"rel_bias with {c.rel_buckets} buckets ({'bidirectional' if c.relative_bidirectional else 'causal'})"
                 f" has an exact range of {exact}: rel_max_distance must exceed it, got {c.rel_max_distance}")


def _fail(msg: str) -> None:
    raise ConfigError(msg)
