"""The reference rules of the position and normalisation ops, in float64, written plainly from the
semantics: angles one token at a time, ALiBi and T5 buckets one (query, key) pair at a time."""

from __future__ import annotations

import math

import numpy as np

from attngraph.ir import Op, dims


def query_position(node, bound, b: int, i: int, q_len: int, lengths) -> int:
    """Where query row ``i`` of batch row ``b`` sits: ``i + offset``, or at the end of its key lengths."""
    if node.attr("align") == "lengths":
        return int(lengths[b]) - q_len + i
    return i + dims.evaluate(node.attr("offset"), bound)


def _rotary(node, bound, x, *operands):
    kinds, rest = node.attr("operands"), list(operands)
    positions = rest.pop(0) if "positions" in kinds else None
    caches = rest if "cos_sin" in kinds else None
    batch, heads, seq, size = x.shape
    rd = int(node.attr("rotary_dim")) or size
    half, scale, freqs = rd // 2, float(node.attr("attention_scaling")), node.attr("inv_freq")
    offset = dims.evaluate(node.attr("offset"), bound)
    out = np.array(x, dtype=np.float64)
    for b in range(batch):
        for s in range(seq):
            p = int(positions[b if positions.shape[0] > 1 else 0, s]) if positions is not None else offset + s
            if caches is not None:
                cos, sin = caches[0][p] * scale, caches[1][p] * scale
            else:
                cos = np.array([math.cos(p * f) for f in freqs]) * scale
                sin = np.array([math.sin(p * f) for f in freqs]) * scale
            for k in range(half):
                a, c = (k, k + half) if node.attr("layout") == "half" else (2 * k, 2 * k + 1)
                x1, x2 = x[b, :, s, a], x[b, :, s, c]
                out[b, :, s, a] = x1 * cos[k] - x2 * sin[k]
                out[b, :, s, c] = x2 * cos[k] + x1 * sin[k]
    return out


def _rms_norm(node, bound, x, w):
    scale = (1.0 + w) if node.attr("add_one") else w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + float(node.attr("eps"))) * scale


def alibi(node, bound, scores, *lengths):
    out = np.array(scores, dtype=np.float64)
    batch, heads, q_len, kv_len = scores.shape
    slopes = node.attr("slopes")
    for b in range(batch):
        for i in range(q_len):
            pos = query_position(node, bound, b, i, q_len, lengths[0] if lengths else None)
            for h in range(heads):
                out[b, h, i] += [slopes[h] * (j - pos) for j in range(kv_len)]
    return out


def t5_bucket(distance: int, num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    """T5's ``_relative_position_bucket`` for one distance ``j - i``, in exact arithmetic."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket = num_buckets if distance > 0 else 0
        n = abs(distance)
    else:
        n = max(-distance, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.floor(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                       * (num_buckets - max_exact)))
    return bucket + min(large, num_buckets - 1)


def rel_bias(node, bound, scores, table, *lengths):
    out = np.array(scores, dtype=np.float64)
    batch, heads, q_len, kv_len = scores.shape
    args = (int(node.attr("num_buckets")), int(node.attr("max_distance")), bool(node.attr("bidirectional")))
    for b in range(batch):
        for i in range(q_len):
            pos = query_position(node, bound, b, i, q_len, lengths[0] if lengths else None)
            for j in range(kv_len):
                out[b, :, i, j] += table[t5_bucket(j - pos, *args)]
    return out


def cache_update(node, bound, cache, new, lengths):
    """Write ``new`` into a copy of ``cache`` at ``lengths[b] + s`` (mod max_len when circular)."""
    out = np.array(cache, copy=True)
    max_len, seq = cache.shape[2], new.shape[2]
    for b in range(cache.shape[0]):
        for s in range(seq):
            slot = int(lengths[b]) + s
            if node.attr("mode") == "circular":
                slot %= max_len
            elif slot >= max_len:
                raise ValueError(f"cache overflow: row {b} writes slot {slot} of a cache of {max_len}")
            out[b, :, slot] = new[b, :, s]
    return out


POSITION_OPS = {Op.ROTARY: _rotary, Op.RMS_NORM: _rms_norm, Op.ALIBI: alibi, Op.REL_BIAS: rel_bias,
                Op.CACHE_UPDATE: cache_update}
