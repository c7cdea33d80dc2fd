"""The paged KV cache's write, once for every eager backend: each row's new tokens copied into their blocks of the
pool in place, one run of consecutive offsets per block (``pool[block, o0:o1] = new[b, :, s0:s1]``), never a
copy of the pool."""

from __future__ import annotations

from typing import Any

from attngraph.array_math.cache import _host_ints


def block_runs(start: int, count: int, block_size: int):
    """``(table column, first offset, last offset + 1, first token)`` of ``count`` tokens from position
    ``start``: one item per block they touch."""
    token = 0
    while token < count:
        pos = start + token
        col, off = divmod(pos, block_size)
        run = min(block_size - off, count - token)
        yield col, off, off + run, token
        token += run


def write_paged(xp, pool: Any, new: Any, table: Any, lengths: Any, layout: str) -> None:
    """Write ``new`` (B, H, S, D) into ``pool`` at positions ``lengths[b] + s`` through ``table`` (B, max_blocks).

    The values were checked before the backend ran (``attngraph.lowering.paged_checks``): the blocks written are
    in range, distinct and read by no other row of the batch."""
    bs = pool.shape[1] if layout == "NHD" else pool.shape[2]
    seq = new.shape[2]
    if not seq:
        return
    values = xp.astype(new, pool.dtype, copy=False)
    rows = table.tolist() if hasattr(table, "tolist") else [list(r) for r in table]
    for b, start in enumerate(_host_ints(lengths)):
        for col, o0, o1, s0 in block_runs(start, seq, bs):
            block = int(rows[b][col])
            chunk = values[b, :, s0:s0 + (o1 - o0)]  # (H, run, D)
            if layout == "NHD":
                pool[block, o0:o1] = xp.permute_dims(chunk, (1, 0, 2))
            else:
                pool[block, :, o0:o1] = chunk
