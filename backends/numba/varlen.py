"""Numba kernel of ``varlen_attention``: packed variable-length sequences, per-sequence tiles only.

The default decomposition computes every packed query against every packed key and masks the cross-sequence
pairs; this kernel never visits them. Work is (kv head, sequence, query block) tiles, the q heads of the kv
head stacked as rows (GQA reads each key block once per group); a tile walks only its own sequence's key blocks,
and with ``causal`` (or a window) only those up to its last query's frontier (``local_i + offset_s``, ``offset_s =
len_k - len_q`` bottom-right, ``0`` top-left) and from its first query's window start. Time is then in proportion to
``sum_s len_q(s) * len_k(s)`` (about half of that causal), not to ``total_q * total_k``.

K is packed once into transposed blocks that start at each sequence's first key (so no block straddles two
sequences; ``pack_varlen_key_blocks``), as the prefill kernel does (``kernels.py``). Tiles are dealt to the
threads by cost (largest first, round robin), as sequence lengths differ by 30x in a mixed batch and a static
split of the tile range would leave a thread idle. The online softmax, the NaN rules and the skip of weight-0
keys are the prefill kernel's (``_online_softmax_rows``, ``_skip_zero_weights``): a row with no visible key is 0;
NaN in a kept key propagates within its sequence and can reach no other (its key is never read there).
"""

from __future__ import annotations

import math

import numpy as np
from attngraph_backends.numba.exp import FASTMATH
from attngraph_backends.numba.kernels import _online_softmax_rows, _skip_zero_weights
from numba import njit, prange


@njit(cache=True, parallel=True)
def pack_varlen_key_blocks(k, cu_k, block_k):
    """(Hkv, Tk, D) -> (Hkv, Tk*D): sequence s's key block ``[j0, j1)`` (``j0 = cu_k[s] + m * block_k``) stored as a
    C-contiguous (D, j1 - j0) matrix at ``[j0*D, j1*D)``."""
    heads, tk, d = k.shape
    n = cu_k.shape[0] - 1
    packed = np.empty((heads, tk * d), k.dtype)
    for task in prange(heads * n):
        h, s = task // n, task % n
        k0, k1 = cu_k[s], cu_k[s + 1]
        for j0 in range(k0, k1, block_k):
            cols = min(k1, j0 + block_k) - j0
            for c in range(cols):
                for e in range(d):
                    packed[h, j0 * d + e * cols + c] = k[h, j0 + c, e]
    return packed


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def varlen_attention(q, k, v, cu_q, cu_k, tiles, workers, scale, causal, bottom_right, wl, wr, softcap, block_q,
                     block_k, pack, out):
    """q (Hq, Tq, D), k (Hkv, Tk, D), v (Hkv, Tk, Dv) C-contiguous; ``tiles`` (n, 3) rows (kv head, sequence,
    first local query), ordered largest first; ``wl`` / ``wr`` the window (-1: unbounded); ``softcap`` (0: off)
    caps the scaled scores before the masks; worker w runs tiles
    w, w + workers, ... A tile stacks the
    ``Hq / Hkv`` q heads of its kv head over ``block_q`` queries as its rows (GQA: each key block is read once for
    the group). ``pack``: copy K into transposed blocks first (prefill: a plain product is several times faster
    then); without it K is read in place through a transposed view (a decode-sized tile: the copy would cost more
    than it saves). Writes ``out`` (Hq, Tq, Dv)."""
    hq, _, d = q.shape
    hkv, tk, dv = k.shape[0], k.shape[1], v.shape[2]
    group = hq // hkv
    k_blocks = pack_varlen_key_blocks(k, cu_k, block_k) if pack else np.empty((1, 1), k.dtype)
    v_flat = v.reshape(hkv, tk * dv)
    n_tiles = tiles.shape[0]
    for w in prange(workers):
        s_flat = np.empty(group * block_q * block_k, dtype=q.dtype)
        pv_flat = np.empty(group * block_q * dv, dtype=q.dtype)
        qb_flat = np.empty(group * block_q * d, dtype=q.dtype)
        for t in range(w, n_tiles, workers):
            kvh, s, i0 = tiles[t, 0], tiles[t, 1], tiles[t, 2]
            q0, k0 = cu_q[s], cu_k[s]
            len_q, len_k = cu_q[s + 1] - q0, cu_k[s + 1] - k0
            i1 = min(len_q, i0 + block_q)
            rq = i1 - i0
            rows = group * rq  # row g * rq + a: q head kvh * group + g, local query i0 + a
            off = len_k - len_q if bottom_right else 0
            qb = qb_flat[:rows * d].reshape(rows, d)
            for g in range(group):
                qb[g * rq:(g + 1) * rq] = q[kvh * group + g, q0 + i0:q0 + i1, :] * scale
            m = np.full(rows, -np.inf, dtype=q.dtype)
            l_sum = np.zeros(rows, dtype=q.dtype)
            acc = np.zeros((rows, dv), dtype=q.dtype)
            pv = pv_flat[:rows * dv].reshape(rows, dv)
            first_pos, last_pos = i0 + off, i1 - 1 + off
            j_end = min(len_k, last_pos + 1) if causal else len_k  # local keys the tile's queries may see
            if wr >= 0:
                j_end = min(j_end, last_pos + wr + 1)
            j_start = max(0, first_pos - wl) if wl >= 0 else 0
            for j0 in range((j_start // block_k) * block_k, max(j_end, 0), block_k):  # blocks from the sequence start
                cols = min(len_k, j0 + block_k) - j0
                g0 = k0 + j0
                sc = s_flat[:rows * cols].reshape(rows, cols)
                if pack:
                    np.dot(qb, k_blocks[kvh, g0 * d:(g0 + cols) * d].reshape(d, cols), sc)
                else:
                    np.dot(qb, k[kvh, g0:g0 + cols].T, sc)
                if softcap > 0:
                    for r in range(rows):
                        for c in range(cols):
                            sc[r, c] = softcap * math.tanh(sc[r, c] / softcap)
                # a block some query does not keep whole: past the first query's frontier or window end, or
                # before the last query's window start
                if ((causal and j0 + cols - 1 > first_pos) or (wr >= 0 and j0 + cols - 1 > first_pos + wr)
                        or (wl >= 0 and j0 < last_pos - wl)):
                    for r in range(rows):
                        pos = i0 + r % rq + off
                        lo, hi = 0, cols
                        if causal:
                            hi = min(hi, pos + 1 - j0)
                        if wr >= 0:
                            hi = min(hi, pos + wr + 1 - j0)
                        if wl >= 0:
                            lo = max(lo, pos - wl - j0)
                        lo = min(max(lo, 0), cols)
                        hi = min(max(hi, lo), cols)
                        sc[r, :lo] = -np.inf
                        sc[r, hi:] = -np.inf
                _online_softmax_rows(sc, m, l_sum, acc)
                vb = v_flat[kvh, g0 * dv:(g0 + cols) * dv].reshape(cols, dv)
                np.dot(sc, vb, pv)
                _skip_zero_weights(sc, vb, pv)
                acc += pv
            for r in range(rows):
                inv = 1.0 / l_sum[r] if l_sum[r] != 0 else 0.0
                h, row = kvh * group + r // rq, q0 + i0 + r % rq
                for e in range(dv):
                    out[h, row, e] = acc[r, e] * inv


def plan_tiles(cu_q: np.ndarray, cu_k: np.ndarray, heads: int, block_q: int, causal: bool,
               bottom_right: bool, wl: int = -1, wr: int = -1) -> np.ndarray:
    """The (kv head, sequence, first local query) tiles of ``block_q`` queries, most work first (work: queries x
    keys the tile visits)."""
    rows, costs = [], []
    for s in range(len(cu_q) - 1):
        len_q, len_k = int(cu_q[s + 1] - cu_q[s]), int(cu_k[s + 1] - cu_k[s])
        off = len_k - len_q if bottom_right else 0
        for i0 in range(0, len_q, block_q):
            i1 = min(len_q, i0 + block_q)
            end = min(len_k, i1 + off) if causal else len_k
            end = min(end, i1 - 1 + off + wr + 1) if wr >= 0 else end
            keys = max(0, end - (max(0, i0 + off - wl) if wl >= 0 else 0))
            rows.append((s, i0))
            costs.append((i1 - i0) * (keys + 1))
    if not rows:
        return np.zeros((0, 3), np.int64)
    order = np.argsort(-np.asarray(costs), kind="stable")
    per_head = np.asarray(rows, np.int64)[order]
    n = len(per_head)
    tiles = np.empty((n * heads, 3), np.int64)
    for h in range(heads):  # tile t of every head next to each other: equal costs dealt round robin
        tiles[h::heads, 0] = h
        tiles[h::heads, 1:] = per_head
    return tiles
