"""Type rules of the quantized KV cache: ``quantize``, ``dequantize`` and ``quant_attention``.

The convention (one row of ``attngraph.ir.semantics``):

* ``quantize(x, scale) {dtype}``: ``x`` float, ``scale`` float32 broadcastable to ``x``. In float32,
  ``y = x / scale`` saturated to ``[-QMAX, QMAX]`` (int8: 127; float8_e4m3fn: 448), then rounded half to even
  onto the storage grid (int8: integers; float8: e4m3fn values). NaN: float8 keeps it; int8 has none and stores 0
  (a per-token scale of a NaN token is NaN itself, so that token still reads back NaN).
* ``dequantize(q, scale) {dtype}``: ``float32(q) * scale``, in the float ``dtype``.
* ``quant_attention(q, k_q, k_scale, v_q, v_scale, *operands) {attention's attributes}``:
  ``attention(q, dequantize(k_q, k_scale), dequantize(v_q, v_scale), *operands)``; a backend may read the
  quantized cache and its scales directly (the numba decode kernel does) and never build the float copy.

Scales: ``per_token_head`` writes ``scale = amax(|x|) / QMAX`` over each token's head dims (1 where amax is 0)
next to the cache in a float32 ``(B, H, max_len, 1)`` buffer; ``per_head`` takes calibrated float32 scales
``(H,)`` as parameters (a value beyond ``QMAX * scale`` saturates). Built by the constructors with
``kv_cache_dtype=`` and ``kv_scale=`` (``attngraph.frontends.quant_cache``).
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir.attention_specs import ATTENTION_SPECS
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import REQUIRED, OpSpec, broadcast, need_float, same
from attngraph.ir.types import FLOAT_DTYPES, QUANT_DTYPES, DType, TensorType

# the largest stored magnitude of each quantized dtype: saturation bound and the divisor of a per-token scale
QMAX = {DType.INT8: 127.0, DType.FLOAT8_E4M3FN: 448.0}


def _quant_dtype(a: dict[str, Attr], op: str) -> DType:
    try:
        dt = DType.parse(a["dtype"])
    except ValueError:
        dt = None
    if dt not in QUANT_DTYPES:
        raise GraphError(f"{op} dtype must be one of {sorted(d.value for d in QUANT_DTYPES)}, got {a['dtype']!r}")
    return dt


def _need_scale(x: TensorType, scale: TensorType, op: str) -> None:
    if scale.dtype is not DType.FLOAT32:
        raise GraphError(f"{op} scale must be float32, got {scale}")
    grown = broadcast([x.shape, scale.shape], f"{op} scale")
    if len(grown) != x.rank or not all(same(a, b) for a, b in zip(grown, x.shape)):
        raise GraphError(f"{op} scale {scale} must broadcast to the values {x} without growing them")


def _quantize(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x, scale = ts
    need_float(x, "quantize input")
    _need_scale(x, scale, "quantize")
    return (TensorType(_quant_dtype(a, "quantize"), x.shape),)


def _dequantize(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q, scale = ts
    if q.dtype not in QUANT_DTYPES:
        raise GraphError(f"dequantize input must be int8 or float8_e4m3fn, got {q}")
    _need_scale(q, scale, "dequantize")
    dt = DType.parse(a["dtype"])
    if dt not in FLOAT_DTYPES:
        raise GraphError(f"dequantize dtype must be a float type, got {a['dtype']!r}")
    return (TensorType(dt, q.shape),)


def _quant_attention(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q, k, ks, v, vs = ts[:5]
    for t, s, what in ((k, ks, "quant_attention k"), (v, vs, "quant_attention v")):
        if t.dtype not in QUANT_DTYPES:
            raise GraphError(f"{what} must be int8 or float8_e4m3fn, got {t}")
        _need_scale(t, s, what)
    kf, vf = TensorType(q.dtype, k.shape), TensorType(q.dtype, v.shape)
    return ATTENTION_SPECS[Op.ATTENTION].infer((q, kf, vf, *ts[5:]), a)


_ATTENTION = ATTENTION_SPECS[Op.ATTENTION]
QUANT_SPECS = {
    Op.QUANTIZE: OpSpec(2, 2, {"dtype": REQUIRED}, _quantize),
    Op.DEQUANTIZE: OpSpec(2, 2, {"dtype": "float32"}, _dequantize),
    Op.QUANT_ATTENTION: OpSpec(5, _ATTENTION.max_inputs + 2, dict(_ATTENTION.attrs), _quant_attention),
}
