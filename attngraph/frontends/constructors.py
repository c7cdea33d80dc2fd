"""High-level constructors: self-, cross-, causal and core-only attention as IR graphs.

Every knob lives in one frozen ``AttentionConfig``; ``build_attention(config)`` lowers it to the
primitive chain (linear, split_heads, [concat], matmul, scale, [softcap], [mask], softmax,
weighted_sum, merge_heads, linear). Passes can then fuse it (``attngraph.passes``).

Input names: ``x`` (self), ``query``/``key``/``value`` (cross), ``q``/``k``/``v`` (core);
``attn_mask`` (bool: True = attend, or additive float), ``key_lengths`` (int64, one per batch),
``past_key``/``past_value``. Outputs: ``y``, ``present_key``/``present_value`` with a cache, and
the requested score stages ``qk_scaled``, ``qk_softcapped``, ``qk_masked``, ``attn_weights``.
Symbolic dims: ``batch``, ``q_len``, ``kv_len`` (cross/core), ``past_len`` (with a cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from attngraph.errors import ConfigError
from attngraph.ir import DType, Graph, Op, Value, dims
from attngraph.ir.builder import GraphBuilder

SCORE_STAGES = {"scaled": "qk_scaled", "softcapped": "qk_softcapped", "masked": "qk_masked", "weights": "attn_weights"}
KINDS = ("self", "cross", "core")


@dataclass(frozen=True)
class AttentionConfig:
    """Everything that shapes one attention graph. Validated on construction.

    ``kind``: "self" (one input x), "cross" (query attends to separate key/value inputs of widths
    ``kdim``/``vdim``) or "core" (already projected q/k/v in the ONNX ``Attention`` layouts,
    ``layout`` "4d" = (B, H, S, D) or "3d" = (B, S, H*D)).
    """

    kind: str = "self"
    num_heads: int = 1
    d_model: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    v_head_dim: int | None = None
    kdim: int | None = None
    vdim: int | None = None
    bias: bool = True
    causal: bool = False
    window: tuple[int, int] | None = None
    key_padding: bool = False
    align_to_lengths: bool = False
    mask: str | None = None
    mask_shape: tuple[dims.Dim, ...] | None = None
    scale: float | None = None
    softcap: float | None = None
    clip_qkv: float | None = None
    kv_cache: bool = False
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
    def has_mask(self) -> bool:
        return bool(self.causal or self.window or self.key_padding or self.mask)

    def with_(self, **changes) -> AttentionConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _validate(c: AttentionConfig) -> None:
    def fail(msg: str) -> None:
        raise ConfigError(msg)

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
    if c.softcap is not None and not c.softcap > 0:
        fail(f"softcap must be > 0 (or None for off), got {c.softcap!r}")
    if c.clip_qkv is not None and not (math.isfinite(c.clip_qkv) and c.clip_qkv > 0):
        fail(f"clip_qkv must be a finite number > 0 (or None for off), got {c.clip_qkv!r}")
    if c.scale is not None and not math.isfinite(c.scale):
        fail(f"scale must be a finite float, got {c.scale!r}")
    unknown = set(c.score_outputs) - set(SCORE_STAGES)
    if unknown:
        fail(f"score_outputs {sorted(unknown)} unknown; choose from {sorted(SCORE_STAGES)}")
    if "softcapped" in c.score_outputs and not c.softcap:
        fail("score_outputs asks for 'softcapped' but softcap is off; set softcap or ask for 'scaled'")
    if "masked" in c.score_outputs and not c.has_mask:
        fail("score_outputs asks for 'masked' but the graph has no mask; ask for 'scaled' instead")
    dtype = DType.parse(c.dtype)
    if not dtype.is_float:
        fail(f"dtype must be a float type, got {c.dtype!r}")


def build_attention(config: AttentionConfig) -> Graph:
    """The verified primitive-chain graph for ``config``."""
    c = config
    b = GraphBuilder(c.name or f"{'causal_' if c.causal and c.kind == 'self' else ''}{c.kind}_attention")
    dt = DType.parse(c.dtype)
    hq, hkv, d, dv = c.num_heads, c.kv_heads, c.qk_head_dim, c.value_head_dim
    kv_len = "q_len" if c.kind == "self" else "kv_len"
    q, k, v = _project_inputs(b, c, dt, kv_len)
    outputs: list[Value] = []
    if c.kv_cache:
        past_k = b.input("past_key", dt, ("batch", hkv, "past_len", d))
        past_v = b.input("past_value", dt, ("batch", hkv, "past_len", dv))
        k = b.op(Op.CONCAT, past_k, k, axis=2, name="present_key")
        v = b.op(Op.CONCAT, past_v, v, axis=2, name="present_value")
    kv_total = dims.add("past_len", kv_len) if c.kv_cache else kv_len
    scores = b.op(Op.MATMUL, q, k, transpose_b=True, name="scores")
    scores = b.op(Op.SCALE, scores, value=c.effective_scale, name="qk_scaled")
    stages = {"scaled": scores}
    if c.softcap:
        scores = stages["softcapped"] = b.op(Op.SOFTCAP, scores, cap=float(c.softcap), name="qk_softcapped")
    if c.has_mask:
        scores = stages["masked"] = _mask(b, c, dt, scores, kv_total)
    probs = stages["weights"] = b.op(Op.SOFTMAX, scores, name="attn_weights")
    core4d = c.kind == "core" and c.layout == "4d"
    ctx = b.op(Op.WEIGHTED_SUM, probs, v, name="y" if core4d else "context")
    y = _project_output(b, c, dt, ctx, hq * dv)
    outputs.append(y)
    if c.kv_cache:
        outputs += [k, v]
    outputs += [stages[s] for s in SCORE_STAGES if s in c.score_outputs]
    return b.build(outputs)


def _linear(b: GraphBuilder, c: AttentionConfig, dt: DType, x: Value, tag: str, n_in: int, n_out: int, name: str):
    w = b.param(f"w_{tag}", dt, (n_in, n_out))
    args = (x, w, b.param(f"b_{tag}", dt, (n_out,))) if c.bias else (x, w)
    return b.op(Op.LINEAR, *args, name=name)


def _project_inputs(b: GraphBuilder, c: AttentionConfig, dt: DType, kv_len: str):
    hq, hkv, d, dv = c.num_heads, c.kv_heads, c.qk_head_dim, c.value_head_dim
    if c.kind == "core" and c.layout == "4d":
        return _clamped(b, c, (b.input("q", dt, ("batch", hq, "q_len", d)), b.input("k", dt, ("batch", hkv, kv_len, d)),
                               b.input("v", dt, ("batch", hkv, kv_len, dv))))
    if c.kind == "core":
        q = b.input("q", dt, ("batch", "q_len", hq * d))
        k = b.input("k", dt, ("batch", kv_len, hkv * d))
        v = b.input("v", dt, ("batch", kv_len, hkv * dv))
    elif c.kind == "self":
        x = b.input("x", dt, ("batch", "q_len", c.d_model))
        q = _linear(b, c, dt, x, "q", c.d_model, hq * d, "q")
        k = _linear(b, c, dt, x, "k", c.d_model, hkv * d, "k")
        v = _linear(b, c, dt, x, "v", c.d_model, hkv * dv, "v")
    else:
        kdim, vdim = c.kdim or c.d_model, c.vdim or c.d_model
        xq = b.input("query", dt, ("batch", "q_len", c.d_model))
        xk = b.input("key", dt, ("batch", kv_len, kdim))
        xv = b.input("value", dt, ("batch", kv_len, vdim))
        q = _linear(b, c, dt, xq, "q", c.d_model, hq * d, "q")
        k = _linear(b, c, dt, xk, "k", kdim, hkv * d, "k")
        v = _linear(b, c, dt, xv, "v", vdim, hkv * dv, "v")
    q, k, v = _clamped(b, c, (q, k, v))
    return (b.op(Op.SPLIT_HEADS, q, heads=hq, name="qh"), b.op(Op.SPLIT_HEADS, k, heads=hkv, name="kh"),
            b.op(Op.SPLIT_HEADS, v, heads=hkv, name="vh"))


def _clamped(b: GraphBuilder, c: AttentionConfig, qkv: tuple[Value, Value, Value]) -> tuple[Value, Value, Value]:
    """MPT's ``clip_qkv``: the projected Q, K and V clamped to [-c, c] before the head split."""
    if not c.clip_qkv:
        return qkv
    low, high = -float(c.clip_qkv), float(c.clip_qkv)
    return tuple(b.op(Op.CLAMP, t, low=low, high=high, name=f"{t.name}_clamped") for t in qkv)


def _mask(b: GraphBuilder, c: AttentionConfig, dt: DType, scores: Value, kv_total: dims.Dim) -> Value:
    operands, kinds = [], []
    if c.mask:
        shape = c.mask_shape if c.mask_shape is not None else ("q_len", kv_total)
        kind = "bool" if c.mask == "bool" else "bias"
        operands.append(b.input("attn_mask", DType.BOOL if kind == "bool" else dt, shape))
        kinds.append(kind)
    if c.key_padding:
        operands.append(b.input("key_lengths", DType.INT64, ("batch",)))
        kinds.append("lengths")
    left, right = c.window if c.window else (-1, -1)
    return b.op(Op.MASK, scores, *operands, causal=c.causal, offset="past_len" if c.kv_cache else 0,
                align="lengths" if c.align_to_lengths else "start",
                window_left=int(left), window_right=int(right), operands=tuple(kinds), name="qk_masked")


def _project_output(b: GraphBuilder, c: AttentionConfig, dt: DType, ctx: Value, width: int) -> Value:
    if c.kind == "core":
        return ctx if c.layout == "4d" else b.op(Op.MERGE_HEADS, ctx, name="y")
    merged = b.op(Op.MERGE_HEADS, ctx, name="merged")
    return _linear(b, c, dt, merged, "o", width, c.d_model, "y")


# ---- the constructors users call -------------------------------------------------------------

def self_attention(d_model: int, num_heads: int, *, return_weights: bool = False, **knobs) -> Graph:
    """Multi-head self-attention over ``x`` (batch, q_len, d_model). Knobs: see ``AttentionConfig``."""
    return build_attention(_config("self", d_model, num_heads, return_weights, knobs))


def causal_self_attention(d_model: int, num_heads: int, *, return_weights: bool = False, **knobs) -> Graph:
    """Decoder-style self-attention: query i sees keys j <= i (+ past length with ``kv_cache=True``)."""
    return build_attention(_config("self", d_model, num_heads, return_weights, {**knobs, "causal": True}))


def cross_attention(d_model: int, num_heads: int, *, return_weights: bool = False, **knobs) -> Graph:
    """``query`` (batch, q_len, d_model) attends to ``key``/``value`` (batch, kv_len, kdim/vdim)."""
    return build_attention(_config("cross", d_model, num_heads, return_weights, knobs))


def core_attention(num_heads: int, head_dim: int, *, return_weights: bool = False, **knobs) -> Graph:
    """Attention on projected q/k/v in the ONNX layouts (``layout="4d"`` or ``"3d"``), no projections."""
    return build_attention(_config("core", None, num_heads, return_weights, {**knobs, "head_dim": head_dim}))


def _config(kind: str, d_model: int | None, num_heads: int, return_weights: bool, knobs: dict) -> AttentionConfig:
    stages = tuple(knobs.pop("score_outputs", ()))
    if return_weights and "weights" not in stages:
        stages += ("weights",)
    try:
        return AttentionConfig(kind=kind, d_model=d_model, num_heads=num_heads, score_outputs=stages, **knobs)
    except TypeError as e:  # an unknown keyword: name the valid ones
        known = sorted(AttentionConfig.__dataclass_fields__)
        raise ConfigError(f"{e}; valid options: {', '.join(known)}") from None
