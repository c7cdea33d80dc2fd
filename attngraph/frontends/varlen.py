"""``varlen_attention``: attention over a packed batch of variable-length sequences as an IR graph.

    g = attngraph.varlen_attention(num_heads=8, head_dim=64, num_kv_heads=2, causal=True)
    run = attngraph.compile(g, "numba")
    y = run(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)["y"]

Inputs (flash-attention's ``flash_attn_varlen_func`` layout, heads first as everywhere in attngraph): ``q`` (1,
num_heads, total_q, head_dim), ``k`` (1, num_kv_heads, total_k, head_dim), ``v`` (1, num_kv_heads, total_k,
v_head_dim), ``cu_seqlens_q`` / ``cu_seqlens_k`` int32 or int64 (num_seqs + 1,), cumulative lengths from 0. Output
``y`` (1, num_heads, total_q, v_head_dim). No query attends across a sequence boundary; ``causal`` is aligned per
sequence by ``align``: ``"bottom_right"`` (flash-attention, xformers ``BlockDiagonalCausalFromBottomRightMask``)
or ``"top_left"`` (xformers ``BlockDiagonalCausalMask``). ``causal=False`` is xformers' ``BlockDiagonalMask``.
Symbolic dims: ``total_q``, ``total_k``, ``cu_len`` (= num_seqs + 1).
"""

from __future__ import annotations

import math

from attngraph.errors import ConfigError
from attngraph.ir import DType, Graph, Op
from attngraph.ir.builder import GraphBuilder
from attngraph.ir.varlen_specs import VARLEN_ALIGNS

__all__ = ["varlen_attention"]


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"varlen_attention {name} must be a positive int, got {value!r}")
    return value


def varlen_attention(num_heads: int, head_dim: int, *, num_kv_heads: int | None = None,
                     v_head_dim: int | None = None, causal: bool = False, align: str = "bottom_right",
                     scale: float | None = None, window: tuple[int, int] | None = None,
                     softcap: float | None = None, dtype: str = "float32",
                     cu_dtype: str = "int32", name: str = "varlen_attention") -> Graph:
    """The packed variable-length attention core (see the module docstring). ``scale`` defaults to
    ``1/sqrt(head_dim)``; ``window=(left, right)`` keeps the local keys ``p - left .. p + right`` of the query at
    aligned position ``p`` (flash-attention's ``window_size``; -1: unbounded); ``softcap``: ``softcap *
    tanh(scores / softcap)`` after the scale (Gemma 2, flash-attention's ``softcap``); ``cu_dtype`` is the cu_seqlens
    inputs' dtype (int32 as flash-attention, or int64)."""
    hq, d = _positive("num_heads", num_heads), _positive("head_dim", head_dim)
    hkv = _positive("num_kv_heads", num_kv_heads if num_kv_heads is not None else hq)
    dv = _positive("v_head_dim", v_head_dim if v_head_dim is not None else d)
    if hq % hkv:
        raise ConfigError(f"varlen_attention num_heads ({hq}) must be a multiple of num_kv_heads ({hkv})")
    if align not in VARLEN_ALIGNS:
        raise ConfigError(f"varlen_attention align must be one of {VARLEN_ALIGNS}, got {align!r}. Fix: "
                          "'bottom_right' for flash-attention, 'top_left' for xformers' BlockDiagonalCausalMask")
    wl, wr = window if window is not None else (-1, -1)
    if any(isinstance(w, bool) or not isinstance(w, int) or w < -1 for w in (wl, wr)):
        raise ConfigError(f"varlen_attention window must be two ints >= -1 (-1: unbounded), got {window!r}")
    if cu_dtype not in ("int32", "int64"):
        raise ConfigError(f"varlen_attention cu_dtype must be 'int32' or 'int64', got {cu_dtype!r}")
    dt = DType.parse(dtype)
    b = GraphBuilder(name)
    q = b.input("q", dt, (1, hq, "total_q", d))
    k = b.input("k", dt, (1, hkv, "total_k", d))
    v = b.input("v", dt, (1, hkv, "total_k", dv))
    cu_q = b.input("cu_seqlens_q", cu_dtype, ("cu_len",))
    cu_k = b.input("cu_seqlens_k", cu_dtype, ("cu_len",))
    y = b.op(Op.VARLEN_ATTENTION, q, k, v, cu_q, cu_k, scale=float(scale) if scale is not None else 1 / math.sqrt(d),
             causal=bool(causal), align=align, window_left=wl, window_right=wr, softcap=float(softcap or 0.0),
             name="y")
    return b.build([y])
