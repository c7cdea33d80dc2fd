"""Graphs on a paged KV cache (vLLM's block pool): the attention core, and a causal self-attention layer.

    g = attngraph.paged_self_attention(512, 8, num_kv_heads=2, block_size=16, num_blocks=256, max_blocks=64)
    session = attngraph.PagedDecodeSession(g, "numba", weights=w)   # runs sequences of their own lengths

Inputs: ``key_cache`` / ``value_cache`` (the pools: ``(num_blocks, block_size, kv_heads, head_dim)`` with
``layout="NHD"``, ``(num_blocks, kv_heads, block_size, head_dim)`` with ``"HND"``), ``block_table`` int32
``(batch, max_blocks)``, ``cache_lengths`` int64 ``(batch,)`` (each row's cached tokens before this call). The new
tokens are written at positions ``cache_lengths[b] + i`` through the table, then every row attends over its
``cache_lengths[b] + q_len`` keys, causal bottom-right (``attngraph.ir.paged_specs``). Outputs: ``y`` and
``present_key_cache`` / ``present_value_cache`` (the pools after the write; written in place by the eager
backends). ``paged_attention`` takes ``q``/``k``/``v`` in attngraph's head layout ``(batch, heads, q_len, dim)``;
``paged_self_attention`` projects ``x`` ``(batch, q_len, d_model)`` and may rotate Q/K (``rotary``) at the
tokens' positions.
"""

from __future__ import annotations

import math

from attngraph.errors import ConfigError
from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import _project_inputs, _project_output, _rotate
from attngraph.ir import DType, Graph, Op, Value
from attngraph.ir.builder import GraphBuilder
from attngraph.ir.paged_specs import PAGED_LAYOUTS

__all__ = ["paged_attention", "paged_self_attention"]


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"paged attention {name} must be a positive int, got {value!r}")
    return value


def _pool_shape(layout: str, num_blocks: int, block_size: int, heads: int, dim: int) -> tuple[int, ...]:
    if layout not in PAGED_LAYOUTS:
        raise ConfigError(f"paged attention layout must be one of {PAGED_LAYOUTS}, got {layout!r}. Fix: 'NHD' for "
                          "vLLM's (num_blocks, block_size, kv_heads, head_dim), 'HND' for (num_blocks, kv_heads, "
                          "block_size, head_dim)")
    return (num_blocks, block_size, heads, dim) if layout == "NHD" else (num_blocks, heads, block_size, dim)


def paged_core(b: GraphBuilder, q: Value, k: Value, v: Value, *, block_size: int, num_blocks: int, max_blocks: int,
               layout: str, scale: float, softcap: float, causal: bool, dtype: DType,
               lengths: Value | None = None, out_name: str = "context") -> tuple[Value, Value, Value]:
    """Declare the pool, table and (unless given) lengths inputs; write ``k``/``v``; attend. Returns (context,
    present key cache, present value cache)."""
    hkv, d, dv = k.type.shape[1], k.type.shape[3], v.type.shape[3]
    nb, bs, mb = (_positive(n, x) for n, x in (("num_blocks", num_blocks), ("block_size", block_size),
                                               ("max_blocks", max_blocks)))
    key_cache = b.input("key_cache", dtype, _pool_shape(layout, nb, bs, hkv, d))
    value_cache = b.input("value_cache", dtype, _pool_shape(layout, nb, bs, hkv, dv))
    table = b.input("block_table", DType.INT32, ("batch", mb))
    if lengths is None:
        lengths = b.input("cache_lengths", DType.INT64, ("batch",))
    pk = b.op(Op.PAGED_CACHE_UPDATE, key_cache, k, table, lengths, layout=layout, name="present_key_cache")
    pv = b.op(Op.PAGED_CACHE_UPDATE, value_cache, v, table, lengths, layout=layout, name="present_value_cache")
    seq_lens = b.op(Op.ADD, lengths, b.op(Op.CONST, value="q_len", dtype="int64", name="new_tokens"), name="seq_lens")
    ctx = b.op(Op.PAGED_ATTENTION, q, pk, pv, table, seq_lens, scale=float(scale), softcap=float(softcap),
               causal=bool(causal), layout=layout, name=out_name)
    return ctx, pk, pv


def paged_attention(num_heads: int, head_dim: int, *, block_size: int, num_blocks: int, max_blocks: int,
                    num_kv_heads: int | None = None, v_head_dim: int | None = None, layout: str = "NHD",
                    scale: float | None = None, softcap: float | None = None, causal: bool = True,
                    dtype: str = "float32", name: str = "paged_attention") -> Graph:
    """The attention core on a paged cache: inputs ``q`` (batch, num_heads, q_len, head_dim), ``k``/``v`` (batch,
    num_kv_heads, q_len, head_dim / v_head_dim), the pools, ``block_table`` and ``cache_lengths`` (module
    docstring); outputs ``y`` (batch, num_heads, q_len, v_head_dim) and the written pools. ``scale`` defaults to
    ``1/sqrt(head_dim)``; ``softcap`` caps the scaled scores (Gemma 2)."""
    hq, d = _positive("num_heads", num_heads), _positive("head_dim", head_dim)
    hkv = _positive("num_kv_heads", num_kv_heads if num_kv_heads is not None else hq)
    dv = _positive("v_head_dim", v_head_dim if v_head_dim is not None else d)
    if hq % hkv:
        raise ConfigError(f"paged attention num_heads ({hq}) must be a multiple of num_kv_heads ({hkv})")
    dt = DType.parse(dtype)
    b = GraphBuilder(name)
    q = b.input("q", dt, ("batch", hq, "q_len", d))
    k = b.input("k", dt, ("batch", hkv, "q_len", d))
    v = b.input("v", dt, ("batch", hkv, "q_len", dv))
    ctx, pk, pv = paged_core(b, q, k, v, block_size=block_size, num_blocks=num_blocks, max_blocks=max_blocks,
                             layout=layout, scale=scale if scale is not None else 1 / math.sqrt(d),
                             softcap=softcap or 0.0, causal=causal, dtype=dt, out_name="y")
    return b.build([ctx, pk, pv])


def paged_self_attention(d_model: int, num_heads: int, *, block_size: int, num_blocks: int, max_blocks: int,
                         num_kv_heads: int | None = None, layout: str = "NHD", rotary: str | None = None,
                         bias: bool | str = True, softcap: float | None = None, dtype: str = "float32",
                         name: str = "paged_self_attention", **knobs) -> Graph:
    """Causal self-attention of ``x`` (batch, q_len, d_model) on a paged cache (module docstring). ``rotary``
    ("half"/"interleaved") rotates Q and the new K at positions ``cache_lengths[b] + i``; further ``knobs``
    (``rotary_dim``, ``rope_theta``, ``head_dim``, ...) are ``AttentionConfig``'s."""
    try:
        c = AttentionConfig(kind="self", d_model=d_model, num_heads=num_heads, num_kv_heads=num_kv_heads,
                            rotary=rotary, bias=bias, causal=True, dtype=dtype, name=name, **knobs)
    except TypeError as e:
        raise ConfigError(f"paged_self_attention: {e}") from None
    dt = DType.parse(c.dtype)
    b = GraphBuilder(name)
    q, k, v = _project_inputs(b, c, dt, "q_len")
    lengths = b.input("cache_lengths", DType.INT64, ("batch",))
    q, k = _rotate(b, c, dt, q, k, lengths)  # at positions cache_lengths[b] + i (nothing without rotary)
    ctx, pk, pv = paged_core(b, q, k, v, block_size=block_size, num_blocks=num_blocks, max_blocks=max_blocks,
                             layout=layout, scale=c.effective_scale, softcap=softcap or 0.0, causal=True, dtype=dt,
                             lengths=lengths)
    return b.build([_project_output(b, c, dt, ctx, c.num_heads * c.value_head_dim), pk, pv])
