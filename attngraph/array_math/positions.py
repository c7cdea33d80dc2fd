"""Position encodings for the eager backends, written once against the array API: rotary embeddings,
RMS normalisation (QK-norm), ALiBi and T5's bucketed relative bias, and the query positions they share
with the keep mask (``i + offset``, or per batch row ``lengths[b] - q_len + i``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def query_positions(xp, row0: int, rows: int, offset: Any, device: Any = None) -> Any:
    """Absolute positions of query rows ``row0 ..``: (1, 1, rows, 1), or (B, 1, rows, 1) per batch row."""
    pos = xp.reshape(xp.arange(row0, row0 + rows, device=device), (1, 1, rows, 1))
    if isinstance(offset, int):
        return pos + offset
    return pos + xp.reshape(xp.asarray(offset, device=device), (-1, 1, 1, 1))


def key_distance(xp, row0: int, rows: int, kv_len: int, offset: Any, device: Any = None) -> Any:
    """``j - pos_i`` for key j and query row i: int64 (1 or B, 1, rows, kv_len)."""
    cols = xp.reshape(xp.arange(kv_len, device=device), (1, 1, 1, kv_len))
    return cols - query_positions(xp, row0, rows, offset, device)


def alibi_bias(xp, slopes: Sequence[float], distance: Any, dtype: Any, device: Any = None) -> Any:
    """``slope_h * (j - pos_i)``: (1 or B, H, rows, kv_len)."""
    s = xp.reshape(xp.asarray(list(slopes), dtype=dtype, device=device), (1, -1, 1, 1))
    return s * xp.astype(distance, dtype)


def t5_buckets(xp, distance: Any, num_buckets: int, max_distance: int, bidirectional: bool) -> Any:
    """T5's bucket of each relative distance ``j - pos_i`` (its ``_relative_position_bucket``), the
    logarithmic part in float64 with the exact real-number floor (no float32 edge rounding)."""
    nb, base = num_buckets, xp.zeros_like(distance)
    if bidirectional:
        nb //= 2
        base = xp.astype(distance > 0, distance.dtype) * nb
        n = xp.abs(distance)
    else:
        n = xp.where(distance < 0, -distance, xp.zeros_like(distance))
    max_exact = nb // 2
    safe = xp.astype(xp.where(n < 1, xp.ones_like(n), n), xp.float64)  # log(0) never taken: small n are exact
    scaled = xp.log(safe / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact)
    large = max_exact + xp.astype(xp.floor(scaled), n.dtype)
    large = xp.where(large > nb - 1, xp.full_like(large, nb - 1), large)
    return base + xp.where(n < max_exact, n, large)


def relative_bias(xp, table: Any, distance: Any, num_buckets: int, max_distance: int, bidirectional: bool) -> Any:
    """``table[bucket(j - pos_i), h]``: (1 or B, H, rows, kv_len) from a (num_buckets, H) table."""
    buckets = t5_buckets(xp, distance, num_buckets, max_distance, bidirectional)
    flat = xp.take(table, xp.reshape(buckets, (-1,)), axis=0)  # (n, H)
    lead = tuple(buckets.shape)
    return xp.permute_dims(xp.reshape(flat, (lead[0], lead[2], lead[3], table.shape[1])), (0, 3, 1, 2))


def rotary_tables(xp, positions: Any, inv_freq: Sequence[float], scaling: float, dtype: Any, device: Any = None
                  ) -> tuple[Any, Any]:
    """cos and sin of ``position * inv_freq`` (angles in float64), times ``scaling``: (B or 1, 1, S, rd/2)."""
    freqs = xp.asarray(list(inv_freq), dtype=xp.float64, device=device)
    angles = xp.astype(positions, xp.float64)[..., None] * freqs
    cos, sin = xp.cos(angles) * scaling, xp.sin(angles) * scaling
    return (xp.astype(xp.expand_dims(cos, axis=1), dtype), xp.astype(xp.expand_dims(sin, axis=1), dtype))


def apply_rotary(xp, x: Any, cos: Any, sin: Any, layout: str, rotary_dim: int) -> Any:
    """Rotate the first ``rotary_dim`` dims of ``x`` (B, H, S, D) by angle tables (B|1, 1, S, rd/2):
    ``half`` pairs dim k with k + rd/2 (rotate_half); ``interleaved`` pairs 2k with 2k + 1."""
    half = rotary_dim // 2
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:rotary_dim]
    else:
        x1, x2 = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    if layout == "half":
        rotated = xp.concat([y1, y2], axis=-1)
    else:
        rotated = xp.reshape(xp.stack([y1, y2], axis=-1), tuple(x.shape[:-1]) + (rotary_dim,))
    if rotary_dim == x.shape[-1]:
        return rotated
    return xp.concat([rotated, x[..., rotary_dim:]], axis=-1)


def rms_norm(xp, x: Any, weight: Any, eps: float, add_one: bool) -> Any:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis (``* (1 + w)`` with ``add_one``, Gemma)."""
    normed = x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)
    return normed * ((weight + 1.0) if add_one else weight)


@dataclass(frozen=True)
class PositionBiases:
    """The position biases of a fused attention node: ALiBi (added before the scale, or after the
    softcap) and T5's relative bias (after the softcap), at the same query positions as the mask."""

    alibi_slopes: tuple[float, ...] = ()
    alibi_before_scale: bool = False
    rel_buckets: int = 0
    rel_max_distance: int = 128
    rel_bidirectional: bool = True

    @classmethod
    def of(cls, attrs: dict) -> PositionBiases:
        return cls(tuple(attrs["alibi_slopes"]), bool(attrs["alibi_before_scale"]), int(attrs["rel_buckets"]),
                   int(attrs["rel_max_distance"]), bool(attrs["rel_bidirectional"]))

    def __bool__(self) -> bool:
        return bool(self.alibi_slopes) or self.rel_buckets > 0

    def before_scale(self, xp, distance: Any, scale: float, dtype: Any, device: Any = None) -> Any | None:
        """The bias added to the unscaled scores (ALiBi before the scale, already times ``scale``), or None."""
        if not (self.alibi_slopes and self.alibi_before_scale):
            return None
        return alibi_bias(xp, [s * scale for s in self.alibi_slopes], distance, dtype, device)

    def additive(self, xp, distance: Any, scale: float, table: Any, dtype: Any, device: Any = None) -> Any | None:
        """Every bias as one term added to the scaled scores: exact only without a softcap (which would
        sit between the two kinds). (1 or B, H, rows, kv_len), or None."""
        early = self.before_scale(xp, distance, scale, dtype, device)
        late = self.after_softcap(xp, distance, table, dtype, device)
        return late if early is None else early if late is None else early + late

    def after_softcap(self, xp, distance: Any, table: Any, dtype: Any, device: Any = None) -> Any | None:
        """The bias added after the softcap (ALiBi after the scale, T5's bias), or None."""
        bias = None
        if self.alibi_slopes and not self.alibi_before_scale:
            bias = alibi_bias(xp, self.alibi_slopes, distance, dtype, device)
        if self.rel_buckets:
            rel = relative_bias(xp, xp.astype(table, dtype), distance, self.rel_buckets, self.rel_max_distance,
                                self.rel_bidirectional)
            bias = rel if bias is None else bias + rel
        return bias
