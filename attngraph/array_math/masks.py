"""The keep mask, written once for every eager backend: causal with its offset, the sliding window,
key lengths, alignment to lengths, and the dense bool and bias operands.

Masked positions are *replaced* by ``-inf`` (not added to), so a row is fully masked exactly when
all its scores are ``-inf``. Query row ``i`` sits at key position ``i + offset``; ``offset`` is one
number, or one per batch row (``align="lengths"``: the queries are the last ``q_len`` valid keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def query_offset(offset: Any, align: str, lengths: Any, q_len: int) -> Any:
    """The causal offset: the ``offset`` dim's value, or per batch row ``lengths[b] - q_len``."""
    if align == "lengths":
        return lengths - q_len
    return int(offset)


def keep_structured(xp, rows: Any, kv_len: int, *, causal: bool, offset: Any, window_left: int,
                    window_right: int, device: Any = None) -> Any | None:
    """Bool keep mask of the structured masks for query ``rows`` (a 1-D index array), or None when
    they mask nothing: (len(rows), kv_len), or (B, 1, len(rows), kv_len) for a per-row offset."""
    if not causal and window_left < 0 and window_right < 0:
        return None
    per_row = not isinstance(offset, int)
    cols = xp.arange(kv_len, device=device)
    if per_row:
        pos = xp.reshape(rows, (1, 1, -1, 1)) + xp.reshape(xp.asarray(offset, device=device), (-1, 1, 1, 1))
        j = xp.reshape(cols, (1, 1, 1, -1))
    else:
        pos = xp.reshape(rows, (-1, 1)) + offset
        j = xp.reshape(cols, (1, -1))
    keep = None
    for cond in ((j <= pos) if causal else None,
                 (j >= pos - window_left) if window_left >= 0 else None,
                 (j <= pos + window_right) if window_right >= 0 else None):
        if cond is not None:
            keep = cond if keep is None else xp.logical_and(keep, cond)
    return keep


def as_rank4(xp, mask: Any) -> Any:
    """Right-align a broadcastable mask to rank 4 by adding leading axes (a view)."""
    return xp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape))


def rows_of(xp, mask: Any, row0: int, rows: int) -> Any:
    """Rows ``row0 .. row0+rows`` of a rank-4 mask (all of it when its query axis broadcasts)."""
    return mask if mask.shape[2] == 1 else mask[:, :, row0:row0 + rows]


def keep_mask(xp, row0: int, rows: int, kv_len: int, operands: Mapping[str, Any], *, causal: bool, offset: Any,
              window_left: int, window_right: int, device: Any = None) -> Any | None:
    """Bool keep mask broadcastable to (B, H, rows, kv_len) for query rows ``row0 ..``, or None."""
    row_ids = xp.arange(row0, row0 + rows, device=device)
    keep = keep_structured(xp, row_ids, kv_len, causal=causal, offset=offset, window_left=window_left,
                           window_right=window_right, device=device)
    if "bool" in operands:
        dense = rows_of(xp, as_rank4(xp, operands["bool"]), row0, rows)
        keep = dense if keep is None else xp.logical_and(keep, dense)
    if "lengths" in operands:
        lengths = xp.reshape(operands["lengths"], (-1, 1, 1, 1))
        by_length = xp.reshape(xp.arange(kv_len, device=device), (1, 1, 1, -1)) < lengths
        keep = by_length if keep is None else xp.logical_and(keep, by_length)
    return keep


def apply_mask(xp, scores: Any, row0: int, operands: Mapping[str, Any], *, device: Any = None, **mask: Any) -> Any:
    """Mask ``scores`` (B, H, rows, Skv) whose first row is query ``row0``: add the bias operand,
    put -inf where a key is masked. Returns a new array."""
    out = scores
    if "bias" in operands:
        bias = rows_of(xp, as_rank4(xp, operands["bias"]), row0, scores.shape[2])
        out = out + xp.astype(bias, scores.dtype)
    keep = keep_mask(xp, row0, scores.shape[2], scores.shape[3], operands, device=device, **mask)
    if keep is None:
        return out if out is not scores else xp.asarray(scores, copy=True)
    return xp.where(keep, out, xp.asarray(-float("inf"), dtype=scores.dtype, device=device))
