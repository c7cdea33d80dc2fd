"""The Numba backend's rules: the NumPy backend's (BLAS calls and layout changes already), and the
fused ``attention`` op as a streaming (flash-style) kernel that never holds a T x T matrix."""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from attngraph_backends.numba.decode import decode_attention
from attngraph_backends.numba.kernels import flash_attention
from attngraph_backends.numpy.rules import rules as numpy_rules
from threadpoolctl import ThreadpoolController

from attngraph.array_math.masks import as_rank4
from attngraph.array_math.positions import PositionBiases, t5_buckets
from attngraph.array_math.rules import mask_args, operands_of
from attngraph.ir import Op
from attngraph.lowering import NodeCtx

# Threading layer. OpenMP with its default wait policy leaves its workers spinning after each kernel,
# and on a few cores they then starve the BLAS threads of the projections that follow (measured: a
# B1 T128 layer 3.1 -> 8.1 ms). The workqueue layer does not spin, but wakes its workers slowly (~0.3 ms a
# launch: a B1 decode step against 1024 keys took 1.4-2.1 ms on workqueue, 0.7 ms on OpenMP). With
# OMP_WAIT_POLICY=PASSIVE in the environment OpenMP workers sleep at once, so OpenMP is the better of
# both there (the layer 3.0 ms, decode 0.7 ms); without it, workqueue. Either way kernel calls take
# _KERNEL_LOCK (workqueue must not be entered from two Python threads at once). A
# NUMBA_THREADING_LAYER set by the user wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]  # workqueue if OpenMP cannot load
        numba.config.THREADING_LAYER = "default"
    else:
        numba.config.THREADING_LAYER = "workqueue"
_KERNEL_LOCK = threading.Lock()
_BLAS = ThreadpoolController()  # found once: a fresh threadpool_limits() rescans the loaded libraries (~0.4 ms)

rules = numpy_rules.extended("numba", without=(Op.ATTENTION, Op.VARLEN_ATTENTION))

# OpenBLAS runs a product through its lock-free small-matrix kernel only while M*N*K <= 1e6; above
# that, BLAS calls from the kernel's threads serialise on a lock (measured: 2.4x slower with two
# threads at 128x64x128 than at 64x64x128). Tiles are sized to stay under it.
SMALL_GEMM_LIMIT = 1_000_000


def auto_block_k(block_q: int, head_dim: int) -> int:
    """The largest power-of-two key block (16..128) keeping block_q x block_k x head_dim in BLAS's small path."""
    block_k = 128
    while block_k > 16 and block_q * block_k * head_dim > SMALL_GEMM_LIMIT:
        block_k //= 2
    return block_k


def _position_args(a: dict, named: dict, offsets: np.ndarray, sq: int, skv: int, hq: int, cd: np.dtype):
    """The kernel's position-bias arguments: ALiBi slopes before/after the softcap (zeros when off), T5's
    bias looked up per distance ``j - pos`` over the distances this call can meet, and the sinks."""
    biases = PositionBiases.of(a)
    slopes = np.asarray(biases.alibi_slopes or (0.0,) * hq, dtype=cd)
    zeros = np.zeros(hq, cd)
    pre, post = (slopes * cd.type(a["scale"]), zeros) if biases.alibi_before_scale else (zeros, slopes)
    rel, dmin = np.zeros((hq, 1), cd), 0
    if biases.rel_buckets:
        dmin = -int(offsets.max()) - max(sq - 1, 0)
        distances = np.arange(dmin, skv - int(offsets.min()), dtype=np.int64)
        buckets = t5_buckets(np, distances, biases.rel_buckets, biases.rel_max_distance, biases.rel_bidirectional)
        rel = np.ascontiguousarray(np.asarray(named["rel_table"], dtype=cd)[buckets].T)  # (Hq, distances)
    sinks = np.asarray(named["sinks"], dtype=cd) if "sinks" in named else zeros
    return pre, post, rel, dmin, sinks


# A step with at most this many queries (decode, short chunks) runs the split-K decode kernel when it
# needs no dense mask operand and no weights output; longer ones run the prefill kernel.
DECODE_MAX_QUERIES = 16
# Keys per decode tile. Measured (B1, 32/8 heads, head dim 128, cache 4096, 2 cores): 256 keys 1.5 ms,
# 512 keys 3.0 ms, 1024 keys 32 ms (the tile's two products fall off OpenBLAS's fast small-matrix path).
DECODE_BLOCK_K = 256


@rules.register(Op.ATTENTION)
def _attention(ctx: NodeCtx, q, k, v, *ops):
    a = ctx.node.attr_dict
    named = operands_of(ctx, ops)
    st = ctx.state
    cd = st.compute_dtype(ctx.node.inputs[0].type.dtype)
    qc, kc, vc = (np.ascontiguousarray(x, dtype=cd) for x in (q, k, v))  # no copy of a float32 cache
    batch, hq, sq, _ = qc.shape
    skv, dv = kc.shape[2], vc.shape[3]
    lengths = np.asarray(named["lengths"], dtype=np.int64) if "lengths" in named else np.full(batch, skv, np.int64)
    offsets = np.broadcast_to(np.asarray(mask_args(ctx, named, sq)["offset"], np.int64), (batch,)).copy()
    want = bool(a["return_weights"])
    pre, post, rel, rel_dmin, sinks = _position_args(a, named, offsets, sq, skv, hq, cd)
    out = np.empty((batch, hq, sq, dv), cd)
    common = (cd.type(a["scale"]), cd.type(a["softcap"]), bool(a["causal"]), int(a["window_left"]),
              int(a["window_right"]))
    biases = (pre, post, rel, rel_dmin, "rel_table" in named, sinks, "sinks" in named)
    if st.extra["threads"]:
        numba.set_num_threads(int(st.extra["threads"]))
    decode = sq <= DECODE_MAX_QUERIES and not want and "bias" not in named and "bool" not in named
    # the kernels' prange threads call BLAS per tile: a multi-threaded BLAS inside them oversubscribes
    # the cores (and OpenBLAS warns it may hang), so BLAS runs single-threaded for the call
    with _KERNEL_LOCK, _BLAS.limit(limits=1, user_api="blas"):
        if decode:
            tasks = batch * kc.shape[1]
            splits = max(1, min(-(-4 * numba.get_num_threads() // tasks), -(-skv // DECODE_BLOCK_K)))
            decode_attention(qc, kc, vc, offsets, lengths, *common, DECODE_BLOCK_K, splits, *biases, out)
            return out.astype(st.dtype(ctx.node.outputs[0].type.dtype), copy=False)
        weights = _flash(st, named, qc, kc, vc, offsets, lengths, common, biases, out, want, cd)
    y = out.astype(st.dtype(ctx.node.outputs[0].type.dtype), copy=False)
    return (y, weights.astype(st.dtype(ctx.node.outputs[1].type.dtype), copy=False)) if want else y


def _flash(st, named, qc, kc, vc, offsets, lengths, common, biases, out, want, cd):
    """The prefill kernel; keys past every row's length are left out of its packed copy of K (a static
    cache's unused tail costs nothing)."""
    batch, hq, sq, _ = qc.shape
    valid = int(min(kc.shape[2], max(int(lengths.max(initial=0)), 0)))
    if valid < kc.shape[2] and not want and "bias" not in named and "bool" not in named:
        kc, vc = kc[:, :, :valid], np.ascontiguousarray(vc[:, :, :valid])
    skv = kc.shape[2]
    block_q = int(st.extra["block_q"])
    block_k = int(st.extra["block_k"]) or auto_block_k(block_q, max(kc.shape[3], vc.shape[3]))
    full = (batch, hq, sq, skv)
    bias = np.broadcast_to(as_rank4(np, np.asarray(named["bias"]).astype(cd, copy=False)), full) \
        if "bias" in named else np.zeros((1, 1, 1, 1), cd)
    keep = np.broadcast_to(as_rank4(np, np.asarray(named["bool"], dtype=bool)), full) \
        if "bool" in named else np.ones((1, 1, 1, 1), bool)
    weights = np.zeros(full if want else (1, 1, 1, 1), cd)
    flash_attention(qc, kc, vc, bias, keep, "bias" in named, "bool" in named, offsets, lengths, *common, block_q,
                    block_k, out, weights, want, *biases)
    return weights


# ---- latent_attention (MLA's absorbed core): the latent-cache kernel (latent.py) -------------------------------
# Keys per tile of the latent kernel: a 16-head, 512-rank step at 256 keys stays in BLAS's small-matrix path.
LATENT_BLOCK_K = 256


@rules.register(Op.LATENT_ATTENTION)
def _latent_attention(ctx: NodeCtx, q_lat, q_rope, latent, rope_key, *ops):
    from attngraph_backends.numba.latent import latent_decode

    named = operands_of(ctx, ops)
    st = ctx.state
    cd = st.compute_dtype(ctx.node.inputs[0].type.dtype)
    if "bool" in named or "bias" in named:  # a dense mask operand: the shared array rules, step by step
        return _latent_dense(ctx, named, *(np.asarray(x, dtype=cd) for x in (q_lat, q_rope, latent, rope_key)))
    qc, qr, cc, kr = (np.ascontiguousarray(x, dtype=cd) for x in (q_lat, q_rope, latent, rope_key))  # no cache copy
    batch, hq, sq, r = qc.shape
    keys = cc.shape[2]
    lengths = np.asarray(named["lengths"], dtype=np.int64) if "lengths" in named else np.full(batch, keys, np.int64)
    offsets = np.broadcast_to(np.asarray(mask_args(ctx, named, sq)["offset"], np.int64), (batch,)).copy()
    out = np.empty((batch, hq, sq, r), cd)
    if st.extra["threads"]:
        numba.set_num_threads(int(st.extra["threads"]))
    tasks = batch * cc.shape[1]
    splits = max(1, min(-(-4 * numba.get_num_threads() // tasks), -(-keys // LATENT_BLOCK_K)))
    with _KERNEL_LOCK, _BLAS.limit(limits=1, user_api="blas"):
        latent_decode(qc, qr, cc, kr, offsets, lengths, cd.type(ctx.attr("scale")), bool(ctx.attr("causal")),
                      int(ctx.attr("window_left")), int(ctx.attr("window_right")), LATENT_BLOCK_K, splits, out)
    return out.astype(st.dtype(ctx.node.output.type.dtype), copy=False)


def _latent_dense(ctx: NodeCtx, named: dict, q_lat, q_rope, latent, rope_key):
    """latent_attention with a bool or additive mask: dense scores through the shared mask and softmax."""
    from attngraph.array_math.gqa import grouped_matmul
    from attngraph.array_math.masks import apply_mask
    from attngraph.array_math.softmax import safe_softmax

    s = (grouped_matmul(np, q_lat, latent, True) + grouped_matmul(np, q_rope, rope_key, True)) * ctx.attr("scale")
    s = apply_mask(np, s, 0, named, **mask_args(ctx, named, s.shape[2]))
    y = grouped_matmul(np, safe_softmax(np, s), latent, False, skip_zero_weights=True)
    return y.astype(ctx.state.dtype(ctx.node.output.type.dtype), copy=False)


# ---- varlen_attention (packed variable-length sequences): per-sequence tiles (varlen.py) -------------------------

@rules.register(Op.VARLEN_ATTENTION)
def _varlen_attention(ctx: NodeCtx, q, k, v, cu_q, cu_k):
    from attngraph_backends.numba.varlen import plan_tiles, varlen_attention

    from attngraph.lowering.varlen_checks import check_cu_seqlens

    st = ctx.state
    cd = st.compute_dtype(ctx.node.inputs[0].type.dtype)
    qc, kc, vc = (np.ascontiguousarray(x[0], dtype=cd) for x in (q, k, v))  # the batch axis is 1: (H, T, D)
    cq, ck = np.ascontiguousarray(cu_q, np.int64), np.ascontiguousarray(cu_k, np.int64)
    # the kernel indexes with these unchecked: a computed cu_seqlens (not a graph input, so not checked by
    # value_checks) is checked here, O(num_seqs), rather than read out of bounds
    for cu, index, what, packed in ((cq, 3, "queries", qc), (ck, 4, "keys", kc)):
        check_cu_seqlens(ctx.node.inputs[index].name, what, cu, packed.shape[1])
    hq, dv = qc.shape[0], vc.shape[2]
    causal, bottom_right = bool(ctx.attr("causal")), ctx.attr("align") == "bottom_right"
    block_q = int(st.extra["block_q"])
    block_k = int(st.extra["block_k"]) or auto_block_k(block_q, max(kc.shape[2], dv))
    out = np.zeros((hq, qc.shape[1], dv), cd)
    if st.extra["threads"]:
        numba.set_num_threads(int(st.extra["threads"]))
    group = hq // kc.shape[0]
    per_tile = max(1, block_q // group)  # queries per tile: the group's q heads stacked keep block_q rows
    wl, wr = int(ctx.attr("window_left")), int(ctx.attr("window_right"))
    tiles = plan_tiles(cq, ck, kc.shape[0], per_tile, causal, bottom_right, wl, wr)
    with _KERNEL_LOCK, _BLAS.limit(limits=1, user_api="blas"):
        varlen_attention(qc, kc, vc, cq, ck, tiles, max(1, min(numba.get_num_threads(), len(tiles))),
                         cd.type(ctx.attr("scale")), causal, bottom_right, wl, wr, cd.type(ctx.attr("softcap")),
                         per_tile, block_k,
                         int(np.diff(cq).max(initial=0)) > DECODE_MAX_QUERIES, out)
    return out[None].astype(st.dtype(ctx.node.output.type.dtype), copy=False)


# ---- quant_attention (a quantized KV cache): the int8 / float8 decode kernel (quant_rule.py, quant_decode.py) ---
# its rule is registered in `rules` by quant_rule.py itself, imported by backend.py (no import cycle)
