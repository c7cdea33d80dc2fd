"""The reference rules of the attention ops, in float64, written plainly from the semantics table:
masks key by key, the GQA head map as ``h // group``, a row whose scores are all -inf gets
probabilities 0. Slow (Python loops over rows) but only ever run on conformance-sized problems."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attngraph.conformance.reference import position_ops
from attngraph.ir import Node, Op, dims


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


def _weighted_sum(node, bound, p, v):
    """``p @ v`` where a key of weight exactly 0 (a masked key) takes no part, NaN/inf in its value included."""
    out = np.zeros(p.shape[:3] + (v.shape[3],))
    for bi in range(p.shape[0]):
        for h in range(p.shape[1]):
            values = v[bi, _kv_for(h, p.shape[1], v.shape[1])]
            for i in range(p.shape[2]):
                used = p[bi, h, i] != 0
                out[bi, h, i] = p[bi, h, i][used] @ values[used]
    return out


def _softmax(node, bound, x, sinks=None):
    """Softmax per row; a row of all -inf gives 0. A sink (one logit per head) joins the denominator."""
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        sink = None if sinks is None else float(sinks[idx[1]])
        logits = row if sink is None else np.append(row, sink)
        if np.all(logits == -np.inf):
            continue  # fully masked: probabilities 0
        e = np.exp(logits - np.max(logits))
        out[idx] = (e / e.sum())[:row.size]
    return out


def _attention(node, bound, q, k, v, *ops):
    """The fused op, step by step: ALiBi before or after the scale, softcap, T5 bias, mask, softmax with sinks."""
    named = dict(zip(node.attr("operands"), ops, strict=True))
    lengths = (named["lengths"],) if node.attr("align") == "lengths" else ()
    where = {"offset": node.attr("offset"), "align": node.attr("align")}
    alibi = _Attrs(slopes=node.attr("alibi_slopes"), **where) if node.attr("alibi_slopes") else None
    s = _matmul(_Attrs(transpose_b=True), bound, q, k)
    if alibi and node.attr("alibi_before_scale"):
        s = position_ops.alibi(alibi, bound, s, *lengths)
    s = s * float(node.attr("scale"))
    if node.attr("softcap"):
        s = node.attr("softcap") * np.tanh(s / node.attr("softcap"))
    if alibi and not node.attr("alibi_before_scale"):
        s = position_ops.alibi(alibi, bound, s, *lengths)
    if "rel_table" in named:
        rel = _Attrs(num_buckets=node.attr("rel_buckets"), max_distance=node.attr("rel_max_distance"),
                     bidirectional=node.attr("rel_bidirectional"), **where)
        s = position_ops.rel_bias(rel, bound, s, named["rel_table"], *lengths)
    p = _softmax(node, bound, _mask(node, bound, s, *ops), named.get("sinks"))
    y = _weighted_sum(node, bound, p, v)
    return (y, p) if node.attr("return_weights") else y


class _Attrs:
    def __init__(self, **attrs):
        self._attrs = attrs

    def attr(self, name):
        return self._attrs[name]


def _split(node, bound, x):
    cuts = np.cumsum(node.attr("sizes"))[:-1]
    return tuple(np.split(x, cuts, axis=node.attr("axis")))


ATTENTION_OPS = {
    Op.LINEAR: lambda n, b, x, w, bias=None: x @ w + (0.0 if bias is None else bias),
    Op.SPLIT_HEADS: lambda n, b, x: x.reshape(x.shape[0], x.shape[1], n.attr("heads"), -1).transpose(0, 2, 1, 3),
    Op.CONCAT: lambda n, b, *xs: np.concatenate(xs, axis=n.attr("axis")),
    Op.SPLIT: _split,
    Op.MATMUL: _matmul,
    Op.SCALE: lambda n, b, x: x * float(n.attr("value")),
    Op.SOFTCAP: lambda n, b, x: n.attr("cap") * np.tanh(x / n.attr("cap")),
    Op.MASK: _mask,
    Op.SOFTMAX: _softmax,
    Op.WEIGHTED_SUM: _weighted_sum,
    Op.MERGE_HEADS: lambda n, b, x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1),
    Op.CLAMP: lambda n, b, x: np.clip(x, float(n.attr("low")), float(n.attr("high"))),
    Op.ATTENTION: _attention,
}
