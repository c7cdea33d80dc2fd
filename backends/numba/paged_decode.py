"""Numba kernel of ``paged_attention``: queries against a paged KV cache, reading each row's blocks in place.

The work is split as the float decode kernel's (``decode.py``, flash-decoding), with an online-softmax partial per
score row and ``_merge`` to join the key-range splits, but a task is (batch row, a group of ``heads_per_task`` kv
heads, key range) and serves every q head of those kv heads. Row ``b``'s logical key ``j`` is slot ``j %
block_size`` of block ``block_table[b, j // block_size]``, and a block holds every kv head's slots in one
contiguous run (NHD (num_blocks, block_size, heads, dim) and HND (num_blocks, heads, block_size, dim) alike), so a
task serving all kv heads reads each block once, front to back. It walks its key range in tiles of ``block_k``
keys: ``_copy_tile`` moves the tile's keys (then values) of each head from their blocks into a scratch
``(heads, block_k, dim)`` (the block and offset advance slot by slot, no division or array view per key), and one
BLAS product per head follows. Nothing ever copies a row's whole cache. Measured (B8, 4096 tokens, 32/8 heads,
D128, 2 cores): 1.03x the contiguous decode step at block size 128, 1.2x at 16; staging one head at a time from the
strided NHD rows ran 1.6-1.9x, hand-written products without staging 1.5-4x.

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
def _copy_tile(pool_rows, nhd, table_row, block_size, kv0, nh, hkv, j0, j1, tile):
    """Keys ``[j0, j1)`` of one row for kv heads ``kv0 .. kv0 + nh - 1``, from their blocks into ``tile`` (nh,
    block_k, dim). ``pool_rows``: the pool viewed as rows of one head at one slot. The block and offset advance by
    one slot a key (no division per key); NHD reads a slot's heads as one contiguous run."""
    d = pool_rows.shape[1]
    col = j0 // block_size
    off = j0 - col * block_size
    blk = table_row[col]
    for c in range(j1 - j0):
        for kk in range(nh):
            src = (blk * block_size + off) * hkv + kv0 + kk if nhd else (blk * hkv + kv0 + kk) * block_size + off
            for e in range(d):
                tile[kk, c, e] = pool_rows[src, e]
        off += 1
        if off == block_size:
            off = 0
            col += 1
            if col < table_row.shape[0]:
                blk = table_row[col]


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def paged_decode_attention(q, k_rows, v_rows, nhd, hkv, block_size, heads_per_task, table, seq_lens, scale, softcap,
                           causal, block_k, splits, out):
    """q (B, Hq, Sq, D) float32 C-contiguous; ``k_rows`` / ``v_rows`` the float32 pools viewed as (num_blocks *
    block_size * kv_heads, dim) rows, in ``nhd`` (True: NHD, False: HND) slot order; table (B, max_blocks) int64
    (checked: the used entries are valid blocks); seq_lens (B,) int64. A task serves ``heads_per_task`` kv heads
    (all of them for NHD, where a slot's heads are adjacent; 1 for HND, where a block's rows of one head are).
    Writes ``out``."""
    batch, hq, sq, d = q.shape
    dv = v_rows.shape[1]
    group = hq // hkv
    nh = heads_per_task
    n_groups = hkv // nh
    per_kv = group * sq  # score rows of one kv head
    rows = nh * per_kv
    part_m = np.full((batch, n_groups, splits, rows), -np.inf, dtype=q.dtype)
    part_l = np.zeros((batch, n_groups, splits, rows), dtype=q.dtype)
    part_acc = np.zeros((batch, n_groups, splits, rows, dv), dtype=q.dtype)
    none = np.zeros(hq, dtype=q.dtype)  # no ALiBi
    no_rel = np.zeros((hq, 1), dtype=q.dtype)
    for task in prange(batch * n_groups * splits):
        b = task // (n_groups * splits)
        g = (task // splits) % n_groups
        split = task % splits
        kv0 = g * nh
        length = max(0, seq_lens[b])
        first_pos = length - sq  # the queries are the row's last sq positions
        n_tiles = (length + block_k - 1) // block_k
        per_split = (n_tiles + splits - 1) // splits
        qg = q[b, kv0 * group:(kv0 + nh) * group].reshape(rows, d) * scale
        m, l_sum, acc = part_m[b, g, split], part_l[b, g, split], part_acc[b, g, split]
        s_flat = np.empty(rows * block_k, dtype=q.dtype)
        k_tile = np.empty((nh, block_k, d), dtype=q.dtype)  # one tile of keys, then of values: the only copy
        v_tile = np.empty((nh, block_k, dv), dtype=q.dtype)
        pv = np.empty((per_kv, dv), dtype=q.dtype)
        row_table = table[b]
        for tile in range(split * per_split, min(n_tiles, (split + 1) * per_split)):
            j0 = tile * block_k
            j1 = min(length, j0 + block_k)
            cols = j1 - j0
            s = s_flat[:rows * cols].reshape(rows, cols)
            _copy_tile(k_rows, nhd, row_table, block_size, kv0, nh, hkv, j0, j1, k_tile)
            for kk in range(nh):
                np.dot(qg[kk * per_kv:(kk + 1) * per_kv], k_tile[kk, :cols].T, s[kk * per_kv:(kk + 1) * per_kv])
            _mask_rows(s, b, g, nh * group, sq, j0, first_pos, length, scale, softcap, causal, -1, -1, none, none,
                       no_rel, 0, False)
            _online_softmax_rows(s, m, l_sum, acc)
            _copy_tile(v_rows, nhd, row_table, block_size, kv0, nh, hkv, j0, j1, v_tile)
            for kk in range(nh):
                sk, vt = s[kk * per_kv:(kk + 1) * per_kv], v_tile[kk, :cols]
                np.dot(sk, vt, pv)
                _skip_zero_weights(sk, vt, pv)
                acc[kk * per_kv:(kk + 1) * per_kv] += pv
    _merge(part_m, part_l, part_acc, nh * group, sq, none, False, out)
