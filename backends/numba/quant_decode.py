"""Numba decode kernel of ``quant_attention``: few queries against a long int8 / float8 cache, read directly.

The work is split as the float decode kernel's (``decode.py``, flash-decoding): tasks are (batch row, kv head,
key range), each serving every q head of its group, with an online-softmax partial per row and ``_merge`` to join
them. What differs is the read: the cache stays in its quantized buffer (1 byte an element, a quarter of float32's
traffic) and each task widens one key tile at a time into a small float32 scratch (``block_k x head_dim``, in
cache) for the two BLAS products; the scales are applied to the products, not to the tile:

    s[r, c] = k_scale[j] * (q[r] . k_q[j])           the key's scale multiplies its score column
    acc[r] += sum_c p[r, c] * v_scale[j] * v_q[j]    the value's scale multiplies its weight

int8 widens by conversion; float8 e4m3fn (stored bits, a uint8 view) through a 256-entry table. Scales are read
per (batch, head, token) from a (Bs, Hs, Ms) array whose axes of size 1 broadcast (per-head scales: (1, H, 1)).
Masks, biases, sinks and NaN rules are the float kernel's; a key of weight 0 takes no part (not even a NaN scale).
"""

from __future__ import annotations

import numpy as np
from attngraph_backends.numba.decode import _mask_rows, _merge, split_task
from attngraph_backends.numba.exp import FASTMATH
from attngraph_backends.numba.kernels import _online_softmax_rows, _skip_zero_weights, has_position_bias
from numba import njit, prange


@njit(cache=True)
def _widen(src, lut, use_lut, j0, j1, tile):
    """Rows ``[j0, j1)`` of one head's quantized cache ``src`` (T, D) as float32 into ``tile``."""
    d = src.shape[1]
    for jj in range(j1 - j0):
        row = src[j0 + jj]
        if use_lut:
            for e in range(d):
                tile[jj, e] = lut[row[e]]
        else:
            for e in range(d):
                tile[jj, e] = row[e]


@njit(cache=True)
def _scale_at(scales, b, h, j):
    """The scale of token ``j`` of head ``h`` in batch row ``b``; axes of size 1 broadcast."""
    return scales[b if scales.shape[0] > 1 else 0, h if scales.shape[1] > 1 else 0, j if scales.shape[2] > 1 else 0]


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def quant_decode_attention(q, k, k_scale, v, v_scale, lut, use_lut, offsets, lengths, scale, softcap, causal, wl,
                           wr, block_k, splits, slopes_pre, slopes_post, rel, rel_dmin, has_rel, sinks, has_sinks,
                           out):
    """q (B, Hq, Sq, D) float32; k (B, Hkv, T, D) and v (B, Hkv, T, Dv) int8 (or float8 bits as uint8 with
    ``use_lut`` and ``lut`` the 256 float32 values); k_scale / v_scale (Bs, Hs, Ms) float32. Writes ``out``."""
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
        k_tile = np.empty((block_k, d), dtype=q.dtype)   # one tile of widened keys: the only float copy
        v_tile = np.empty((block_k, dv), dtype=q.dtype)
        pv = np.empty((rows, dv), dtype=q.dtype)
        for step in range(max(0, end_blk - first_blk)):
            blk = end_blk - 1 - step if has_position else first_blk + step
            j0 = j_start + blk * block_k
            j1 = min(j_end, j0 + block_k)
            cols = j1 - j0
            s = s_flat[:rows * cols].reshape(rows, cols)
            kt = k_tile[:cols]
            _widen(k[b, kvh], lut, use_lut, j0, j1, kt)
            np.dot(qg, kt.T, s)
            for c in range(cols):
                sk = _scale_at(k_scale, b, kvh, j0 + c)
                for r in range(rows):
                    s[r, c] *= sk
            _mask_rows(s, b, kvh, group, sq, j0, first_pos, length, scale, softcap, causal, wl, wr, slopes_pre,
                       slopes_post, rel, rel_dmin, has_rel)
            _online_softmax_rows(s, m, l_sum, acc)
            for c in range(cols):  # the value's scale joins its weight; a weight of 0 stays 0 (masked keys)
                sv = _scale_at(v_scale, b, kvh, j0 + c)
                for r in range(rows):
                    if s[r, c] != 0:
                        s[r, c] *= sv
            vt = v_tile[:cols]
            _widen(v[b, kvh], lut, use_lut, j0, j1, vt)
            np.dot(s, vt, pv)
            _skip_zero_weights(s, vt, pv)
            acc += pv
    _merge(part_m, part_l, part_acc, group, sq, sinks, has_sinks, out)
