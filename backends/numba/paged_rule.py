"""The Numba rule of ``paged_attention``: float32 steps of up to ``DECODE_MAX_QUERIES`` queries run
``paged_decode.py``, which reads the pool's blocks in place; a longer prefill or another dtype gathers each row's
blocks into a contiguous compute-dtype copy (once per prompt) and runs the float kernels on it."""

from __future__ import annotations

import numba
import numpy as np
from attngraph_backends.numba import rules as base

from attngraph.ir import DType
from attngraph.ir.paged_specs import block_geometry
from attngraph.lowering import NodeCtx


def _gathered(pool, table: np.ndarray, layout: str, n: int, cd) -> np.ndarray:
    """Each row's blocks in table order as (B, H, max_blocks * block_size, D) in ``cd`` (unused columns clamped)."""
    blocks = np.asarray(pool)[np.clip(table, 0, n - 1)]  # NHD (B, M, bs, H, D); HND (B, M, H, bs, D)
    blocks = blocks.transpose(0, 3, 1, 2, 4) if layout == "NHD" else blocks.transpose(0, 2, 1, 3, 4)
    b, h, m, bs, d = blocks.shape
    return np.ascontiguousarray(blocks.reshape(b, h, m * bs, d), dtype=cd)


# keys per online-softmax tile of the paged kernel (the tile spans blocks: any block size runs the same loop)
PAGED_BLOCK_K = 256
# key rows (kv heads x keys) of one tile's scratch: 8 kv heads x 256 keys, the decode kernel's tile per head.
# Measured (B8, 32/8 heads, dim 128, 4095 cached tokens, 2 cores; x the contiguous step): 256 rows 1.32-1.44x,
# 512 1.10-1.23x, 1024 0.98-1.13x, 2048 0.93-1.11x (fewer, larger BLAS calls; bench/reports/cpu-serving-paged.md)
PAGED_TILE_ROWS = 2048


@base.rules.register(base.Op.PAGED_ATTENTION)
def _paged_attention(ctx: NodeCtx, q, k_pool, v_pool, table, seq_lens):
    a = ctx.node.attr_dict
    st = ctx.state
    layout = a["layout"]
    cd = st.compute_dtype(ctx.node.inputs[0].type.dtype)
    qc = np.ascontiguousarray(q, dtype=cd)
    batch, hq, sq, _ = qc.shape
    dv = v_pool.shape[3]
    lengths = np.asarray(seq_lens, dtype=np.int64).reshape(batch)
    rows = np.asarray(table, dtype=np.int64)
    out = np.empty((batch, hq, sq, dv), cd)
    scale, softcap, causal = cd.type(a["scale"]), cd.type(a["softcap"]), bool(a["causal"])
    if st.extra["threads"]:
        numba.set_num_threads(int(st.extra["threads"]))
    in_place = (sq <= base.DECODE_MAX_QUERIES and ctx.node.inputs[0].type.dtype is DType.FLOAT32
                and ctx.node.inputs[1].type.dtype is DType.FLOAT32)
    with base._KERNEL_LOCK, base._BLAS.limit(limits=1, user_api="blas"):
        if in_place:
            from attngraph_backends.numba.paged_decode import paged_decode_attention

            kp, vp = np.ascontiguousarray(k_pool), np.ascontiguousarray(v_pool)  # the pool itself: no copy
            _, bs, hkv, _ = block_geometry(ctx.node.inputs[1].type, layout)
            k_rows, v_rows = kp.reshape(-1, kp.shape[3]), vp.reshape(-1, vp.shape[3])  # views: one head, one slot
            longest = int(lengths.max(initial=0))
            nh = hkv  # one task reads whole blocks (all heads: one contiguous run of the pool, either layout)
            block_k = max(32, min(PAGED_BLOCK_K, PAGED_TILE_ROWS // nh))
            tasks = max(1, batch * (hkv // nh))
            splits = max(1, min(-(-4 * numba.get_num_threads() // tasks), -(-longest // block_k)))
            paged_decode_attention(qc, k_rows, v_rows, layout == "NHD", hkv, bs, nh, rows, lengths, scale, softcap,
                                   causal, block_k, splits, out)
        else:
            n = block_geometry(ctx.node.inputs[1].type, layout)[0]
            kc, vc = _gathered(k_pool, rows, layout, n, cd), _gathered(v_pool, rows, layout, n, cd)
            offsets = lengths - sq
            none = np.zeros(hq, cd)
            common = (scale, softcap, causal, -1, -1)
            biases = (none, none, np.zeros((hq, 1), cd), 0, False, none, False)
            base._flash(st, {}, qc, kc, vc, offsets, lengths, common, biases, out, False, cd)
    return out.astype(st.dtype(ctx.node.outputs[0].type.dtype), copy=False)
