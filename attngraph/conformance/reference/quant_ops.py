"""The reference rules of the quantized KV cache, from the convention (``attngraph.ir.quant_specs``).

The quantized values are computed exactly as the convention states (the division in float32, saturation,
round half to even onto the grid) and then held in float64, where every int8 and float8_e4m3fn value is exact;
``dequantize`` is then one float64 product, and ``quant_attention`` the reference attention on those values."""

from __future__ import annotations

import numpy as np

from attngraph.conformance.reference.attention_ops import ATTENTION_OPS
from attngraph.ir import DType, Op
from attngraph.ir.dtypes import to_numpy
from attngraph.ir.quant_specs import QMAX


def quantize_values(x: np.ndarray, scale: np.ndarray, dtype: DType) -> np.ndarray:
    """The stored grid values of ``x`` (as float64): float32 ``x / scale``, saturated, rounded half to even."""
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.asarray(x, np.float32) / np.asarray(scale, np.float32)
    qmax = np.float32(QMAX[dtype])
    y = np.clip(y, -qmax, qmax)  # NaN stays NaN
    if dtype is DType.INT8:
        return np.where(np.isnan(y), 0.0, np.rint(y)).astype(np.float64)  # rint: half to even; int8 holds no NaN
    return y.astype(to_numpy(dtype)).astype(np.float64)  # ml_dtypes: round to nearest even


def _quantize(node, bound, x, scale):
    return quantize_values(x, scale, DType(node.attr("dtype")))


def _dequantize(node, bound, q, scale):
    return np.asarray(q, np.float64) * np.asarray(scale, np.float64)


def _quant_attention(node, bound, q, k, ks, v, vs, *ops):
    return ATTENTION_OPS[Op.ATTENTION](node, bound, q, _dequantize(node, bound, k, ks),
                                       _dequantize(node, bound, v, vs), *ops)


QUANT_OPS = {Op.QUANTIZE: _quantize, Op.DEQUANTIZE: _dequantize, Op.QUANT_ATTENTION: _quant_attention}
