"""Numba kernels: streaming (online-softmax) attention over key blocks, never a T x T matrix.

Work is split over (batch, q head, query block) with ``prange``. For each query block the key
blocks are visited in order; blocks entirely above the causal frontier, before the window, or past
the row's key length are skipped. Both products go through ``np.dot`` (BLAS through SciPy).
Masked scores become ``-inf``; a row whose keys are all masked ends with sum 0 and gives 0. NaN
in a kept score propagates to its row (comparisons with NaN are false, so it is checked explicitly).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _kept(i_pos, j, causal, wl, wr, length):
    if j >= length:
        return False
    if causal and j > i_pos:
        return False
    if wl >= 0 and j < i_pos - wl:
        return False
    if wr >= 0 and j > i_pos + wr:
        return False
    return True


@njit(cache=True, parallel=True)
def flash_attention(q, k, v, bias, keep, has_bias, has_keep, offsets, lengths, scale, softcap,
                    causal, wl, wr, block_q, block_k, out, weights, want_weights):
    """q (B,Hq,Sq,D), k (B,Hkv,Skv,D), v (B,Hkv,Skv,Dv) contiguous; bias/keep broadcast 4-D views.

    ``offsets[b]`` is batch row b's causal offset; ``lengths[b]`` its number of valid keys.
    Writes ``out`` (B,Hq,Sq,Dv) and, when ``want_weights``, ``weights`` (B,Hq,Sq,Skv).
    """
    batch, hq, sq, _ = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = hq // hkv
    n_qb = (sq + block_q - 1) // block_q
    neg_inf = -np.inf
    for task in prange(batch * hq * n_qb):
        b = task // (hq * n_qb)
        h = (task // n_qb) % hq
        i0 = (task % n_qb) * block_q
        i1 = min(sq, i0 + block_q)
        rows = i1 - i0
        kvh = h // group
        off = offsets[b]
        length = lengths[b]
        qb = np.ascontiguousarray(q[b, h, i0:i1, :])
        m = np.full(rows, neg_inf, dtype=q.dtype)
        l_sum = np.zeros(rows, dtype=q.dtype)
        acc = np.zeros((rows, dv), dtype=q.dtype)
        last_pos = i1 - 1 + off
        first_pos = i0 + off
        j_end = min(skv, length)
        if causal:
            j_end = min(j_end, last_pos + 1)
        if wr >= 0:
            j_end = min(j_end, last_pos + wr + 1)
        j_start = 0
        if wl >= 0:
            j_start = max(0, first_pos - wl)
        for pass_no in range(2 if want_weights else 1):
            for j0 in range((j_start // block_k) * block_k, max(j_end, 0), block_k):
                j1 = min(skv, j0 + block_k)
                s = np.dot(qb, np.ascontiguousarray(k[b, kvh, j0:j1, :].T))
                # a block every row keeps whole needs no per-element mask checks: scale it in one go
                plain = (not has_bias and not has_keep and softcap <= 0 and j1 <= length
                         and (not causal or j1 - 1 <= first_pos)
                         and (wl < 0 or j0 >= last_pos - wl) and (wr < 0 or j1 - 1 <= first_pos + wr))
                if plain:
                    s *= scale
                else:
                    for r in range(rows):
                        i = i0 + r
                        for c in range(j1 - j0):
                            j = j0 + c
                            x = s[r, c] * scale
                            if softcap > 0:
                                x = softcap * math.tanh(x / softcap)
                            if has_bias:
                                x += bias[b, h, i, j]
                            if not _kept(i + off, j, causal, wl, wr, length) or (has_keep and not keep[b, h, i, j]):
                                x = neg_inf
                            s[r, c] = x
                if pass_no == 1:  # weights: exp(s - final max) / final sum
                    for r in range(rows):
                        for c in range(j1 - j0):
                            if l_sum[r] > 0 or l_sum[r] != l_sum[r]:
                                weights[b, h, i0 + r, j0 + c] = math.exp(s[r, c] - m[r]) / l_sum[r]
                    continue
                for r in range(rows):
                    row_max = neg_inf
                    for c in range(j1 - j0):
                        x = s[r, c]
                        if x != x:
                            row_max = x
                            break
                        if x > row_max:
                            row_max = x
                    new_m = row_max if row_max != row_max or row_max > m[r] else m[r]
                    if new_m == neg_inf:
                        for c in range(j1 - j0):
                            s[r, c] = 0.0
                        continue
                    correction = math.exp(m[r] - new_m) if m[r] != neg_inf else 0.0
                    total = 0.0
                    for c in range(j1 - j0):
                        p = math.exp(s[r, c] - new_m)
                        s[r, c] = p
                        total += p
                    l_sum[r] = l_sum[r] * correction + total
                    for d in range(dv):
                        acc[r, d] *= correction
                    m[r] = new_m
                acc += np.dot(s, np.ascontiguousarray(v[b, kvh, j0:j1, :]))
        for r in range(rows):
            for d in range(dv):
                out[b, h, i0 + r, d] = acc[r, d] / l_sum[r] if l_sum[r] != 0 else 0.0
