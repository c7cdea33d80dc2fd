"""The reference rules of the paged KV cache, in float64, slot by slot and key by key from the convention
(``attngraph.ir.paged_specs``): the write puts token ``s`` of row ``b`` at its block and offset; the read walks
row ``b``'s logical keys ``0 .. seq_lens[b] - 1`` through the block table, causal bottom-right; a row with no
visible key is 0 and a key of weight exactly 0 takes no part."""

from __future__ import annotations

import numpy as np

from attngraph.ir import Op


def _slot(cache: np.ndarray, layout: str, block: int, offset: int, head: int) -> np.ndarray:
    """The (head_dim,) vector of one head at one slot, as a view."""
    return cache[block, offset, head] if layout == "NHD" else cache[block, head, offset]


def _block_size(cache: np.ndarray, layout: str) -> int:
    return cache.shape[1] if layout == "NHD" else cache.shape[2]


def _paged_cache_update(node, bound, cache, new, table, lengths):
    layout = node.attr("layout")
    bs = _block_size(cache, layout)
    out = np.array(cache, copy=True)
    batch, heads, seq, _ = new.shape
    for b in range(batch):
        for s in range(seq):
            p = int(lengths[b]) + s
            block = int(table[b, p // bs])
            for h in range(heads):
                _slot(out, layout, block, p % bs, h)[...] = new[b, h, s]
    return out


def _paged_attention(node, bound, q, k_cache, v_cache, table, seq_lens):
    layout = node.attr("layout")
    bs = _block_size(k_cache, layout)
    batch, hq, sq, _ = q.shape
    hkv = k_cache.shape[2] if layout == "NHD" else k_cache.shape[1]
    dv = v_cache.shape[3]
    scale, cap, causal = float(node.attr("scale")), float(node.attr("softcap")), bool(node.attr("causal"))
    out = np.zeros((batch, hq, sq, dv))
    for b in range(batch):
        n = int(seq_lens[b])
        where = [(int(table[b, j // bs]), j % bs) for j in range(n)]  # the row's keys in table order
        for h in range(hq):
            kvh = h // (hq // hkv)
            keys = np.array([_slot(k_cache, layout, blk, off, kvh) for blk, off in where]).reshape(n, -1)
            values = np.array([_slot(v_cache, layout, blk, off, kvh) for blk, off in where]).reshape(n, dv)
            for i in range(sq):
                visible = [j for j in range(n) if not causal or j <= n - sq + i]
                if not visible:
                    continue  # no key: the row is 0
                scores = np.array([q[b, h, i] @ keys[j] for j in visible]) * scale
                if cap:
                    scores = cap * np.tanh(scores / cap)
                e = np.exp(scores - np.max(scores))
                p = e / e.sum()
                used = p != 0  # a key of weight exactly 0 takes no part (NaN/inf in its value included)
                out[b, h, i] = p[used] @ values[np.asarray(visible)[used]]
    return out


PAGED_OPS = {Op.PAGED_CACHE_UPDATE: _paged_cache_update, Op.PAGED_ATTENTION: _paged_attention}
