"""Numba kernels: streaming (online-softmax) attention over key blocks, never a T x T matrix.

Each key block of V is a contiguous slice of the caller's array. K is copied once into key blocks
stored transposed (``pack_key_blocks``): BLAS's small-matrix path takes Q K^T as a plain product
then, several times faster than with a transpose flag on these tile sizes. Work is split over
(batch, q head, query block) with ``prange``; each task
keeps its running row max ``m``, row sum ``l`` and output accumulator for one query block and visits
the key blocks in order. Blocks entirely above the causal frontier, outside the window or past the
batch row's key length are never visited. Both products go through ``np.dot`` (BLAS via SciPy) and
the exponentials through a SIMD polynomial (``numba_exp``). Masked scores become ``-inf``; a row
whose keys are all masked ends with sum 0 and gives 0. NaN in a kept score propagates to its row;
NaN or inf in a masked key's value never does (``_skip_zero_weights``).
"""

from __future__ import annotations

import math

import numpy as np
from attngraph_backends.numba.exp import FASTMATH, exp_shifted_sum, row_max
from numba import njit, prange


@njit(cache=True)
def has_position_bias(slopes_pre, slopes_post, has_rel):
    """True when the T5 bias is on or any head has an ALiBi slope (before or after the scale)."""
    for head in range(slopes_pre.shape[0]):
        if slopes_pre[head] != 0 or slopes_post[head] != 0:
            return True
    return has_rel


@njit(cache=True, parallel=True)
def pack_key_blocks(k, block_k):
    """(B, H, S, D) -> (B, H, S*D): key block ``[j0, j1)`` stored as a C-contiguous (D, j1 - j0) matrix
    at ``[j0*D, j1*D)`` (the last block may be short: nothing is padded)."""
    batch, heads, skv, d = k.shape
    packed = np.empty((batch, heads, skv * d), k.dtype)
    n_kb = (skv + block_k - 1) // block_k
    for task in prange(batch * heads * n_kb):
        b = task // (heads * n_kb)
        h = (task // n_kb) % heads
        j0 = (task % n_kb) * block_k
        cols = min(skv, j0 + block_k) - j0
        for c in range(cols):
            for e in range(d):
                packed[b, h, j0 * d + e * cols + c] = k[b, h, j0 + c, e]
    return packed


@njit(cache=True)
def kept_columns(pos, j0, cols, length, causal, wl, wr):
    """The one column range [lo, hi) of a block starting at key ``j0`` that the structured masks keep for
    the query at position ``pos``: keys before ``length``, causal, and the window."""
    lo, hi = 0, length - j0
    if causal:
        hi = min(hi, pos + 1 - j0)
    if wl >= 0:
        lo = max(lo, pos - wl - j0)
    if wr >= 0:
        hi = min(hi, pos + wr + 1 - j0)
    lo = min(max(lo, 0), cols)
    return lo, min(max(hi, lo), cols)


@njit(cache=True, fastmath=FASTMATH)
def _mask_block(s, b, h, i0, j0, off, bias, keep, has_bias, has_keep, softcap, causal, wl, wr, length,
                slope_pre, slope_post, rel, rel_dmin, has_rel):
    """Position biases, softcap, bias and every mask on one score block (blocks on a mask edge, or every
    block when a position bias is on).

    The structured masks (causal, window, key length) keep one column range per row, computed
    here, so they cost two fills per row; only a dense bool/bias operand is read element-wise.
    ALiBi adds ``slope * (j - pos)`` (``slope_pre`` before the softcap: ALiBi before the scale, times
    the scale; ``slope_post`` after it; 0 when off) and T5's bias reads ``rel[h, j - pos - rel_dmin]``.
    """
    for r in range(s.shape[0]):
        i = i0 + r
        pos = i + off
        lo, hi = kept_columns(pos, j0, s.shape[1], length, causal, wl, wr)
        if slope_pre != 0:
            for c in range(lo, hi):
                s[r, c] += slope_pre * (j0 + c - pos)
        if softcap > 0:
            for c in range(lo, hi):
                s[r, c] = softcap * math.tanh(s[r, c] / softcap)
        if slope_post != 0:
            for c in range(lo, hi):
                s[r, c] += slope_post * (j0 + c - pos)
        if has_rel:
            base = j0 - pos - rel_dmin
            for c in range(lo, hi):
                s[r, c] += rel[h, base + c]
        if has_bias:
            for c in range(lo, hi):
                s[r, c] += bias[b, h, i, j0 + c]
        if has_keep:
            for c in range(lo, hi):
                if not keep[b, h, i, j0 + c]:
                    s[r, c] = -np.inf
        s[r, :lo] = -np.inf
        s[r, hi:] = -np.inf


@njit(cache=True, fastmath=FASTMATH)
def _add_position_bias(s, h, i0, j0, off, slope, rel, rel_dmin, has_rel):
    """ALiBi and T5's bias on a block every row keeps whole (no mask, no softcap): one vectorised pass
    per row, ``slope * (j - pos)`` written as a row base plus ``slope * c``."""
    for r in range(s.shape[0]):
        pos = i0 + r + off
        if slope != 0:
            # float32 operands (distances are exact in float32 below 2**24): a float32 * int product is
            # float64 in numba, which costs two conversions per element; no allocation in here either,
            # as this runs once per block inside the kernel's parallel loop
            base = slope * np.float32(j0 - pos)
            for c in range(s.shape[1]):
                s[r, c] += base + slope * np.float32(c)
        if has_rel:
            first = j0 - pos - rel_dmin
            for c in range(s.shape[1]):
                s[r, c] += rel[h, first + c]


@njit(cache=True, fastmath=FASTMATH)
def _online_softmax_rows(s, m, l_sum, acc):
    """Turn score rows into unnormalised probabilities, updating the running max/sum; rescale ``acc``."""
    neg_inf = -np.inf
    for r in range(s.shape[0]):
        if m[r] != m[r]:  # the row already met a NaN score: it stays NaN
            s[r, :] = 0.0
            continue
        biggest, has_nan = row_max(s, r)
        if has_nan:
            m[r] = np.nan
            l_sum[r] = np.nan
            acc[r, :] = np.nan
            s[r, :] = 0.0
            continue
        new_m = biggest if biggest > m[r] else m[r]
        if new_m == neg_inf:  # every key so far masked
            s[r, :] = 0.0
            continue
        total = exp_shifted_sum(s, r, new_m)
        if new_m != m[r]:
            correction = math.exp(m[r] - new_m) if m[r] != neg_inf else 0.0
            l_sum[r] *= correction
            acc[r, :] *= correction
            m[r] = new_m
        l_sum[r] += total


@njit(cache=True)
def _skip_zero_weights(s, vb, pv):
    """Where a row of ``pv = s @ vb`` is not finite, recompute it skipping the keys of weight 0 (masked
    keys take no part: 0 * NaN would be NaN). The check is O(rows x dv) against the product's O(rows x
    keys x dv); the recompute runs only when a value is NaN or inf. Not fastmath: it must see NaN."""
    for r in range(pv.shape[0]):
        finite = True
        for e in range(pv.shape[1]):
            x = pv[r, e]
            if x != x or x == np.inf or x == -np.inf:
                finite = False
                break
        if finite:
            continue
        for e in range(pv.shape[1]):
            total = 0.0
            for c in range(s.shape[1]):
                if s[r, c] != 0:
                    total += s[r, c] * vb[c, e]
            pv[r, e] = total


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def flash_attention(q, k, v, bias, keep, has_bias, has_keep, offsets, lengths, scale, softcap,
                    causal, wl, wr, block_q, block_k, out, weights, want_weights,
                    slopes_pre, slopes_post, rel, rel_dmin, has_rel, sinks, has_sinks):
    """q (B,Hq,Sq,D), k (B,Hkv,Skv,D), v (B,Hkv,Skv,Dv) C-contiguous; bias/keep broadcast 4-D views.

    ``offsets[b]`` is batch row b's causal offset; ``lengths[b]`` its number of valid keys (<= skv).
    ``slopes_pre``/``slopes_post`` (Hq,): ALiBi per head (see ``_mask_block``; zeros when off);
    ``rel`` (Hq, distances): T5's bias per head and distance ``j - pos`` from ``rel_dmin``; ``sinks`` (Hq,): one
    logit per head in each row's denominator, started as a key of score ``sink`` and value 0.
    Writes ``out`` (B,Hq,Sq,Dv) and, when ``want_weights``, ``weights`` (B,Hq,Sq,Skv).
    """
    batch, hq, sq, _ = q.shape
    hkv, skv, d, dv = k.shape[1], k.shape[2], k.shape[3], v.shape[3]
    # flat per-head arrays: a key block is then a 1-D unit-step slice, which numba keeps C-contiguous
    k_blocks = pack_key_blocks(k, block_k)
    v_flat = v.reshape(batch, hkv, skv * dv)
    group = hq // hkv
    n_qb = (sq + block_q - 1) // block_q
    has_position = has_position_bias(slopes_pre, slopes_post, has_rel)
    for task in prange(batch * hq * n_qb):
        b = task // (hq * n_qb)
        h = (task // n_qb) % hq
        i0 = (task % n_qb) * block_q
        i1 = min(sq, i0 + block_q)
        rows = i1 - i0
        kvh = h // group  # GQA: q heads share a K/V head, nothing is copied
        off = offsets[b]
        length = min(lengths[b], skv)
        qb = q[b, h, i0:i1, :] * scale
        m = np.full(rows, -np.inf, dtype=q.dtype)
        l_sum = np.zeros(rows, dtype=q.dtype)
        if has_sinks:  # the sink is a key of score sinks[h] and value 0: exp(sink - m) joins the sum
            m[:] = sinks[h]
            l_sum[:] = 1.0
        acc = np.zeros((rows, dv), dtype=q.dtype)
        # per-task buffers (flat, so that a short edge block is still a C-contiguous reshape)
        s_flat = np.empty(rows * block_k, dtype=q.dtype)
        pv = np.empty((rows, dv), dtype=q.dtype)
        first_pos, last_pos = i0 + off, i1 - 1 + off
        j_end = length
        if causal:
            j_end = min(j_end, last_pos + 1)
        if wr >= 0:
            j_end = min(j_end, last_pos + wr + 1)
        j_start = max(0, first_pos - wl) if wl >= 0 else 0
        first_kb, end_kb = j_start // block_k, (max(j_end, 0) + block_k - 1) // block_k
        for pass_no in range(2 if want_weights else 1):
            for step in range(end_kb - first_kb):
                # with a position bias the nearest keys score highest, so walk from the diagonal back: the
                # running max is then found first and the accumulator is not rescaled at every block
                # (forward, ALiBi raised the max at each block: +20% time at T 2048)
                jb = end_kb - 1 - step if has_position else first_kb + step
                j0 = jb * block_k
                j1 = min(skv, j0 + block_k)
                s = s_flat[:rows * (j1 - j0)].reshape(rows, j1 - j0)
                np.dot(qb, k_blocks[b, kvh, j0 * d:j1 * d].reshape(d, j1 - j0), s)
                # a block every row keeps whole needs no per-element checks
                plain = (not has_bias and not has_keep and softcap <= 0 and j1 <= length
                         and (not causal or j1 - 1 <= first_pos)
                         and (wl < 0 or j0 >= last_pos - wl) and (wr < 0 or j1 - 1 <= first_pos + wr))
                if plain and has_position:  # no mask here: the biases alone, vectorised
                    _add_position_bias(s, h, i0, j0, off, slopes_pre[h] + slopes_post[h], rel, rel_dmin, has_rel)
                elif not plain:
                    _mask_block(s, b, h, i0, j0, off, bias, keep, has_bias, has_keep, softcap, causal, wl, wr,
                                length, slopes_pre[h], slopes_post[h], rel, rel_dmin, has_rel)
                if pass_no == 1:  # weights: exp(s - final max) / final sum
                    for r in range(rows):
                        for c in range(j1 - j0):
                            if l_sum[r] > 0 or l_sum[r] != l_sum[r]:
                                weights[b, h, i0 + r, j0 + c] = math.exp(s[r, c] - m[r]) / l_sum[r]
                    continue
                _online_softmax_rows(s, m, l_sum, acc)
                vb = v_flat[b, kvh, j0 * dv:j1 * dv].reshape(j1 - j0, dv)
                np.dot(s, vb, pv)
                _skip_zero_weights(s, vb, pv)
                acc += pv
        for r in range(rows):
            inv = 1.0 / l_sum[r] if l_sum[r] != 0 else 0.0
            for e in range(dv):
                out[b, h, i0 + r, e] = acc[r, e] * inv
