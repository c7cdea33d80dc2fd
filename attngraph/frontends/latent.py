"""``latent_attention``: multi-head latent attention (MLA, DeepSeek-V2/V3) as an IR graph.

    g = attngraph.latent_attention(hidden_size=64, num_heads=4, kv_lora_rank=32, qk_nope_head_dim=16,
                                   qk_rope_head_dim=8, v_head_dim=16, q_lora_rank=24)
    g_abs = attngraph.absorb_mla(g)             # the same function, W_UK folded into the query, W_UV after

The graph is the *naive* form, as DeepSeek's papers and transformers write it:

    q  = x @ w_q                        or  rms_norm(x @ w_q_a) @ w_q_b   (query LoRA, ``q_lora_rank``)
    q -> heads (B, H, S, nope + rope) -> split: q_nope, q_rope
    x @ w_kv_a -> split: c (kv_lora_rank), k_rope (rope, one shared head); c = rms_norm(c)
    rotary on q_rope and k_rope only (the decoupled part; layout ``interleaved`` as DeepSeek, or ``half``)
    [static cache: c and k_rope written at each row's cache_lengths into past_latent / past_rope_key]
    c @ w_kv_b -> heads -> split: k_nope, v
    scores = q_nope . k_nope^T + q_rope . k_rope^T, scale 1/sqrt(nope + rope), causal, softmax, @ v, @ w_o

Only the latent ``c`` (B, 1, M, kv_lora_rank) and the rotated rope key (B, 1, M, qk_rope_head_dim) are cached;
``absorb_mla`` (``attngraph.passes.absorb_mla``) rewrites the core so a decode step reads just those.

Names: input ``x`` (batch, q_len, hidden); ``position_ids`` (int64 (batch, q_len), optional); with
``kv_cache="static"``: ``cache_lengths`` (int64 (batch,)), ``past_latent``, ``past_rope_key``; outputs ``y``
and ``present_latent``, ``present_rope_key``. Params: ``w_q`` or ``w_q_a``/``q_a_norm``/``w_q_b``, ``w_kv_a``,
``kv_a_norm``, ``w_kv_b``, ``w_o`` (``(in, out)``), ``b_q_a``/``b_kv_a``/``b_o`` with ``bias=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attngraph.errors import ConfigError
from attngraph.frontends.positions import rope_frequencies
from attngraph.ir import DType, Graph, Op, Value
from attngraph.ir.builder import GraphBuilder

__all__ = ["latent_attention"]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"latent_attention {name} must be a positive int, got {value!r}")
    return value


def latent_attention(hidden_size: int, num_heads: int, *, kv_lora_rank: int, qk_nope_head_dim: int,
                     qk_rope_head_dim: int, v_head_dim: int, q_lora_rank: int | None = None,
                     rotary: str = "interleaved", rope_theta: float = 10000.0,
                     rope_scaling: Mapping[str, Any] | None = None, scale: float | None = None,
                     norm_eps: float = 1e-6, bias: bool = False, position_ids: bool = False,
                     kv_cache: bool | str = False, max_len: int | str | None = None, dtype: str = "float32",
                     name: str = "latent_attention") -> Graph:
    """The naive MLA graph (see the module docstring). ``scale`` defaults to ``1/sqrt(qk_nope_head_dim +
    qk_rope_head_dim)`` (pass DeepSeek's YaRN ``mscale`` product here); ``rotary`` names the rope layout of the
    decoupled dims (``"interleaved"``: pairs (2k, 2k+1), DeepSeek; ``"half"``: rotate_half); ``kv_cache="static"``
    caches the latent and the rope key in fixed (batch, 1, ``max_len``, dim) buffers (``DecodeSession`` runs it)."""
    for label, v in (("hidden_size", hidden_size), ("num_heads", num_heads), ("kv_lora_rank", kv_lora_rank),
                     ("qk_nope_head_dim", qk_nope_head_dim), ("qk_rope_head_dim", qk_rope_head_dim),
                     ("v_head_dim", v_head_dim)):
        _positive(label, v)
    if q_lora_rank is not None:
        _positive("q_lora_rank", q_lora_rank)
    if qk_rope_head_dim % 2:
        raise ConfigError(f"latent_attention qk_rope_head_dim must be even (rotary pairs), got {qk_rope_head_dim}")
    if rotary not in ("interleaved", "half"):
        raise ConfigError(f"latent_attention rotary must be 'interleaved' (DeepSeek) or 'half', got {rotary!r}")
    if kv_cache not in (False, "static"):
        raise ConfigError(f"latent_attention kv_cache must be False or 'static', got {kv_cache!r}")
    if kv_cache and max_len is None:
        raise ConfigError("latent_attention kv_cache='static' needs max_len (an int, or a dim name)")
    dt = DType.parse(dtype)
    h, nope, dr, r, dv = num_heads, qk_nope_head_dim, qk_rope_head_dim, kv_lora_rank, v_head_dim
    b = GraphBuilder(name)
    x = b.input("x", dt, ("batch", "q_len", hidden_size))

    def linear(inp: Value, tag: str, n_in: int, n_out: int, with_bias: bool, out: str | None = None) -> Value:
        w = b.param(f"w_{tag}", dt, (n_in, n_out))
        extra = (b.param(f"b_{tag}", dt, (n_out,)),) if with_bias else ()
        return b.op(Op.LINEAR, inp, w, *extra, name=out or tag)

    def norm(inp: Value, tag: str, width: int) -> Value:
        return b.op(Op.RMS_NORM, inp, b.param(tag, dt, (width,)), eps=float(norm_eps), name=f"{tag}ed")

    if q_lora_rank is None:
        q = linear(x, "q", hidden_size, h * (nope + dr), False)
    else:
        q = linear(norm(linear(x, "q_a", hidden_size, q_lora_rank, bias), "q_a_norm", q_lora_rank),
                   "q_b", q_lora_rank, h * (nope + dr), False)
    q_nope, q_rope = b.op(Op.SPLIT, b.op(Op.SPLIT_HEADS, q, heads=h, name="qh"), axis=3, sizes=(nope, dr),
                          name=("q_nope", "q_rope"))
    c, k_rope = b.op(Op.SPLIT, linear(x, "kv_a", hidden_size, r + dr, bias), axis=2, sizes=(r, dr),
                     name=("c_kv", "k_rope_flat"))
    c = b.op(Op.SPLIT_HEADS, norm(c, "kv_a_norm", r), heads=1, name="latent_new")
    k_rope = b.op(Op.SPLIT_HEADS, k_rope, heads=1, name="k_rope")
    lengths = b.input("cache_lengths", DType.INT64, ("batch",)) if kv_cache else None
    q_rope, k_rope = _rotate(b, q_rope, k_rope, rotary, dr, rope_theta, rope_scaling, position_ids, lengths)
    mask_ops: tuple[Value, ...] = ()
    if kv_cache:
        shape = ("batch", 1, max_len)
        c = b.op(Op.CACHE_UPDATE, b.input("past_latent", dt, shape + (r,)), c, lengths, name="present_latent")
        k_rope = b.op(Op.CACHE_UPDATE, b.input("past_rope_key", dt, shape + (dr,)), k_rope, lengths,
                      name="present_rope_key")
        mask_ops = (b.op(Op.ADD, lengths, b.op(Op.CONST, value="q_len", dtype="int64", name="new_tokens"),
                         name="kv_lengths"),)
    keys = c.type.shape[2]
    kv = linear(b.op(Op.RESHAPE, c, shape=("batch", keys, r), name="latent_rows"), "kv_b", r, h * (nope + dv), False)
    k_nope, v = b.op(Op.SPLIT, b.op(Op.SPLIT_HEADS, kv, heads=h, name="kvh"), axis=3, sizes=(nope, dv),
                     name=("k_nope", "v"))
    scores = b.op(Op.ADD, b.op(Op.MATMUL, q_nope, k_nope, transpose_b=True, name="nope_scores"),
                  b.op(Op.MATMUL, q_rope, k_rope, transpose_b=True, name="rope_scores"), name="scores")
    value = 1.0 / math.sqrt(nope + dr) if scale is None else float(scale)
    scores = b.op(Op.SCALE, scores, value=value, name="qk_scaled")
    where = {"align": "lengths", "operands": ("lengths",)} if kv_cache else {}
    scores = b.op(Op.MASK, scores, *mask_ops, causal=True, name="qk_masked", **where)
    ctx = b.op(Op.WEIGHTED_SUM, b.op(Op.SOFTMAX, scores, name="attn_weights"), v, name="context")
    y = linear(b.op(Op.MERGE_HEADS, ctx, name="merged"), "o", h * dv, hidden_size, bias, out="y")
    return b.build([y] + ([c, k_rope] if kv_cache else []))


def _rotate(b: GraphBuilder, q: Value, k: Value, layout: str, dr: int, theta: float, scaling, position_ids: bool,
            lengths: Value | None) -> tuple[Value, Value]:
    """Rotary on the decoupled dims only: token i at ``position_ids``, ``cache_lengths[b] + i`` or ``i``."""
    operands: tuple[Value, ...] = ()
    if position_ids:
        operands = (b.input("position_ids", DType.INT64, ("batch", "q_len")),)
    elif lengths is not None:
        steps = b.op(Op.RESHAPE, b.op(Op.IOTA, length="q_len"), shape=(1, "q_len"), name="token_steps")
        starts = b.op(Op.RESHAPE, lengths, shape=("batch", 1), name="row_starts")
        operands = (b.op(Op.ADD, starts, steps, name="positions"),)
    freqs, attention_scaling = rope_frequencies(dr, theta, scaling)
    attrs = {"layout": layout, "rotary_dim": dr, "inv_freq": freqs, "attention_scaling": attention_scaling,
             "operands": ("positions",) if operands else ()}
    return (b.op(Op.ROTARY, q, *operands, name="q_rope_rotated", **attrs),
            b.op(Op.ROTARY, k, *operands, name="k_rope_rotated", **attrs))
