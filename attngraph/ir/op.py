"""The closed vocabulary of ops, and the named groups of it that passes and tables use.

Two layers, like JAX's primitives and its ``lower_fun`` decompositions:

* **attention ops** (``linear`` ... ``attention``) say what attention means, one convention each
  (``attngraph.ir.semantics``). Every backend may give them a fast rule; where it has none, the
  op is expanded by its default decomposition (``attngraph.lowering.decompositions``).
* **primitives** (``const`` ... ``where``) are the small elementwise and shape ops that the
  attention ops decompose into. Every backend has a rule for each of them, so every op runs on
  every backend.

Every rule table is keyed by ``Op`` and lists its rules in this order.
"""

from __future__ import annotations

import enum


class Op(enum.StrEnum):
    """Every op of the IR."""

    # ---- attention ops: projections and layout
    LINEAR = "linear"              # x @ w (+ b); inputs (x, w[, b])
    SPLIT_HEADS = "split_heads"    # (B, S, H*D) -> (B, H, S, D); attrs: heads
    CONCAT = "concat"              # join on one axis; the KV cache's past+new; attrs: axis
    SPLIT = "split"                # one input, several outputs cut on one axis; attrs: axis, sizes
    # ---- attention ops: the core
    MATMUL = "matmul"              # (B, Hq, M, K) @ (B, Hkv, K, N) with GQA head grouping; attrs: transpose_b
    SCALE = "scale"                # x * value; attrs: value
    SOFTCAP = "softcap"            # cap * tanh(x / cap); attrs: cap
    MASK = "mask"                  # structured + dense masking of scores; see MASK_ATTRS
    SOFTMAX = "softmax"            # over the last axis; fully masked (all -inf) rows give 0
    WEIGHTED_SUM = "weighted_sum"  # probs (B, Hq, Sq, Skv) @ v (B, Hkv, Skv, Dv) with GQA grouping
    MERGE_HEADS = "merge_heads"    # (B, H, S, D) -> (B, S, H*D), the head concat
    CLAMP = "clamp"                # min(max(x, low), high); MPT's clip_qkv; attrs: low, high
    # ---- attention ops: positions and normalisation
    ROTARY = "rotary"              # rotary embedding of (B, H, S, D) at positions; see position_specs
    RMS_NORM = "rms_norm"          # x / sqrt(mean(x^2) + eps) * w (or * (1 + w)) over the last axis (QK-norm)
    ALIBI = "alibi"                # scores + slope_h * (j - pos_i); attrs: slopes, offset, align
    REL_BIAS = "rel_bias"          # scores + table[bucket(j - pos_i), h] (T5); attrs: num_buckets, max_distance, ...
    # ---- attention ops: the static KV cache
    CACHE_UPDATE = "cache_update"  # cache (B,H,M,D) with new (B,H,S,D) written at [len_b, len_b+S); attrs: mode
    # ---- attention ops: fused
    ATTENTION = "attention"        # the whole core in one op; created by passes.fuse_attention
    LATENT_ATTENTION = "latent_attention"  # MLA's absorbed core on the latent cache; created by passes.absorb_mla
    VARLEN_ATTENTION = "varlen_attention"  # packed sequences cut by cu_seqlens_q/k; attrs: scale, causal, align, window
    # ---- attention ops: the quantized KV cache (attngraph.ir.quant_specs)
    QUANTIZE = "quantize"          # x / scale, saturated, rounded half to even, stored int8 / float8; attrs: dtype
    DEQUANTIZE = "dequantize"      # float(q) * scale; attrs: dtype (the float result)
    QUANT_ATTENTION = "quant_attention"  # attention reading a quantized K/V and their scales; passes.fuse_quant_attention
    # ---- attention ops: the paged KV cache (attngraph.ir.paged_specs)
    PAGED_CACHE_UPDATE = "paged_cache_update"  # new (B,H,S,D) written into blocks via the block table; attrs: layout
    PAGED_ATTENTION = "paged_attention"  # attention reading each row's blocks in table order; attrs: scale, causal, ...
    # ---- primitives: values
    CONST = "const"                # a scalar or 1-D constant (a symbolic dim's value too); attrs: value, dtype
    IOTA = "iota"                  # 0, 1, ..., length-1; attrs: length (may be symbolic), dtype
    CAST = "cast"                  # to another dtype; attrs: dtype
    # ---- primitives: elementwise, NumPy broadcasting
    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    TANH = "tanh"
    SQRT = "sqrt"
    SIN = "sin"
    COS = "cos"
    ABS = "abs"
    FLOOR = "floor"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    MOD = "mod"                    # integer floor modulo (the divisor's sign, as Python and ONNX Mod(fmod=0))
    LESS = "less"
    LESS_EQUAL = "less_equal"
    EQUAL = "equal"
    AND = "and"
    OR = "or"
    NOT = "not"
    WHERE = "where"                # where(cond, a, b)
    # ---- primitives: reductions, contraction, layout
    REDUCE_MAX = "reduce_max"      # attrs: axis, keepdims; NaN propagates
    REDUCE_SUM = "reduce_sum"      # attrs: axis, keepdims
    DOT = "dot"                    # batched matrix product with NumPy matmul broadcasting
    RESHAPE = "reshape"            # attrs: shape (dims, may be symbolic)
    TRANSPOSE = "transpose"        # attrs: perm
    SLICE = "slice"                # attrs: axis, start, stop (dims)
    GATHER = "gather"              # table[indices] along axis 0: indices.shape + table.shape[1:]


UNARY = frozenset({Op.NEG, Op.EXP, Op.LOG, Op.TANH, Op.SQRT, Op.SIN, Op.COS, Op.ABS, Op.FLOOR})
BINARY_ARITHMETIC = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MAXIMUM, Op.MINIMUM, Op.MOD})
COMPARISON = frozenset({Op.LESS, Op.LESS_EQUAL, Op.EQUAL})
BINARY = BINARY_ARITHMETIC | COMPARISON | {Op.AND, Op.OR}
PRIMITIVES = frozenset({Op.CONST, Op.IOTA, Op.CAST, Op.NOT, Op.WHERE, Op.REDUCE_MAX, Op.REDUCE_SUM, Op.DOT, Op.RESHAPE,
                        Op.TRANSPOSE, Op.SLICE, Op.GATHER, Op.CONCAT, Op.SPLIT}) | UNARY | BINARY
# the ops between the Q.K product and the softmax: what fuse_attention folds into one node
SCORE_OPS = frozenset({Op.SCALE, Op.SOFTCAP, Op.MASK, Op.ALIBI, Op.REL_BIAS})
