"""Numba kernel of ``latent_attention``: MLA's absorbed core, reading the latent cache and the rope key cache only.

The decode step of multi-head latent attention is memory-bound on the latent cache (B, 1, M, r) and the rope key
cache (B, 1, M, dr): each cached latent row is read once and serves twice, as the key of ``q_latent`` and as the
value. The work is split as the decode kernel's (``decode.py``, flash-decoding): tasks are (batch row, kv head, key
range); each task stacks every q head and query of its group as rows, keeps an online-softmax partial per row,
and ``_merge`` joins the partials. Per key block ``[j0, j1)``:

    s = (q_latent . c[j0:j1]^T + q_rope . k_rope[j0:j1]^T) * scale     masked by causal / window / length
    acc += softmax-partial(s) @ c[j0:j1]                                the same latent rows, still in cache

Masks are the decode kernel's (one kept column range per row); NaN in a kept key propagates, a masked key never
reaches the output (``_skip_zero_weights``).
"""

from __future__ import annotations

import numpy as np
from attngraph_backends.numba.decode import _mask_rows, _merge, split_task
from attngraph_backends.numba.exp import FASTMATH
from attngraph_backends.numba.kernels import _online_softmax_rows, _skip_zero_weights
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def latent_decode(q_lat, q_rope, c, k_rope, offsets, lengths, scale, causal, wl, wr, block_k, splits, out):
    """q_lat (B, Hq, Sq, r), q_rope (B, Hq, Sq, dr), c (B, Hkv, T, r), k_rope (B, Hkv, T, dr), C-contiguous;
    ``offsets[b]`` the causal offset and ``lengths[b]`` the valid keys of row b. Writes ``out`` (B, Hq, Sq, r)."""
    batch, hq, sq, r = q_lat.shape
    hkv, dr = c.shape[1], k_rope.shape[3]
    group = hq // hkv
    rows = group * sq
    part_m = np.full((batch, hkv, splits, rows), -np.inf, dtype=q_lat.dtype)
    part_l = np.zeros((batch, hkv, splits, rows), dtype=q_lat.dtype)
    part_acc = np.zeros((batch, hkv, splits, rows, r), dtype=q_lat.dtype)
    zeros = np.zeros(hq, dtype=q_lat.dtype)
    rel = np.zeros((hq, 1), dtype=q_lat.dtype)
    for task in prange(batch * hkv * splits):
        b, kvh, length, j_start, j_end, first_blk, end_blk = split_task(
            task, hkv, splits, lengths, offsets, c.shape[2], sq, causal, wl, wr, block_k)
        first_pos = offsets[b]
        split = task % splits
        qg = q_lat[b, kvh * group:(kvh + 1) * group].reshape(rows, r) * scale
        qr = q_rope[b, kvh * group:(kvh + 1) * group].reshape(rows, dr) * scale
        m, l_sum, acc = part_m[b, kvh, split], part_l[b, kvh, split], part_acc[b, kvh, split]
        s_flat = np.empty(rows * block_k, dtype=q_lat.dtype)
        t_flat = np.empty(rows * block_k, dtype=q_lat.dtype)
        pv = np.empty((rows, r), dtype=q_lat.dtype)
        for blk in range(first_blk, end_blk):
            j0 = j_start + blk * block_k
            j1 = min(j_end, j0 + block_k)
            s = s_flat[:rows * (j1 - j0)].reshape(rows, j1 - j0)
            t = t_flat[:rows * (j1 - j0)].reshape(rows, j1 - j0)
            cb = c[b, kvh, j0:j1]
            np.dot(qg, cb.T, s)
            np.dot(qr, k_rope[b, kvh, j0:j1].T, t)
            s += t
            _mask_rows(s, b, kvh, group, sq, j0, first_pos, length, scale, 0.0, causal, wl, wr, zeros, zeros,
                       rel, 0, False)
            _online_softmax_rows(s, m, l_sum, acc)
            np.dot(s, cb, pv)
            _skip_zero_weights(s, cb, pv)
            acc += pv
    _merge(part_m, part_l, part_acc, group, sq, zeros, False, out)
