"""High-level constructors: self-, cross-, causal and core-only attention as IR graphs.

Every knob lives in one frozen ``AttentionConfig`` (``attngraph.frontends.config``);
``build_attention(config)`` lowers it to the primitive chain:

    linear -> [clamp] -> [rms_norm over the projection] -> split_heads -> [rms_norm per head] -> [rotary]
    -> [concat with the cache] -> matmul -> [alibi] -> scale -> [softcap] -> [alibi] -> [rel_bias] -> [mask]
    -> softmax(., [sinks]) -> weighted_sum -> merge_heads -> linear

Passes can then fuse the core (``attngraph.passes``). Input names: ``x`` (self), ``query``/``key``/
``value`` (cross), ``q``/``k``/``v`` (core); ``attn_mask`` (bool: True = attend, or additive float),
``key_lengths`` (int64, one per batch row), ``position_ids`` (int64 (batch, q_len)), ``cos_cache``/
``sin_cache`` ((rope_positions, rotary_dim / 2)), ``past_key``/``past_value``. Params: ``w_q`` ...
``b_o`` (linear weights are (in, out)), ``q_norm``/``k_norm``, ``rel_table`` ((buckets, heads)),
``sinks`` ((heads,)). Outputs: ``y``, ``present_key``/``present_value`` with a cache, and the requested
score stages. Symbolic dims: ``batch``, ``q_len``, ``kv_len`` (cross/core), ``past_len`` (a cache).
"""

from __future__ import annotations

from attngraph.errors import ConfigError
from attngraph.frontends.config import SCORE_STAGES, AttentionConfig
from attngraph.frontends.positions import alibi_slopes, rope_frequencies
from attngraph.frontends.quant_cache import write_quant_cache
from attngraph.ir import DType, Graph, Op, Value, dims
from attngraph.ir.builder import GraphBuilder

__all__ = ["SCORE_STAGES", "AttentionConfig", "build_attention", "causal_self_attention", "core_attention",
           "cross_attention", "self_attention"]


def build_attention(config: AttentionConfig) -> Graph:
    """The verified primitive-chain graph for ``config``."""
    c = config
    b = GraphBuilder(c.name or f"{'causal_' if c.causal and c.kind == 'self' else ''}{c.kind}_attention")
    dt = DType.parse(c.dtype)
    hkv, d, dv = c.kv_heads, c.qk_head_dim, c.value_head_dim
    # a static (or rolling) cache appends the current tokens: core attention's new keys are the queries' length
    kv_len = "q_len" if c.kind == "self" or c.cache in ("static", "rolling") else "kv_len"
    q, k, v = _project_inputs(b, c, dt, kv_len)
    q, k = _normalise_heads(b, c, dt, q, k)
    cache_lengths = b.input("cache_lengths", DType.INT64, ("batch",)) if c.cache in ("static", "rolling") else None
    q, k = _rotate(b, c, dt, q, k, cache_lengths)
    mask_inputs = {}
    cache_outputs: list[Value] = []
    if c.cache == "concat":
        past_k = b.input("past_key", dt, ("batch", hkv, "past_len", d))
        past_v = b.input("past_value", dt, ("batch", hkv, "past_len", dv))
        k = b.op(Op.CONCAT, past_k, k, axis=2, name="present_key")
        v = b.op(Op.CONCAT, past_v, v, axis=2, name="present_value")
        cache_outputs = [k, v]
    elif cache_lengths is not None:
        k, v, mask_inputs["lengths"], cache_outputs = _write_cache(b, c, dt, k, v, cache_lengths)
    kv_total = dims.add("past_len", kv_len) if c.cache == "concat" else kv_len
    mask_inputs.update(_mask_inputs(b, c, dt, kv_total))
    stages: dict[str, Value] = {}
    scores = _scores(b, c, dt, q, k, mask_inputs, stages)
    if c.has_mask:
        scores = stages["masked"] = _mask(b, c, scores, mask_inputs)
    sinks = (b.param("sinks", dt, (c.num_heads,)),) if c.sinks else ()
    probs = stages["weights"] = b.op(Op.SOFTMAX, scores, *sinks, name="attn_weights")
    core4d = c.kind == "core" and c.layout == "4d"
    ctx = b.op(Op.WEIGHTED_SUM, probs, v, name="y" if core4d else "context")
    outputs = [_project_output(b, c, dt, ctx, c.num_heads * dv)]
    outputs += cache_outputs
    outputs += [stages[s] for s in SCORE_STAGES if s in c.score_outputs]
    return b.build(outputs)


def _linear(b: GraphBuilder, c: AttentionConfig, dt: DType, x: Value, tag: str, n_in: int, n_out: int, name: str):
    w = b.param(f"w_{tag}", dt, (n_in, n_out))
    args = (x, w, b.param(f"b_{tag}", dt, (n_out,))) if c.has_bias(tag) else (x, w)
    return b.op(Op.LINEAR, *args, name=name)


def _project_inputs(b: GraphBuilder, c: AttentionConfig, dt: DType, kv_len: str):
    """Q, K, V as (B, H, S, D): the inputs (core) or their projections, clamped and split into heads."""
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
    if c.qk_norm == "rms_full":  # OLMo 2: one RMSNorm over the whole projection, before the head split
        q = b.op(Op.RMS_NORM, q, b.param("q_norm", dt, (hq * d,)), eps=float(c.qk_norm_eps), name="q_normed")
        k = b.op(Op.RMS_NORM, k, b.param("k_norm", dt, (hkv * d,)), eps=float(c.qk_norm_eps), name="k_normed")
    return (b.op(Op.SPLIT_HEADS, q, heads=hq, name="qh"), b.op(Op.SPLIT_HEADS, k, heads=hkv, name="kh"),
            b.op(Op.SPLIT_HEADS, v, heads=hkv, name="vh"))


def _clamped(b: GraphBuilder, c: AttentionConfig, qkv: tuple[Value, Value, Value]) -> tuple[Value, Value, Value]:
    """MPT's ``clip_qkv``: the projected Q, K and V clamped to [-c, c] before the head split."""
    if not c.clip_qkv:
        return qkv
    low, high = -float(c.clip_qkv), float(c.clip_qkv)
    return tuple(b.op(Op.CLAMP, t, low=low, high=high, name=f"{t.name}_clamped") for t in qkv)


def _normalise_heads(b: GraphBuilder, c: AttentionConfig, dt: DType, q: Value, k: Value) -> tuple[Value, Value]:
    """QK-norm (Qwen3, Gemma 3): RMSNorm over each head's dims of Q and K, one weight shared by the heads."""
    if c.qk_norm not in ("rms", "rms_plus_one"):
        return q, k
    plus_one = c.qk_norm == "rms_plus_one"
    eps = float(c.qk_norm_eps)
    q = b.op(Op.RMS_NORM, q, b.param("q_norm", dt, (c.qk_head_dim,)), eps=eps, add_one=plus_one, name="q_normed")
    k = b.op(Op.RMS_NORM, k, b.param("k_norm", dt, (c.qk_head_dim,)), eps=eps, add_one=plus_one, name="k_normed")
    return q, k


def _rotate(b: GraphBuilder, c: AttentionConfig, dt: DType, q: Value, k: Value,
            cache_lengths: Value | None) -> tuple[Value, Value]:
    """Rotary embeddings on Q and the new K (before the cache: cached keys are stored rotated). Token i sits
    at position ``past_len + i`` (concat cache), ``cache_lengths[b] + i`` (static cache) or ``position_ids``."""
    if not c.rotary:
        return q, k
    rd = c.effective_rotary_dim
    operands, kinds = [], []
    if c.position_ids:
        operands.append(b.input("position_ids", DType.INT64, ("batch", "q_len")))
        kinds.append("positions")
    elif cache_lengths is not None:  # each row's tokens continue from its own cached length
        steps = b.op(Op.RESHAPE, b.op(Op.IOTA, length="q_len"), shape=(1, "q_len"), name="token_steps")
        starts = b.op(Op.RESHAPE, cache_lengths, shape=("batch", 1), name="row_starts")
        operands.append(b.op(Op.ADD, starts, steps, name="positions"))
        kinds.append("positions")
    attrs = {"layout": c.rotary, "rotary_dim": rd, "offset": "past_len" if c.cache == "concat" else 0}
    if c.rope_cache:
        operands += [b.input("cos_cache", dt, ("rope_positions", rd // 2)),
                     b.input("sin_cache", dt, ("rope_positions", rd // 2))]
        kinds.append("cos_sin")
    else:
        freqs, scaling = rope_frequencies(rd, c.rope_theta, c.rope_scaling)
        attrs.update(inv_freq=freqs, attention_scaling=scaling)
    q = b.op(Op.ROTARY, q, *operands, operands=tuple(kinds), name="q_rotated", **attrs)
    k = b.op(Op.ROTARY, k, *operands, operands=tuple(kinds), name="k_rotated", **attrs)
    return q, k


def _write_cache(b: GraphBuilder, c: AttentionConfig, dt: DType, k: Value, v: Value, lengths: Value):
    """The static (or rolling) cache: the new keys and values written into fixed buffers at each row's
    ``cache_lengths``; attention then reads keys [0, lengths + q_len) of the buffer (all of a full rolling one)."""
    mode = "linear" if c.cache == "static" else "circular"
    if c.kv_cache_dtype:  # quantized at write time, read back dequantized (frontends.quant_cache)
        k, v, cache_outputs = write_quant_cache(b, c, k, v, lengths, mode)
    else:
        shape = ("batch", c.kv_heads, c.max_len if isinstance(c.max_len, str) else int(c.max_len))
        past_k = b.input("past_key", dt, shape + (c.qk_head_dim,))
        past_v = b.input("past_value", dt, shape + (c.value_head_dim,))
        k = b.op(Op.CACHE_UPDATE, past_k, k, lengths, mode=mode, name="present_key")
        v = b.op(Op.CACHE_UPDATE, past_v, v, lengths, mode=mode, name="present_value")
        cache_outputs = [k, v]
    total = b.op(Op.ADD, lengths, b.op(Op.CONST, value="q_len", dtype="int64", name="new_tokens"), name="kv_lengths")
    if c.cache == "rolling":
        total = b.op(Op.MINIMUM, total, b.op(Op.CONST, value=int(c.max_len), dtype="int64", name="max_len"),
                     name="kv_lengths_held")
    return k, v, total, cache_outputs


def _mask_inputs(b: GraphBuilder, c: AttentionConfig, dt: DType, kv_total: dims.Dim) -> dict[str, Value]:
    """The mask's operands, declared as graph inputs: ``attn_mask`` (bool or bias) and ``key_lengths``."""
    found = {}
    if c.mask:
        shape = c.mask_shape if c.mask_shape is not None else ("q_len", kv_total)
        kind = "bool" if c.mask == "bool" else "bias"
        found[kind] = b.input("attn_mask", DType.BOOL if kind == "bool" else dt, shape)
    if c.key_padding:
        found["lengths"] = b.input("key_lengths", DType.INT64, ("batch",))
    return found


def _placement(c: AttentionConfig, mask_inputs: dict[str, Value]) -> tuple[dict, tuple[Value, ...]]:
    """Where the queries sit, for the mask and the position biases alike: attributes and extra input."""
    if c.align_to_lengths or c.cache in ("static", "rolling"):  # queries end each row's valid keys
        return {"offset": 0, "align": "lengths"}, (mask_inputs["lengths"],)
    return {"offset": "past_len" if c.cache == "concat" else 0, "align": "start"}, ()


def _scores(b: GraphBuilder, c: AttentionConfig, dt: DType, q: Value, k: Value, mask_inputs: dict[str, Value],
            stages: dict[str, Value]) -> Value:
    """Q.K^T, scaled, soft-capped and biased by position (ALiBi, T5), in the IR's order."""
    where, lengths = _placement(c, mask_inputs)
    slopes = tuple(c.alibi_slopes) if c.alibi_slopes else alibi_slopes(c.num_heads)
    scores = b.op(Op.MATMUL, q, k, transpose_b=True, name="scores")
    if c.alibi == "before_scale":  # Falcon: (q.k + alibi) * scale
        scores = b.op(Op.ALIBI, scores, *lengths, slopes=slopes, name="qk_alibi", **where)
    scores = stages["scaled"] = b.op(Op.SCALE, scores, value=c.effective_scale, name="qk_scaled")
    if c.softcap:
        scores = stages["softcapped"] = b.op(Op.SOFTCAP, scores, cap=float(c.softcap), name="qk_softcapped")
    if c.alibi == "after_scale":  # Bloom, MPT: q.k * scale + alibi
        scores = b.op(Op.ALIBI, scores, *lengths, slopes=slopes, name="qk_alibi", **where)
    if c.rel_bias:
        table = b.param("rel_table", dt, (c.rel_buckets, c.num_heads))
        scores = b.op(Op.REL_BIAS, scores, table, *lengths, num_buckets=c.rel_buckets,
                      max_distance=c.rel_max_distance, bidirectional=c.relative_bidirectional, name="qk_rel", **where)
    return scores


def _mask(b: GraphBuilder, c: AttentionConfig, scores: Value, mask_inputs: dict[str, Value]) -> Value:
    kinds = tuple(k for k in ("bool", "bias", "lengths") if k in mask_inputs)
    where, _ = _placement(c, mask_inputs)
    left, right = c.window if c.window else (-1, -1)
    return b.op(Op.MASK, scores, *(mask_inputs[k] for k in kinds), causal=c.causal, window_left=int(left),
                window_right=int(right), operands=kinds, name="qk_masked", **where)


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
