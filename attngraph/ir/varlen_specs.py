"""Type rule of ``varlen_attention``: attention over packed variable-length sequences.

``varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k) {scale, causal, align}``, the convention of
flash-attention's ``flash_attn_varlen_func`` and of xformers' block-diagonal masks:

* ``q`` (1, Hq, total_q, D), ``k`` (1, Hkv, total_k, D), ``v`` (1, Hkv, total_k, Dv): the sequences of a batch
  concatenated on the sequence axis (no padding), batch axis 1;
* ``cu_seqlens_q`` / ``cu_seqlens_k`` (N + 1,) int32/int64: cumulative lengths, ``0 = cu[0] <= cu[1] <= ... <=
  cu[N] = total``; sequence ``s`` holds queries ``cu_seqlens_q[s] .. cu_seqlens_q[s+1] - 1`` and keys
  ``cu_seqlens_k[s] .. cu_seqlens_k[s+1] - 1``. Both have the same N (one key range per query range).

Query ``i`` of sequence ``s`` sees only keys of sequence ``s`` (the block-diagonal mask: nothing crosses a
sequence boundary). With ``causal``, the query at local index ``a`` (``i - cu_seqlens_q[s]``) sees the key at
local index ``c`` iff ``c <= a + offset_s``: ``offset_s = len_k(s) - len_q(s)`` with ``align="bottom_right"``
(flash-attention >= 2.1, xformers ``BlockDiagonalCausalFromBottomRightMask``: the queries are the last keys of
their sequence), ``offset_s = 0`` with ``align="top_left"`` (xformers ``BlockDiagonalCausalMask``). A query with
no visible key (an empty key range, or bottom-right with more queries than keys) gives an output row of 0.
``window_left`` / ``window_right`` (-1: unbounded) keep, with ``p = a + offset_s``, the local keys
``p - window_left .. p + window_right`` (flash-attention's ``window_size``, aligned by ``align`` as the causal
mask is, with or without ``causal``). ``softcap`` > 0: ``softcap * tanh(scores / softcap)`` after the scale, before
the masks (0: off).
GQA as everywhere: q head h reads kv head ``h // (Hq / Hkv)``. Output (1, Hq, total_q, Dv).
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir.attention_specs import _finite_attr, _matmul
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, need_float, need_rank, need_static, same
from attngraph.ir.types import INT_DTYPES, TensorType

VARLEN_ALIGNS = ("bottom_right", "top_left")


def _varlen_attention(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q, k, v, cu_q, cu_k = ts
    for t, name in ((q, "varlen_attention q"), (k, "varlen_attention k"), (v, "varlen_attention v")):
        need_float(t, name)
        need_rank(t, 4, name, "(1, heads, total_len, head_dim)")
        if need_static(t.shape[0], f"{name} batch axis") != 1:
            raise GraphError(f"{name} packs every sequence on the sequence axis: its batch axis must be 1, got {t}")
    if not q.dtype == k.dtype == v.dtype:
        raise GraphError(f"varlen_attention q/k/v dtypes differ: {q}, {k}, {v}")
    _matmul((q, k), {"transpose_b": True})  # heads (GQA) and head dims
    if not same(k.shape[2], v.shape[2]) or k.shape[1] != v.shape[1]:
        raise GraphError(f"varlen_attention k and v must share heads and length: {k} vs {v}")
    for t, name in ((cu_q, "cu_seqlens_q"), (cu_k, "cu_seqlens_k")):
        if t.dtype not in INT_DTYPES or t.rank != 1:
            raise GraphError(f"varlen_attention {name} must be int32/int64 of shape (num_seqs + 1,), got {t}")
    if not same(cu_q.shape[0], cu_k.shape[0]):
        raise GraphError(f"varlen_attention cu_seqlens_q {cu_q} and cu_seqlens_k {cu_k} must have the same length "
                         "(one key range per query range)")
    _finite_attr(a, "scale", "varlen_attention")
    if _finite_attr(a, "softcap", "varlen_attention") < 0:
        raise GraphError(f"varlen_attention softcap must be >= 0 (0 = off), got {a['softcap']}")
    if not isinstance(a["causal"], bool):
        raise GraphError(f"varlen_attention causal must be a bool, got {a['causal']!r}")
    if a["align"] not in VARLEN_ALIGNS:
        raise GraphError(f"varlen_attention align must be one of {VARLEN_ALIGNS}, got {a['align']!r}")
    for name in ("window_left", "window_right"):
        if isinstance(a[name], bool) or not isinstance(a[name], int) or a[name] < -1:
            raise GraphError(f"varlen_attention {name} must be -1 (unbounded) or an int >= 0, got {a[name]!r}")
    return (TensorType(q.dtype, q.shape[:3] + (v.shape[3],)),)


VARLEN_SPECS = {Op.VARLEN_ATTENTION: OpSpec(5, 5, {"scale": REQUIRED, "causal": False, "align": "bottom_right",
                                                      "window_left": -1, "window_right": -1, "softcap": 0.0},
                                            _varlen_attention)}
