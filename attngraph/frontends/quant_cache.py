"""The quantized static (or rolling) KV cache of the constructors: ``kv_cache_dtype="int8" | "float8_e4m3fn"``.

The new keys and values are quantized at write time (``quantize``, the rounding rule of
``attngraph.ir.quant_specs``), written into the quantized buffers ``past_key``/``past_value`` with
``cache_update``, and read back through ``dequantize`` (``passes.fuse_quant_attention`` folds that read into the
attention node, so a backend with a quantized kernel never builds the float cache). Scales:

* ``kv_scale="per_token_head"``: ``scale = amax(|x|) / QMAX`` over each new token's head dims (1 where the
  token is all zeros), written at the same slots of float32 buffers ``past_key_scale``/``past_value_scale``
  ``(B, kv_heads, max_len, 1)`` (outputs ``present_key_scale``/``present_value_scale``);
* ``kv_scale="per_head"``: calibrated float32 parameters ``k_scale``/``v_scale`` ``(kv_heads,)``.
"""

from __future__ import annotations

from attngraph.ir import DType, Op, Value
from attngraph.ir.builder import GraphBuilder
from attngraph.ir.quant_specs import QMAX

F32 = DType.FLOAT32


def _token_scale(b: GraphBuilder, x: Value, qmax: float, tag: str) -> Value:
    """amax(|x|) / qmax over the last axis, keepdims; 1 where amax is 0 (so 0 / scale is 0, not NaN)."""
    amax = b.op(Op.REDUCE_MAX, b.op(Op.ABS, x, name=f"{tag}_abs"), axis=-1, keepdims=True, name=f"{tag}_amax")
    scale = b.op(Op.DIV, amax, b.op(Op.CONST, value=qmax, dtype="float32", name=f"{tag}_qmax"), name=f"{tag}_step")
    zero = b.op(Op.EQUAL, amax, b.op(Op.CONST, value=0.0, dtype="float32", name=f"{tag}_zero"), name=f"{tag}_is_zero")
    return b.op(Op.WHERE, zero, b.op(Op.CONST, value=1.0, dtype="float32", name=f"{tag}_one"), scale,
                name=f"{tag}_scale")


def write_quant_cache(b: GraphBuilder, c, k: Value, v: Value, lengths: Value, mode: str):
    """Quantize and write the new K/V; returns (K read back, V read back, the cache outputs)."""
    dt = DType.parse(c.kv_cache_dtype)
    qmax = QMAX[dt]
    slots = ("batch", c.kv_heads, c.max_len if isinstance(c.max_len, str) else int(c.max_len))
    reads, outputs, scale_outputs = [], [], []
    for new, tag, width in ((k, "key", c.qk_head_dim), (v, "value", c.value_head_dim)):
        past = b.input(f"past_{tag}", dt, slots + (width,))
        if c.kv_scale == "per_token_head":
            scale = _token_scale(b, new, qmax, f"{tag}_new")
            past_scale = b.input(f"past_{tag}_scale", F32, slots + (1,))
            read_scale = b.op(Op.CACHE_UPDATE, past_scale, scale, lengths, mode=mode, name=f"present_{tag}_scale")
            scale_outputs.append(read_scale)
        else:  # calibrated, one per kv head, broadcast over (B, H, S, D)
            param = b.param(f"{tag[0]}_scale", F32, (c.kv_heads,))
            scale = read_scale = b.op(Op.RESHAPE, param, shape=(1, c.kv_heads, 1, 1), name=f"{tag}_head_scale")
        stored = b.op(Op.QUANTIZE, new, scale, dtype=dt.value, name=f"{tag}_quantized")
        present = b.op(Op.CACHE_UPDATE, past, stored, lengths, mode=mode, name=f"present_{tag}")
        outputs.append(present)
        reads.append(b.op(Op.DEQUANTIZE, present, read_scale, dtype="float32", name=f"{tag}_read"))
    return reads[0], reads[1], outputs + scale_outputs
