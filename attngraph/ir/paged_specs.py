"""Type rules of the paged KV cache: ``paged_cache_update`` (the write) and ``paged_attention`` (the read).

The cache is a pool of fixed-size blocks shared by every sequence, vLLM's layout:

* ``layout="NHD"``: a cache ``(num_blocks, block_size, kv_heads, head_dim)`` (vLLM's flash backend);
  ``layout="HND"``: ``(num_blocks, kv_heads, block_size, head_dim)`` (FlashInfer's other layout). Named, never
  inferred (a square ``block_size == kv_heads`` cache would be ambiguous).
* ``block_table`` ``(batch, max_blocks)`` int32/int64: row ``b``'s logical position ``p`` lives in block
  ``block_table[b, p // block_size]`` at offset ``p % block_size``. Columns past the ones a row needs are never
  read and may hold anything (``-1`` padding included).

``paged_cache_update(cache, new, block_table, cache_lengths) {layout}``: ``new`` ``(batch, kv_heads, S, head_dim)``
(attngraph's head layout); token ``s`` of row ``b`` goes to logical position ``cache_lengths[b] + s``. Every other
slot keeps its value; the result has the cache's type and a backend may write the caller's buffer in place.

``paged_attention(q, k_cache, v_cache, block_table, seq_lens) {scale, softcap, causal, layout}``: ``q``
``(batch, Hq, S, head_dim)``; row ``b`` attends over its logical keys ``0 .. seq_lens[b] - 1`` (vLLM's
``seq_lens``: the cached tokens plus the new ones), read block by block in table order. With ``causal`` the
queries are the row's last ``S`` positions (bottom-right, as the static cache): query ``i`` sees key ``j`` iff
``j <= seq_lens[b] - S + i``. A query with no visible key gives 0; keys past ``seq_lens[b]`` take no part (NaN or
garbage in unused slots never reaches the output). GQA as everywhere. Output ``(batch, Hq, S, v_head_dim)``.

Bad values (a block id out of range, a table too short for the length, two rows writing one slot, a write into a
block another row of the batch reads) are refused before any backend runs (``lowering.paged_checks``).
``num_blocks``, ``block_size`` and ``max_blocks`` are fixed ints: the pool is allocated once, as vLLM's is.
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir.attention_specs import _finite_attr, _matmul
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, need_float, need_rank, need_static, same
from attngraph.ir.types import INT_DTYPES, TensorType

PAGED_LAYOUTS = ("NHD", "HND")


def block_geometry(cache: TensorType, layout: str) -> tuple[int, int, int, int]:
    """``(num_blocks, block_size, kv_heads, head_dim)`` of a paged cache in ``layout``."""
    n, a, c, d = cache.shape
    bs, h = (a, c) if layout == "NHD" else (c, a)
    return (need_static(n, "a paged cache's num_blocks"), need_static(bs, "a paged cache's block_size"),
            need_static(h, "a paged cache's kv_heads"), need_static(d, "a paged cache's head_dim"))


def _layout(a: dict[str, Attr], op: str) -> str:
    if a["layout"] not in PAGED_LAYOUTS:
        raise GraphError(f"{op} layout must be one of {PAGED_LAYOUTS} (NHD: (num_blocks, block_size, heads, dim); "
                         f"HND: (num_blocks, heads, block_size, dim)), got {a['layout']!r}")
    return a["layout"]


def _cache(t: TensorType, layout: str, what: str) -> tuple[int, int, int, int]:
    need_rank(t, 4, what, "(num_blocks, block_size, kv_heads, head_dim)" if layout == "NHD"
              else "(num_blocks, kv_heads, block_size, head_dim)")
    return block_geometry(t, layout)


def _table(table: TensorType, lengths: TensorType, batch, op: str, lengths_name: str) -> None:
    if table.dtype not in INT_DTYPES or table.rank != 2:
        raise GraphError(f"{op} block_table must be int32/int64 (batch, max_blocks), got {table}")
    need_static(table.shape[1], f"{op} block_table's max_blocks")
    if lengths.dtype not in INT_DTYPES or lengths.rank != 1:
        raise GraphError(f"{op} {lengths_name} must be int32/int64 (batch,), got {lengths}")
    if not (same(table.shape[0], batch) and same(lengths.shape[0], batch)):
        raise GraphError(f"{op}: block_table {table} and {lengths_name} {lengths} must have the batch {batch!r}")


def _paged_cache_update(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    cache, new, table, lengths = ts
    layout = _layout(a, "paged_cache_update")
    _, _, h, d = _cache(cache, layout, "paged_cache_update cache")
    need_rank(new, 4, "paged_cache_update new entries", "(batch, kv_heads, seq, head_dim)")
    if cache.dtype != new.dtype:
        raise GraphError(f"paged_cache_update: the cache is {cache} but the new entries are {new}")
    if not (same(new.shape[1], h) and same(new.shape[3], d)):
        raise GraphError(f"paged_cache_update: new entries {new} must have the cache's {h} heads of {d} dims")
    _table(table, lengths, new.shape[0], "paged_cache_update", "cache_lengths")
    return (cache,)


def _paged_attention(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q, kc, vc, table, seq_lens = ts
    layout = _layout(a, "paged_attention")
    need_float(q, "paged_attention q")
    need_rank(q, 4, "paged_attention q", "(batch, heads, q_len, head_dim)")
    nk, bk, hk, dk = _cache(kc, layout, "paged_attention k_cache")
    nv, bv, hv, dv = _cache(vc, layout, "paged_attention v_cache")
    if (nk, bk, hk) != (nv, bv, hv):
        raise GraphError(f"paged_attention k_cache {kc} and v_cache {vc} must share blocks, block size and heads")
    if not q.dtype == kc.dtype == vc.dtype:
        raise GraphError(f"paged_attention q/k_cache/v_cache dtypes differ: {q}, {kc}, {vc}")
    _matmul((q, TensorType(kc.dtype, (q.shape[0], hk, "keys", dk))), {"transpose_b": True})  # GQA, head dims
    _table(table, seq_lens, q.shape[0], "paged_attention", "seq_lens")
    _finite_attr(a, "scale", "paged_attention")
    if _finite_attr(a, "softcap", "paged_attention") < 0:
        raise GraphError(f"paged_attention softcap must be >= 0 (0 = off), got {a['softcap']}")
    if not isinstance(a["causal"], bool):
        raise GraphError(f"paged_attention causal must be a bool, got {a['causal']!r}")
    return (TensorType(q.dtype, q.shape[:3] + (dv,)),)


PAGED_SPECS = {
    Op.PAGED_CACHE_UPDATE: OpSpec(4, 4, {"layout": "NHD"}, _paged_cache_update),
    Op.PAGED_ATTENTION: OpSpec(5, 5, {"scale": REQUIRED, "softcap": 0.0, "causal": True, "layout": "NHD"},
                               _paged_attention),
}
