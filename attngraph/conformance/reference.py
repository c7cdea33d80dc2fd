"""The float64 reference: any attngraph graph evaluated op by op in float64, plainly.

It shares no code with the backends: masks are built key by key from DESIGN.md's rules, the GQA
head map is written as ``h // group``, and a row whose scores are all -inf gets probabilities 0.
Slow (Python loops over rows) but only ever run on conformance-sized problems.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attngraph.ir import dims
from attngraph.ir import Graph, Node, Op


def evaluate(graph: Graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> dict:
    """Every output of ``graph`` in float64 (bool/int inputs kept as they are)."""
    env, bound = {}, {}
    for value in list(graph.inputs) + list(graph.params):
        arr = np.asarray(inputs[value.name] if value.name in inputs else weights[value.name])
        env[value] = arr.astype(np.float64) if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" else arr
        for d, size in zip(value.type.shape, arr.shape, strict=True):
            if not dims.is_static(d) and dims.canonical(d) in dims.symbols(d):
                bound[dims.canonical(d)] = int(size)
    for node in graph.nodes:
        result = _OPS[node.op](node, bound, *(env[v] for v in node.inputs))
        for value, out in zip(node.outputs, result if len(node.outputs) > 1 else (result,), strict=True):
            env[value] = out
    return {v.name: env[v] for v in graph.outputs}


def _kv_for(h: int, hq: int, hkv: int) -> int:
    return h // (hq // hkv)


def _matmul(node, bound, a, b):
    out = np.zeros(a.shape[:3] + ((b.shape[2] if node.attr("transpose_b") else b.shape[3]),))
    for bi in range(a.shape[0]):
        for h in range(a.shape[1]):
            other = b[bi, _kv_for(h, a.shape[1], b.shape[1])]
            out[bi, h] = a[bi, h] @ (other.T if node.attr("transpose_b") else other)
    return out


def _keep(node: Node, bound, batch: int, sq: int, skv: int, operands: Mapping[str, np.ndarray]) -> np.ndarray:
    """Bool (B, 1 or H, Sq, Skv) keep mask, key by key."""
    offset = dims.evaluate(node.attr("offset"), bound)
    lengths = operands.get("lengths")
    keep = np.ones((batch, 1, sq, skv), bool)
    wl, wr = int(node.attr("window_left")), int(node.attr("window_right"))
    for b in range(batch):
        row_offset = int(lengths[b]) - sq if node.attr("align") == "lengths" else offset
        for i in range(sq):
            pos = i + row_offset
            for j in range(skv):
                if node.attr("causal") and j > pos:
                    keep[b, 0, i, j] = False
                if wl >= 0 and j < pos - wl:
                    keep[b, 0, i, j] = False
                if wr >= 0 and j > pos + wr:
                    keep[b, 0, i, j] = False
                if lengths is not None and j >= lengths[b]:
                    keep[b, 0, i, j] = False
    if "bool" in operands:
        keep = keep & operands["bool"].astype(bool)
    return keep


def _mask(node, bound, scores, *ops):
    named = dict(zip(node.attr("operands"), ops, strict=True))
    s = scores + named["bias"] if "bias" in named else scores.copy()
    keep = np.broadcast_to(_keep(node, bound, s.shape[0], s.shape[2], s.shape[3], named), s.shape)
    return np.where(keep, s, -np.inf)


def _softmax(node, bound, x):
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        if np.all(row == -np.inf):
            continue  # fully masked: probabilities 0
        e = np.exp(row - np.max(row))
        out[idx] = e / e.sum()
    return out


def _attention(node, bound, q, k, v, *ops):
    s = _matmul(_Attrs(transpose_b=True), bound, q, k) * float(node.attr("scale"))
    if node.attr("softcap"):
        s = node.attr("softcap") * np.tanh(s / node.attr("softcap"))
    p = _softmax(node, bound, _mask(node, bound, s, *ops))
    y = _matmul(_Attrs(transpose_b=False), bound, p, v)
    return (y, p) if node.attr("return_weights") else y


class _Attrs:
    def __init__(self, **attrs):
        self._attrs = attrs

    def attr(self, name):
        return self._attrs[name]


def _split(node, bound, x):
    cuts = np.cumsum(node.attr("sizes"))[:-1]
    return tuple(np.split(x, cuts, axis=node.attr("axis")))


_OPS = {
    Op.LINEAR: lambda n, b, x, w, bias=None: x @ w + (0.0 if bias is None else bias),
    Op.SPLIT_HEADS: lambda n, b, x: x.reshape(x.shape[0], x.shape[1], n.attr("heads"), -1).transpose(0, 2, 1, 3),
    Op.CONCAT: lambda n, b, *xs: np.concatenate(xs, axis=n.attr("axis")),
    Op.SPLIT: _split,
    Op.MATMUL: _matmul,
    Op.SCALE: lambda n, b, x: x * float(n.attr("value")),
    Op.SOFTCAP: lambda n, b, x: n.attr("cap") * np.tanh(x / n.attr("cap")),
    Op.MASK: _mask,
    Op.SOFTMAX: _softmax,
    Op.WEIGHTED_SUM: lambda n, b, p, v: _matmul(_Attrs(transpose_b=False), b, p, v),
    Op.MERGE_HEADS: lambda n, b, x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1),
    Op.ATTENTION: _attention,
}
