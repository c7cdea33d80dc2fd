"""Type rule of ``cache_update``, the static KV cache's write.

``cache_update(cache, new, lengths) {mode}``: ``cache`` (B, H, max_len, D) with ``new`` (B, H, S, D)
written at slots ``lengths[b] + s`` of batch row b (``mode="linear"``; ``lengths[b] + S <= max_len``,
else an error), or at ``(lengths[b] + s) mod max_len`` (``"circular"``, a rolling cache; the last
write to a slot wins). Every other slot keeps its value. The result has the cache's type; a backend
may write into the cache's own buffer (in place) when it owns it. A linear cache's ``max_len`` may be
symbolic (the buffer the caller passes fixes it, as onnxruntime's GroupQueryAttention takes it); a
circular one needs a fixed ``max_len`` (its slots are taken modulo it).
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import OpSpec, need_rank, need_static, same
from attngraph.ir.types import INT_DTYPES, TensorType


def _cache_update(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    cache, new, lengths = ts
    need_rank(cache, 4, "cache_update cache", "(batch, heads, max_len, head_dim)")
    need_rank(new, 4, "cache_update new entries", "(batch, heads, seq, head_dim)")
    if a["mode"] == "circular":
        need_static(cache.shape[2], "a rolling (circular) cache's max_len")
    if cache.dtype != new.dtype:
        raise GraphError(f"cache_update: the cache is {cache} but the new entries are {new}")
    for axis in (0, 1, 3):
        if not same(cache.shape[axis], new.shape[axis]):
            raise GraphError(f"cache_update: cache {cache} and new entries {new} differ on axis {axis}")
    if lengths.dtype not in INT_DTYPES or lengths.rank != 1 or not same(lengths.shape[0], cache.shape[0]):
        raise GraphError(f"cache_update lengths must be int ({cache.shape[0]},), got {lengths}")
    if a["mode"] not in ("linear", "circular"):
        raise GraphError(f"cache_update mode must be 'linear' (static) or 'circular' (rolling), got {a['mode']!r}")
    return (cache,)


CACHE_SPECS = {Op.CACHE_UPDATE: OpSpec(3, 3, {"mode": "linear"}, _cache_update)}
