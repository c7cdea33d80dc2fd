"""Numba decode kernel: few queries against a long cache (flash-decoding).

One decode step is memory-bound: every cached key and value is read once, and there is little else
to do. So the work is split the other way round from the prefill kernel (``kernels.py``):

* tasks are (batch row, kv head, key range): the key range of a row is cut into ``splits`` pieces so
  that batch 1 keeps every core busy (split-K, as flash-decoding does);
* one task serves every q head of its kv head's group and every query at once (GQA rows stacked), so
  each cache byte is read once per step, straight from the caller's buffer (no packed copy of K);
* each task keeps an online-softmax partial (running max, sum, accumulator) per row; a second pass
  merges the partials of a row, with the sink (if any) as one more term of the sum.

Masking is the prefill kernel's: causal, window and key length as one column range per row, ALiBi,
T5's bias, softcap; NaN in a kept key propagates, a masked key never reaches the output.
"""

from __future__ import annotations

import math

import numpy as np
from attngraph_backends.numba.exp import FASTMATH
from attngraph_backends.numba.kernels import (
    _online_softmax_rows,
    _skip_zero_weights,
    has_position_bias,
    kept_columns,
)
from numba import njit, prange


@njit(cache=True)
def split_task(task, hkv, splits, lengths, offsets, n_keys, sq, causal, wl, wr, block_k):
    """The split-K decode task ``task`` of (batch row, kv head, key range): ``(b, kv head, length, j_start, j_end,
    first_block, end_block)``, the key blocks ``[first_block, end_block)`` of ``block_k`` keys from ``j_start``
    that this split reads (causal, window and key length already cut; a length past the keys means all of them)."""
    b = task // (hkv * splits)
    kvh = (task // splits) % hkv
    split = task % splits
    length = max(0, min(lengths[b], n_keys))
    first_pos, last_pos = offsets[b], offsets[b] + sq - 1
    j_end = min(length, last_pos + 1) if causal else length
    if wr >= 0:
        j_end = min(j_end, last_pos + wr + 1)
    j_start = max(0, first_pos - wl) if wl >= 0 else 0
    n_blocks = max(0, (j_end - j_start + block_k - 1) // block_k)
    per_split = (n_blocks + splits - 1) // splits
    return b, kvh, length, j_start, j_end, split * per_split, min(n_blocks, (split + 1) * per_split)


@njit(cache=True, fastmath=FASTMATH)
def _mask_rows(s, b, kv_head, group, sq, j0, off, length, scale, softcap, causal, wl, wr, slopes_pre, slopes_post,
               rel, rel_dmin, has_rel):
    """Biases, softcap and masks on a (group * sq, keys) score block whose row r is q head
    ``kv_head * group + r // sq`` and query ``r % sq``."""
    for r in range(s.shape[0]):
        h = kv_head * group + r // sq
        pos = r % sq + off
        lo, hi = kept_columns(pos, j0, s.shape[1], length, causal, wl, wr)
        if slopes_pre[h] != 0:
            for c in range(lo, hi):
                s[r, c] += slopes_pre[h] * (j0 + c - pos)
        if softcap > 0:
            for c in range(lo, hi):
                s[r, c] = softcap * math.tanh(s[r, c] / softcap)
        if slopes_post[h] != 0:
            for c in range(lo, hi):
                s[r, c] += slopes_post[h] * (j0 + c - pos)
        if has_rel:
            base = j0 - pos - rel_dmin
            for c in range(lo, hi):
                s[r, c] += rel[h, base + c]
        s[r, :lo] = -np.inf
        s[r, hi:] = -np.inf


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def decode_attention(q, k, v, offsets, lengths, scale, softcap, causal, wl, wr, block_k, splits,
                     slopes_pre, slopes_post, rel, rel_dmin, has_rel, sinks, has_sinks, out):
    """q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv), C-contiguous; ``offsets[b]`` the causal
    offset and ``lengths[b]`` the valid keys of row b. Writes ``out`` (B, Hq, Sq, Dv)."""
    batch, hq, sq, d = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    group = hq // hkv
    rows = group * sq
    part_m = np.full((batch, hkv, splits, rows), -np.inf, dtype=q.dtype)
    part_l = np.zeros((batch, hkv, splits, rows), dtype=q.dtype)
    part_acc = np.zeros((batch, hkv, splits, rows, dv), dtype=q.dtype)
    has_position = has_position_bias(slopes_pre, slopes_post, has_rel)
    for task in prange(batch * hkv * splits):
        b, kvh, length, j_start, j_end, first_blk, end_blk = split_task(
            task, hkv, splits, lengths, offsets, k.shape[2], sq, causal, wl, wr, block_k)
        first_pos = offsets[b]
        split = task % splits
        qg = q[b, kvh * group:(kvh + 1) * group].reshape(rows, d) * scale
        m, l_sum, acc = part_m[b, kvh, split], part_l[b, kvh, split], part_acc[b, kvh, split]
        s_flat = np.empty(rows * block_k, dtype=q.dtype)
        pv = np.empty((rows, dv), dtype=q.dtype)
        for step in range(max(0, end_blk - first_blk)):
            # nearest keys first under a position bias (as the prefill kernel: the max is found at once)
            blk = end_blk - 1 - step if has_position else first_blk + step
            j0 = j_start + blk * block_k
            j1 = min(j_end, j0 + block_k)
            s = s_flat[:rows * (j1 - j0)].reshape(rows, j1 - j0)
            np.dot(qg, k[b, kvh, j0:j1].T, s)
            _mask_rows(s, b, kvh, group, sq, j0, first_pos, length, scale, softcap, causal, wl, wr, slopes_pre,
                       slopes_post, rel, rel_dmin, has_rel)
            _online_softmax_rows(s, m, l_sum, acc)
            vb = v[b, kvh, j0:j1]
            np.dot(s, vb, pv)
            _skip_zero_weights(s, vb, pv)
            acc += pv
    _merge(part_m, part_l, part_acc, group, sq, sinks, has_sinks, out)


@njit(cache=True)
def _merge(part_m, part_l, part_acc, group, sq, sinks, has_sinks, out):
    """Each row's partials as one softmax: rescale every split to the row's overall max (the sink's
    logit counts as one more term); a NaN partial keeps the row NaN; a row with no mass gives 0."""
    batch, hkv, splits, rows = part_m.shape
    dv = part_acc.shape[4]
    for task in range(batch * hkv * rows):  # O(rows x dv) work: a second parallel launch costs more
        b = task // (hkv * rows)
        kvh = (task // rows) % hkv
        r = task % rows
        h = kvh * group + r // sq
        top = sinks[h] if has_sinks else -np.inf
        nan = False
        for sp in range(splits):
            x = part_m[b, kvh, sp, r]
            if x != x:
                nan = True
            elif x > top:
                top = x
        total = math.exp(sinks[h] - top) if has_sinks and top != -np.inf else 0.0
        acc = np.zeros(dv, dtype=part_acc.dtype)
        if not nan and top != -np.inf:
            for sp in range(splits):
                x = part_m[b, kvh, sp, r]
                if x == -np.inf:
                    continue
                w = math.exp(x - top)
                total += part_l[b, kvh, sp, r] * w
                for e in range(dv):
                    acc[e] += part_acc[b, kvh, sp, r, e] * w
        i = r % sq
        for e in range(dv):
            if nan:
                out[b, h, i, e] = np.nan
            else:
                out[b, h, i, e] = acc[e] / total if total > 0 else 0.0
