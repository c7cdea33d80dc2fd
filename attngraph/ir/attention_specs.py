"""Type rules of the attention ops (the primitives' are in ``primitive_specs``).

Each rule takes the input types and the complete attributes and returns the output types, or
raises ``GraphError`` with a plain description of the mismatch (the verifier adds the node's line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attngraph.errors import GraphError
from attngraph.ir import dims
from attngraph.ir.graph import Attr
from attngraph.ir.op import Op
from attngraph.ir.spec_helpers import (
    REQUIRED,
    OpSpec,
    axis_index,
    need_float,
    need_rank,
    need_static,
    same,
)
from attngraph.ir.types import FLOAT_DTYPES, INT_DTYPES, DType, TensorType

MASK_OPERANDS = ("bool", "bias", "lengths")  # the order mask operands appear in, when present
# align "start": query i sits at key position i + offset (one offset for the batch).
# align "lengths": query i of batch row b sits at i + lengths[b] - q_len, i.e. the queries are the last
# q_len of that row's valid keys (ONNX's nonpad_kv_seqlen; decoding a padded batch).
MASK_ATTRS: dict[str, Any] = {
    "causal": False, "offset": 0, "window_left": -1, "window_right": -1, "operands": (), "align": "start",
}

def _linear(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x, w = ts[0], ts[1]
    need_float(x, "linear input")
    need_rank(w, 2, "linear weight", "(in, out)")
    if w.dtype != x.dtype:
        raise GraphError(f"linear weight dtype {w.dtype} differs from input dtype {x.dtype}")
    if not same(x.shape[-1], w.shape[0]):
        raise GraphError(f"linear input last dim {x.shape[-1]} != weight in-dim {w.shape[0]} ({x} @ {w})")
    if len(ts) == 3:
        b = ts[2]
        if b.rank != 1 or not same(b.shape[0], w.shape[1]) or b.dtype != x.dtype:
            raise GraphError(f"linear bias must be {x.dtype.short}[{w.shape[1]}], got {b}")
    return (TensorType(x.dtype, x.shape[:-1] + (w.shape[1],)),)


def _split_heads(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    need_rank(x, 3, "split_heads input", "(batch, seq, heads*head_dim)")
    hidden, heads = need_static(x.shape[2], "hidden size"), int(a["heads"])
    if heads <= 0 or hidden % heads:
        raise GraphError(f"split_heads: heads={heads} does not divide hidden size {hidden}")
    return (TensorType(x.dtype, (x.shape[0], heads, x.shape[1], hidden // heads)),)


def _concat(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    first = ts[0]
    axis = axis_index(first.rank, int(a["axis"]))
    total: dims.Dim = 0
    for t in ts:
        if t.dtype != first.dtype or t.rank != first.rank:
            raise GraphError(f"concat inputs must share dtype and rank: {first} vs {t}")
        for i, (d0, d) in enumerate(zip(first.shape, t.shape)):
            if i != axis and not same(d0, d):
                raise GraphError(f"concat inputs differ on axis {i} (not the concat axis {axis}): {first} vs {t}")
        total = dims.add(total, t.shape[axis])
    shape = first.shape[:axis] + (total,) + first.shape[axis + 1:]
    return (TensorType(first.dtype, shape),)


def _split(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    axis = axis_index(x.rank, int(a["axis"]))
    sizes = tuple(int(s) for s in a["sizes"])
    length = need_static(x.shape[axis], "split axis length")
    if sum(sizes) != length or any(s <= 0 for s in sizes):
        raise GraphError(f"split sizes {sizes} must be positive and sum to {length}")
    return tuple(TensorType(x.dtype, x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes)


def _heads_grouped(a: TensorType, b: TensorType, what: str) -> None:
    if not same(a.shape[0], b.shape[0]):
        raise GraphError(f"{what}: batch dims differ: {a} vs {b}")
    hq, hkv = need_static(a.shape[1], "q heads"), need_static(b.shape[1], "kv heads")
    if hkv <= 0 or hq % hkv:
        raise GraphError(f"{what}: q heads ({hq}) must be a multiple of kv heads ({hkv}) for GQA/MQA")


def _matmul(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x, y = ts
    for t, name in ((x, "matmul lhs"), (y, "matmul rhs")):
        need_float(t, name)
        need_rank(t, 4, name, "(batch, heads, rows, cols)")
    if x.dtype != y.dtype:
        raise GraphError(f"matmul dtypes differ: {x} vs {y}")
    _heads_grouped(x, y, "matmul")
    k_dim, n_dim = (y.shape[3], y.shape[2]) if a["transpose_b"] else (y.shape[2], y.shape[3])
    if not same(x.shape[3], k_dim):
        raise GraphError(f"matmul contraction dims differ: {x} @ {y} (transpose_b={a['transpose_b']})")
    return (TensorType(x.dtype, x.shape[:3] + (n_dim,)),)


def _elementwise(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    need_float(x, "input")
    if "cap" in a and not float(a["cap"]) > 0:
        raise GraphError(f"softcap cap must be > 0, got {a['cap']}")
    return (x,)


def check_mask_operands(scores: TensorType, operands: Sequence[TensorType], a: dict[str, Attr]) -> None:
    """Check the mask attributes and each mask operand against the scores ``(B, Hq, Sq, Skv)``."""
    kinds = tuple(a["operands"])
    if list(kinds) != [k for k in MASK_OPERANDS if k in kinds] or len(set(kinds)) != len(kinds):
        raise GraphError(f"mask operands {kinds} must be a subset of {MASK_OPERANDS} in that order")
    if len(kinds) != len(operands):
        raise GraphError(f"mask lists operands {kinds} but has {len(operands)} mask inputs")
    if a["align"] not in ("start", "lengths"):
        raise GraphError(f"align must be 'start' or 'lengths', got {a['align']!r}")
    if a["align"] == "lengths" and ("lengths" not in kinds or dims.canonical(a["offset"]) != 0):
        raise GraphError("align='lengths' places queries at the end of each row's key lengths: it needs a "
                         "'lengths' operand and offset 0")
    for name in ("window_left", "window_right"):
        if int(a[name]) < -1:
            raise GraphError(f"{name} must be -1 (unbounded) or >= 0, got {a[name]}")
    dims.canonical(a["offset"])
    for kind, t in zip(kinds, operands):
        if kind == "lengths":
            if t.dtype not in INT_DTYPES or t.rank != 1 or not same(t.shape[0], scores.shape[0]):
                raise GraphError(f"key lengths must be int32/int64 of shape [{scores.shape[0]}], got {t}")
            continue
        if kind == "bool" and t.dtype is not DType.BOOL:
            raise GraphError(f"bool mask must have dtype bool, got {t}")
        if kind == "bias" and t.dtype not in FLOAT_DTYPES:
            raise GraphError(
                f"additive mask must be a float tensor, got {t}; integer masks are rejected "
                "because ONNX would add them: pass a bool mask (True = attend) instead")
        _need_broadcast(t, scores.shape, f"{kind} mask")


def _need_broadcast(t: TensorType, target: tuple[dims.Dim, ...], what: str) -> None:
    if t.rank > len(target):
        raise GraphError(f"{what} {t} has more dims than the scores {list(target)}")
    for d, want in zip(reversed(t.shape), reversed(target)):
        if d != 1 and not same(d, want):
            raise GraphError(
                f"{what} {t} does not broadcast to (batch, q_heads, q_len, kv_total) = "
                f"{list(target)}: dim {d!r} must be 1 or {want!r}")


def _mask(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    scores = ts[0]
    need_float(scores, "mask scores")
    need_rank(scores, 4, "mask scores", "(batch, q_heads, q_len, kv_total)")
    check_mask_operands(scores, ts[1:], a)
    return (scores,)


def _softmax(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    return _elementwise(ts, a)


def _weighted_sum(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    p, v = ts
    return _matmul((p, v), {"transpose_b": False})


def _merge_heads(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    need_rank(x, 4, "merge_heads input", "(batch, heads, seq, head_dim)")
    heads, size = need_static(x.shape[1], "heads"), need_static(x.shape[3], "head_dim")
    return (TensorType(x.dtype, (x.shape[0], x.shape[2], heads * size)),)


def _attention(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    q, k, v = ts[:3]
    for t, name in ((q, "attention q"), (k, "attention k"), (v, "attention v")):
        need_float(t, name)
        need_rank(t, 4, name, "(batch, heads, seq, head_dim)")
    if not q.dtype == k.dtype == v.dtype:
        raise GraphError(f"attention q/k/v dtypes differ: {q}, {k}, {v}")
    (scores,) = _matmul((q, k), {"transpose_b": True})
    if not same(k.shape[2], v.shape[2]) or k.shape[1] != v.shape[1]:
        raise GraphError(f"attention k and v must share heads and length: {k} vs {v}")
    if float(a["softcap"]) < 0:
        raise GraphError(f"softcap must be >= 0 (0 = off), got {a['softcap']}")
    check_mask_operands(scores, ts[3:], a)
    y = TensorType(q.dtype, q.shape[:3] + (v.shape[3],))
    return (y, scores) if a["return_weights"] else (y,)

def _clamp(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    need_float(x, "clamp input")
    low, high = float(a["low"]), float(a["high"])
    if not low <= high:
        raise GraphError(f"clamp needs low <= high, got low={low}, high={high}")
    return (x,)


ATTENTION_SPECS: dict[Op, OpSpec] = {
    Op.LINEAR: OpSpec(2, 3, {}, _linear),
    Op.SPLIT_HEADS: OpSpec(1, 1, {"heads": REQUIRED}, _split_heads),
    Op.CONCAT: OpSpec(1, None, {"axis": REQUIRED}, _concat),
    Op.SPLIT: OpSpec(1, 1, {"axis": REQUIRED, "sizes": REQUIRED}, _split),
    Op.MATMUL: OpSpec(2, 2, {"transpose_b": False}, _matmul),
    Op.SCALE: OpSpec(1, 1, {"value": REQUIRED}, _elementwise),
    Op.SOFTCAP: OpSpec(1, 1, {"cap": REQUIRED}, _elementwise),
    Op.MASK: OpSpec(1, 4, dict(MASK_ATTRS), _mask),
    Op.SOFTMAX: OpSpec(1, 1, {}, _softmax),
    Op.WEIGHTED_SUM: OpSpec(2, 2, {}, _weighted_sum),
    Op.MERGE_HEADS: OpSpec(1, 1, {}, _merge_heads),
    Op.CLAMP: OpSpec(1, 1, {"low": REQUIRED, "high": REQUIRED}, _clamp),
    Op.ATTENTION: OpSpec(3, 6, {"scale": REQUIRED, "softcap": 0.0, "return_weights": False, **MASK_ATTRS},
                         _attention),
}
