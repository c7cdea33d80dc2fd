"""The static KV cache's write, once for every eager backend: slices of the cache buffer overwritten
in place (``cache[b, :, len_b : len_b + S] = new[b]``), one batch row at a time, never a copy of it."""

from __future__ import annotations

from typing import Any

import numpy as np


def write_cache(xp, cache: Any, new: Any, lengths: Any, mode: str) -> None:
    """Write ``new`` (B, H, S, D) into ``cache`` (B, H, M, D) at ``lengths[b] + s`` (mod M when circular).

    ``lengths`` were checked before the backend ran (``attngraph.lowering.value_checks``, the same check on every
    backend): each is >= 0, and ``lengths[b] + S <= M`` for a linear cache."""
    max_len, seq = cache.shape[2], new.shape[2]
    values = xp.astype(new, cache.dtype, copy=False)
    for b, start in enumerate(_host_ints(lengths)):
        if mode == "linear":
            cache[b, :, start:start + seq] = values[b]
            continue
        first = max(seq - max_len, 0)  # a rolling cache keeps the last max_len entries only
        count, slot = seq - first, (start + first) % max_len
        run = min(count, max_len - slot)  # up to the buffer's end, then the rest from slot 0
        cache[b, :, slot:slot + run] = values[b, :, first:first + run]
        if count > run:
            cache[b, :, :count - run] = values[b, :, first + run:seq]


def _host_ints(lengths: Any) -> list[int]:
    if hasattr(lengths, "tolist"):
        return [int(x) for x in lengths.tolist()]
    return [int(x) for x in np.asarray(lengths)]
