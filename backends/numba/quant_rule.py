"""The Numba rule of ``quant_attention`` (a quantized KV cache): decode steps run ``quant_decode.py``, which reads
the int8 / float8 cache and its scales in place; a long prefill (more than ``DECODE_MAX_QUERIES`` queries), a
dense mask, a weights output or scales of another shape dequantize the cache and run the float kernels (a float
copy, counted against the step only when the prompt is long)."""

from __future__ import annotations

import functools

import numba
import numpy as np
from attngraph_backends.numba import rules as base

from attngraph.array_math.rules import mask_args, operands_of
from attngraph.ir import DType
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering import NodeCtx


@functools.cache
def _float8_table() -> np.ndarray:
    """The float32 value of every float8 e4m3fn bit pattern (NaN included)."""
    return np.arange(256, dtype=np.uint8).view(to_numpy(DType.FLOAT8_E4M3FN)).astype(np.float32)


_NO_TABLE = np.zeros(1, np.float32)


def _token_scales(s) -> np.ndarray | None:
    """A (B|1, H|1, T|1, 1) scale as the kernel's (Bs, Hs, Ms) float32 array, or None for another shape."""
    s = np.asarray(s, np.float32)
    if s.ndim > 4 or s.shape[-1] != 1:
        return None
    s = s.reshape((1,) * (4 - s.ndim) + s.shape)
    return np.ascontiguousarray(s[..., 0])


def _stored(x) -> tuple[np.ndarray, np.ndarray, bool]:
    """The cache as the kernel reads it: int8 itself, float8 as its bits (uint8) with the value table."""
    x = np.ascontiguousarray(x)  # the cache buffer itself when it is contiguous: no copy
    if x.dtype == np.int8:
        return x, _NO_TABLE, False
    return x.view(np.uint8), _float8_table(), True


def _dequantized(x, s) -> np.ndarray:
    return np.asarray(x, np.float32) * np.asarray(s, np.float32)


@base.rules.register(base.Op.QUANT_ATTENTION)
def _quant_attention(ctx: NodeCtx, q, kq, ks, vq, vs, *ops):
    a = ctx.node.attr_dict
    named = operands_of(ctx, ops)
    cd = np.dtype(np.float32)
    qc = np.ascontiguousarray(q, dtype=cd)
    batch, hq, sq, _ = qc.shape
    k_scale, v_scale = _token_scales(ks), _token_scales(vs)
    decode = (sq <= base.DECODE_MAX_QUERIES and not a["return_weights"] and "bias" not in named
              and "bool" not in named and k_scale is not None and v_scale is not None
              and ctx.node.inputs[0].type.dtype is DType.FLOAT32)
    if not decode:
        return base._attention(ctx, q, _dequantized(kq, ks), _dequantized(vq, vs), *ops)
    (k, lut, use_lut), (v, _, _) = _stored(kq), _stored(vq)
    skv, dv = k.shape[2], v.shape[3]
    lengths = np.asarray(named["lengths"], dtype=np.int64) if "lengths" in named else np.full(batch, skv, np.int64)
    offsets = np.broadcast_to(np.asarray(mask_args(ctx, named, sq)["offset"], np.int64), (batch,)).copy()
    pre, post, rel, rel_dmin, sinks = base._position_args(a, named, offsets, sq, skv, hq, cd)
    out = np.empty((batch, hq, sq, dv), cd)
    st = ctx.state
    if st.extra["threads"]:
        numba.set_num_threads(int(st.extra["threads"]))
    from attngraph_backends.numba.quant_decode import quant_decode_attention

    with base._KERNEL_LOCK, base._BLAS.limit(limits=1, user_api="blas"):
        tasks = batch * k.shape[1]
        splits = max(1, min(-(-4 * numba.get_num_threads() // tasks), -(-skv // base.DECODE_BLOCK_K)))
        quant_decode_attention(qc, k, k_scale, v, v_scale, lut, use_lut, offsets, lengths, cd.type(a["scale"]),
                               cd.type(a["softcap"]), bool(a["causal"]), int(a["window_left"]),
                               int(a["window_right"]), base.DECODE_BLOCK_K, splits, pre, post, rel, rel_dmin,
                               "rel_table" in named, sinks, "sinks" in named, out)
    return out.astype(st.dtype(ctx.node.outputs[0].type.dtype), copy=False)
