"""The NumPy backend: the reference lowering of every op, for float16, bfloat16, float32, float64.

Math runs in float32 (float64 for float64 graphs) and results are cast back to the graph's dtype.
By default ``compile`` fuses the attention core first (option ``fuse=True``) so the fused rule can
walk the queries in chunks and never hold more than ``max_scores_bytes`` of scores; with
``fuse=False`` the primitive chain runs op by op, materialising each intermediate.
"""

from __future__ import annotations

import numpy as np

from attngraph.dtypes import compute_dtype, to_numpy
from attngraph.ir import Graph, Op
from attngraph.lowering import Backend, NodeCtx, Rules
from backends import numpy_kernels as K

rules = Rules("numpy")


def _compute(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)


def _out(ctx: NodeCtx, x: np.ndarray, index: int = 0) -> np.ndarray:
    return np.asarray(x).astype(to_numpy(ctx.node.outputs[index].type.dtype), copy=False)


def mask_kwargs(ctx: NodeCtx, operands: dict, q_len: int) -> dict:
    """The mask attributes of ``ctx.node`` as kernel arguments; ``offset`` is per batch row with align='lengths'."""
    from attngraph import dims

    offset = dims.evaluate(ctx.attr("offset"), ctx.dims)
    if ctx.attr("align") == "lengths":  # queries are the last q_len valid keys of each batch row
        offset = np.asarray(operands["lengths"], dtype=np.int64) - q_len
    return {"causal": bool(ctx.attr("causal")), "offset": offset,
            "window_left": int(ctx.attr("window_left")), "window_right": int(ctx.attr("window_right"))}


@rules.register(Op.LINEAR)
def _linear(ctx: NodeCtx, x, w, b=None):
    y = _compute(x) @ _compute(w)
    if b is not None:
        y += _compute(b)  # in place: no second output-sized temporary
    return _out(ctx, y)


@rules.register(Op.SPLIT_HEADS)
def _split_heads(ctx: NodeCtx, x):
    batch, seq, hidden = x.shape
    heads = ctx.attr("heads")
    return x.reshape(batch, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


@rules.register(Op.CONCAT)
def _concat(ctx: NodeCtx, *xs):
    return np.concatenate(xs, axis=ctx.attr("axis"))


@rules.register(Op.SPLIT)
def _split(ctx: NodeCtx, x):
    cuts = np.cumsum(ctx.attr("sizes"))[:-1]
    return tuple(np.split(x, cuts, axis=ctx.attr("axis")))


@rules.register(Op.MATMUL)
def _matmul(ctx: NodeCtx, a, b):
    return _out(ctx, K.grouped_matmul(_compute(a), _compute(b), ctx.attr("transpose_b")))


@rules.register(Op.SCALE)
def _scale(ctx: NodeCtx, x):
    xc = _compute(x)
    return _out(ctx, xc * xc.dtype.type(ctx.attr("value")))


@rules.register(Op.SOFTCAP)
def _softcap(ctx: NodeCtx, x):
    xc = _compute(x)
    cap = xc.dtype.type(ctx.attr("cap"))
    return _out(ctx, cap * np.tanh(xc / cap))


@rules.register(Op.MASK)
def _mask(ctx: NodeCtx, scores, *operands):
    named = dict(zip(ctx.attr("operands"), operands))
    return _out(ctx, K.apply_mask(_compute(scores), 0, named, **mask_kwargs(ctx, named, scores.shape[2])))


@rules.register(Op.SOFTMAX)
def _softmax(ctx: NodeCtx, x):
    return _out(ctx, K.softmax(_compute(x)))


@rules.register(Op.WEIGHTED_SUM)
def _weighted_sum(ctx: NodeCtx, p, v):
    return _out(ctx, K.grouped_matmul(_compute(p), _compute(v), False))


@rules.register(Op.MERGE_HEADS)
def _merge_heads(ctx: NodeCtx, x):
    batch, heads, seq, size = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)


@rules.register(Op.ATTENTION)
def _attention(ctx: NodeCtx, q, k, v, *operands):
    named = dict(zip(ctx.attr("operands"), operands))
    y, weights = K.attention(
        q, k, v, named, scale=float(ctx.attr("scale")), softcap=float(ctx.attr("softcap")),
        return_weights=bool(ctx.attr("return_weights")), compute=compute_dtype(ctx.node.inputs[0].type.dtype),
        max_bytes=ctx.state["max_scores_bytes"], **mask_kwargs(ctx, named, q.shape[2]))
    return (_out(ctx, y), _out(ctx, weights, 1)) if weights is not None else _out(ctx, y)


class NumpyBackend(Backend):
    """Reference backend. Options: ``fuse`` (default True), ``max_scores_bytes`` (default 64 MiB)."""

    name = "numpy"
    rules = rules
    options = {**Backend.options, "max_scores_bytes": 64 << 20}

    def make_state(self, graph: Graph, options: dict) -> dict:
        return {"max_scores_bytes": int(options["max_scores_bytes"])}
