"""Numba kernel of ``paged_attention``: queries against a paged KV cache, reading each row's blocks in place.

The work is split as the float decode kernel's (``decode.py``, flash-decoding): tasks are (batch row, kv head,
key range), each serving every q head of its GQA group and every query, with an online-softmax partial per row
and ``_merge`` to join the splits. What differs is where a key lives: row ``b``'s logical key ``j`` is slot
``j % block_size`` of block ``block_table[b, j // block_size]`` of the pool, so a task walks its key range tile
by tile and copies each tile's keys (then values), one head's ``head_dim`` contiguous floats at a time, from
their blocks into a small scratch (``block_k x head_dim``, in cache) for the two BLAS products. Nothing ever
builds a contiguous copy of a row's cache. ``layout`` NHD (num_blocks, block_size, heads, dim) and HND
(num_blocks, heads, block_size, dim) differ only in that copy's index order.

Masks are the decode kernel's (``_mask_rows``): the queries are the row's last ``S`` positions (causal
bottom-right), keys past ``seq_lens[b]`` are never read (their blocks may hold NaN), a NaN in a kept key
propagates, a key of weight 0 takes no part.
"""

from __future__ import annotations

import numpy as np
from attngraph_backends.numba.decode import _mask_rows, _merge
from attngraph_backends.numba.exp import FASTMATH
from attngraph_backends.numba.kernels import _online_softmax_rows, _skip_zero_weights
from numba import njit, prange


@njit(cache=True)
def _copy_tile(pool, nhd, table_row, block_size, kvh, j0, j1, tile):
    """Keys ``[j0, j1)`` of one row and kv head, from their blocks into ``tile`` (rows of head_dim)."""
    d = pool.shape[3]
    j = j0
    while j < j1:
        blk = table_row[j // block_size]
        off = j % block_size
        run = min(block_size - off, j1 - j)  # consecutive slots of one block
        for t in range(run):
            src = pool[blk, off + t, kvh] if nhd else pool[blk, kvh, off + t]
            dst = tile[j - j0 + t]
            for e in range(d):
                dst[e] = src[e]
        j += run


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def paged_decode_attention(q, k_pool, v_pool, nhd, table, seq_lens, scale, softcap, causal, block_k, splits, out):
    """q (B, Hq, Sq, D) float32 C-contiguous; pools float32 in ``nhd`` (True: NHD, False: HND) layout; table (B,
    max_blocks) int64 (checked: the used entries are valid blocks); seq_lens (B,) int64. Writes ``out``."""
    batch, hq, sq, d = q.shape
    hkv = k_pool.shape[2] if nhd else k_pool.shape[1]
    block_size = k_pool.shape[1] if nhd else k_pool.shape[2]
    dv = v_pool.shape[3]
    group = hq // hkv
    rows = group * sq
    part_m = np.full((batch, hkv, splits, rows), -np.inf, dtype=q.dtype)
    part_l = np.zeros((batch, hkv, splits, rows), dtype=q.dtype)
    part_acc = np.zeros((batch, hkv, splits, rows, dv), dtype=q.dtype)
    none = np.zeros(hq, dtype=q.dtype)  # no ALiBi
    no_rel = np.zeros((hq, 1), dtype=q.dtype)
    for task in prange(batch * hkv * splits):
        b = task // (hkv * splits)
        kvh = (task // splits) % hkv
        split = task % splits
        length = max(0, seq_lens[b])
        first_pos = length - sq  # the queries are the row's last sq positions
        n_tiles = (length + block_k - 1) // block_k
        per_split = (n_tiles + splits - 1) // splits
        qg = q[b, kvh * group:(kvh + 1) * group].reshape(rows, d) * scale
        m, l_sum, acc = part_m[b, kvh, split], part_l[b, kvh, split], part_acc[b, kvh, split]
        s_flat = np.empty(rows * block_k, dtype=q.dtype)
        k_tile = np.empty((block_k, d), dtype=q.dtype)
        v_tile = np.empty((block_k, dv), dtype=q.dtype)
        pv = np.empty((rows, dv), dtype=q.dtype)
        row_table = table[b]
        for tile in range(split * per_split, min(n_tiles, (split + 1) * per_split)):
            j0 = tile * block_k
            j1 = min(length, j0 + block_k)
            cols = j1 - j0
            s = s_flat[:rows * cols].reshape(rows, cols)
            kt = k_tile[:cols]
            _copy_tile(k_pool, nhd, row_table, block_size, kvh, j0, j1, kt)
            np.dot(qg, kt.T, s)
            _mask_rows(s, b, kvh, group, sq, j0, first_pos, length, scale, softcap, causal, -1, -1, none, none,
                       no_rel, 0, False)
            _online_softmax_rows(s, m, l_sum, acc)
            vt = v_tile[:cols]
            _copy_tile(v_pool, nhd, row_table, block_size, kvh, j0, j1, vt)
            np.dot(s, vt, pv)
            _skip_zero_weights(s, vt, pv)
            acc += pv
    _merge(part_m, part_l, part_acc, group, sq, none, False, out)
