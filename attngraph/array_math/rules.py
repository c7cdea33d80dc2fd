"""``ARRAY_RULES``: a rule for every op that has no default decomposition and for the attention ops
where a direct rule is faster, written once against the array API. The NumPy and torch backends
start from this table (``ARRAY_RULES.extended(name)``) and so does any plug-in backend for an
array-API library: it gets masks, the safe softmax, GQA and chunked attention without code of its own.

Rules compute in the compute dtype (float32, or float64 for float64 graphs) and return the node's
output dtype. ``ctx.state`` is an ``ArrayState``.
"""

from __future__ import annotations

from typing import Any

from attngraph.array_math.attention import chunked_attention
from attngraph.array_math.cache import write_cache
from attngraph.array_math.gqa import grouped_matmul
from attngraph.array_math.masks import apply_mask, query_offset
from attngraph.array_math.positions import (
    PositionBiases,
    alibi_bias,
    apply_rotary,
    key_distance,
    relative_bias,
    rms_norm,
    rotary_tables,
)
from attngraph.array_math.softmax import safe_softmax
from attngraph.ir import DType, Op
from attngraph.lowering.rules import NodeCtx, Rules

ARRAY_RULES = Rules("array")


def compute(ctx: NodeCtx, x: Any, index: int = 0) -> Any:
    """Input ``index`` of the node in its compute dtype (no copy when it already is)."""
    return ctx.state.xp.astype(x, ctx.state.compute_dtype(ctx.node.inputs[index].type.dtype), copy=False)


def out(ctx: NodeCtx, x: Any, index: int = 0) -> Any:
    """``x`` in the dtype of the node's output ``index``."""
    return ctx.state.xp.astype(x, ctx.state.dtype(ctx.node.outputs[index].type.dtype), copy=False)


def mask_args(ctx: NodeCtx, operands: dict, q_len: int) -> dict:
    """The mask attributes of ``ctx.node`` as keyword arguments of the shared mask functions."""
    offset = query_offset(ctx.dim(ctx.attr("offset")), ctx.attr("align"), operands.get("lengths"), q_len)
    return {"causal": bool(ctx.attr("causal")), "offset": offset, "window_left": int(ctx.attr("window_left")),
            "window_right": int(ctx.attr("window_right"))}


def operands_of(ctx: NodeCtx, values: tuple) -> dict[str, Any]:
    return dict(zip(ctx.attr("operands"), values, strict=True))


# ---- attention ops ---------------------------------------------------------------------------------

@ARRAY_RULES.register(Op.LINEAR)
def _linear(ctx, x, w, b=None):
    xp = ctx.state.xp
    y = xp.matmul(compute(ctx, x), compute(ctx, w, 1))
    if b is not None:
        y += compute(ctx, b, 2)  # in place: no second output-sized temporary
    return out(ctx, y)


@ARRAY_RULES.register(Op.SPLIT_HEADS)
def _split_heads(ctx, x):
    xp = ctx.state.xp
    batch, seq, hidden = x.shape
    heads = ctx.attr("heads")
    return xp.permute_dims(xp.reshape(x, (batch, seq, heads, hidden // heads)), (0, 2, 1, 3))


@ARRAY_RULES.register(Op.CONCAT)
def _concat(ctx, *xs):
    return ctx.state.xp.concat(xs, axis=ctx.attr("axis"))


@ARRAY_RULES.register(Op.SPLIT)
def _split(ctx, x):
    axis = ctx.attr("axis") % x.ndim
    parts, start = [], 0
    for size in ctx.attr("sizes"):
        index = (slice(None),) * axis + (slice(start, start + size),)
        parts.append(x[index])
        start += size
    return tuple(parts)


@ARRAY_RULES.register(Op.MATMUL)
def _matmul(ctx, a, b):
    return out(ctx, grouped_matmul(ctx.state.xp, compute(ctx, a), compute(ctx, b, 1), ctx.attr("transpose_b")))


@ARRAY_RULES.register(Op.SCALE)
def _scale(ctx, x):
    return out(ctx, compute(ctx, x) * float(ctx.attr("value")))


@ARRAY_RULES.register(Op.SOFTCAP)
def _softcap(ctx, x):
    cap = float(ctx.attr("cap"))
    return out(ctx, cap * ctx.state.xp.tanh(compute(ctx, x) / cap))


@ARRAY_RULES.register(Op.MASK)
def _mask(ctx, scores, *operands):
    named = operands_of(ctx, operands)
    xp = ctx.state.xp
    masked = apply_mask(xp, compute(ctx, scores), 0, named, device=ctx.state.device,
                        **mask_args(ctx, named, scores.shape[2]))
    return out(ctx, masked)


@ARRAY_RULES.register(Op.SOFTMAX)
def _softmax(ctx, x, sinks=None):
    return out(ctx, safe_softmax(ctx.state.xp, compute(ctx, x), None if sinks is None else compute(ctx, sinks, 1)))


@ARRAY_RULES.register(Op.WEIGHTED_SUM)
def _weighted_sum(ctx, p, v):
    return out(ctx, grouped_matmul(ctx.state.xp, compute(ctx, p), compute(ctx, v, 1), False, skip_zero_weights=True))


@ARRAY_RULES.register(Op.MERGE_HEADS)
def _merge_heads(ctx, x):
    xp = ctx.state.xp
    batch, heads, seq, size = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (batch, seq, heads * size))


@ARRAY_RULES.register(Op.ATTENTION)
def _attention(ctx, q, k, v, *operands):
    named = operands_of(ctx, operands)
    want = bool(ctx.attr("return_weights"))
    y, weights = chunked_attention(
        ctx.state.xp, q, k, v, named, scale=float(ctx.attr("scale")), softcap=float(ctx.attr("softcap")),
        return_weights=want, compute=ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype),
        max_bytes=ctx.state.max_scores_bytes, device=ctx.state.device, biases=PositionBiases.of(ctx.node.attr_dict),
        **mask_args(ctx, named, q.shape[2]))
    return (out(ctx, y), out(ctx, weights, 1)) if want else out(ctx, y)


@ARRAY_RULES.register(Op.ROTARY)
def _rotary(ctx, x, *operands):
    xp, a = ctx.state.xp, ctx.node.attr_dict
    rest = list(operands)
    seq, rd = x.shape[2], int(a["rotary_dim"]) or x.shape[3]
    if "positions" in a["operands"]:
        positions = rest.pop(0)
    else:
        positions = xp.reshape(xp.arange(seq, device=ctx.state.device) + ctx.dim(a["offset"]), (1, seq))
    cd = ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype)
    if "cos_sin" in a["operands"]:
        cos, sin = (xp.astype(xp.expand_dims(xp.take(c, xp.reshape(positions, (-1,)), axis=0), axis=1), cd)
                    for c in rest)
        shape = (positions.shape[0], 1, seq, rd // 2)
        cos, sin = xp.reshape(cos, shape) * a["attention_scaling"], xp.reshape(sin, shape) * a["attention_scaling"]
    else:
        cos, sin = rotary_tables(xp, positions, a["inv_freq"], float(a["attention_scaling"]), cd, ctx.state.device)
    return out(ctx, apply_rotary(xp, compute(ctx, x), cos, sin, a["layout"], rd))


@ARRAY_RULES.register(Op.RMS_NORM)
def _rms_norm(ctx, x, w):
    return out(ctx, rms_norm(ctx.state.xp, compute(ctx, x), compute(ctx, w, 1), float(ctx.attr("eps")),
                             bool(ctx.attr("add_one"))))


def _distance(ctx, scores, operands) -> Any:
    lengths = operands[-1] if ctx.attr("align") == "lengths" else None
    offset = query_offset(ctx.dim(ctx.attr("offset")), ctx.attr("align"), lengths, scores.shape[2])
    return key_distance(ctx.state.xp, 0, scores.shape[2], scores.shape[3], offset, ctx.state.device)


@ARRAY_RULES.register(Op.ALIBI)
def _alibi(ctx, scores, *operands):
    s = compute(ctx, scores)
    return out(ctx, s + alibi_bias(ctx.state.xp, ctx.attr("slopes"), _distance(ctx, scores, operands), s.dtype,
                                   ctx.state.device))


@ARRAY_RULES.register(Op.REL_BIAS)
def _rel_bias(ctx, scores, table, *operands):
    bias = relative_bias(ctx.state.xp, compute(ctx, table, 1), _distance(ctx, scores, operands),
                         int(ctx.attr("num_buckets")), int(ctx.attr("max_distance")), bool(ctx.attr("bidirectional")))
    return out(ctx, compute(ctx, scores) + bias)


@ARRAY_RULES.register(Op.CACHE_UPDATE)
def _cache_update(ctx, cache, new, lengths):
    """Write the new entries into the cache's own buffer when the backend may (``cache_inplace``, the default,
    and the buffer is writable), else into a copy: no step costs O(max_len) copies when done in place."""
    xp = ctx.state.xp
    writable = getattr(getattr(cache, "flags", None), "writeable", True)
    target = cache if ctx.state.extra.get("cache_inplace", True) and writable else xp.asarray(cache, copy=True)
    write_cache(xp, target, new, lengths, ctx.attr("mode"))
    return target


# ---- primitives ------------------------------------------------------------------------------------

@ARRAY_RULES.register(Op.CONST)
def _const(ctx, *_):
    value = ctx.attr("value")
    values = [ctx.dim(v) if isinstance(v, str) else v for v in (value if isinstance(value, tuple) else (value,))]
    data = values if isinstance(value, tuple) else values[0]
    return ctx.state.xp.asarray(data, dtype=ctx.state.dtype(DType(ctx.attr("dtype"))), device=ctx.state.device)


@ARRAY_RULES.register(Op.IOTA)
def _iota(ctx):
    xp = ctx.state.xp
    return xp.arange(ctx.dim(ctx.attr("length")), dtype=ctx.state.dtype(DType(ctx.attr("dtype"))),
                     device=ctx.state.device)


@ARRAY_RULES.register(Op.CAST)
def _cast(ctx, x):
    return ctx.state.xp.astype(x, ctx.state.dtype(DType(ctx.attr("dtype"))))


def _elementwise(op: Op, name: str) -> None:
    def rule(ctx, *xs):
        return getattr(ctx.state.xp, name)(*xs)
    rule.__name__ = f"_{op.value}"
    ARRAY_RULES.register(op)(rule)


for _op, _name in ((Op.NEG, "negative"), (Op.EXP, "exp"), (Op.LOG, "log"), (Op.TANH, "tanh"), (Op.SQRT, "sqrt"),
                   (Op.SIN, "sin"), (Op.COS, "cos"), (Op.ABS, "abs"), (Op.FLOOR, "floor"), (Op.ADD, "add"),
                   (Op.SUB, "subtract"), (Op.MUL, "multiply"), (Op.DIV, "divide"), (Op.MAXIMUM, "maximum"),
                   (Op.MINIMUM, "minimum"), (Op.MOD, "remainder"), (Op.LESS, "less"), (Op.LESS_EQUAL, "less_equal"),
                   (Op.EQUAL, "equal"), (Op.AND, "logical_and"), (Op.OR, "logical_or"),
                   (Op.NOT, "logical_not"), (Op.WHERE, "where")):
    _elementwise(_op, _name)


@ARRAY_RULES.register(Op.REDUCE_MAX)
def _reduce_max(ctx, x):
    xp, axis, keepdims = ctx.state.xp, ctx.attr("axis"), bool(ctx.attr("keepdims"))
    if x.shape[axis] == 0:  # the maximum over nothing is -inf (the identity), as the semantics say
        return xp.full(tuple(ctx.dim(d) for d in ctx.node.output.type.shape), -float("inf"), dtype=x.dtype,
                       device=ctx.state.device)
    return xp.max(x, axis=axis, keepdims=keepdims)


@ARRAY_RULES.register(Op.REDUCE_SUM)
def _reduce_sum(ctx, x):
    return ctx.state.xp.sum(x, axis=ctx.attr("axis"), keepdims=bool(ctx.attr("keepdims")))


@ARRAY_RULES.register(Op.DOT)
def _dot(ctx, a, b):
    return ctx.state.xp.matmul(a, b)


@ARRAY_RULES.register(Op.RESHAPE)
def _reshape(ctx, x):
    return ctx.state.xp.reshape(x, tuple(ctx.dim(d) for d in ctx.attr("shape")))


@ARRAY_RULES.register(Op.TRANSPOSE)
def _transpose(ctx, x):
    return ctx.state.xp.permute_dims(x, tuple(ctx.attr("perm")))


@ARRAY_RULES.register(Op.SLICE)
def _slice(ctx, x):
    axis = ctx.attr("axis") % x.ndim
    return x[(slice(None),) * axis + (slice(ctx.dim(ctx.attr("start")), ctx.dim(ctx.attr("stop"))),)]


@ARRAY_RULES.register(Op.GATHER)
def _gather(ctx, table, indices):
    xp = ctx.state.xp
    flat = xp.take(table, xp.reshape(indices, (-1,)), axis=0)
    return xp.reshape(flat, tuple(indices.shape) + tuple(table.shape[1:]))


# ---- varlen_attention: each packed sequence on its own slices (array_math/varlen.py) ----------------------------

@ARRAY_RULES.register(Op.VARLEN_ATTENTION)
def _varlen_attention(ctx, q, k, v, cu_q, cu_k):
    from attngraph.array_math.varlen import varlen_attention

    cd = ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype)
    y = varlen_attention(ctx.state.xp, q, k, v, cu_q, cu_k, scale=float(ctx.attr("scale")),
                         causal=bool(ctx.attr("causal")), bottom_right=ctx.attr("align") == "bottom_right", compute=cd,
                         max_bytes=ctx.state.max_scores_bytes, device=ctx.state.device,
                         window_left=int(ctx.attr("window_left")), window_right=int(ctx.attr("window_right")),
                         softcap=float(ctx.attr("softcap")))
    return out(ctx, y)


# ---- the paged KV cache's write, in place (array_math/paged.py) -------------------------------------------------

@ARRAY_RULES.register(Op.PAGED_CACHE_UPDATE)
def _paged_cache_update(ctx, pool, new, table, lengths):
    """Write into the pool's own buffer when the backend may (``cache_inplace``, as the static cache's rule)."""
    from attngraph.array_math.paged import write_paged

    xp = ctx.state.xp
    writable = getattr(getattr(pool, "flags", None), "writeable", True)
    target = pool if ctx.state.extra.get("cache_inplace", True) and writable else xp.asarray(pool, copy=True)
    write_paged(xp, target, new, table, lengths, ctx.attr("layout"))
    return target
