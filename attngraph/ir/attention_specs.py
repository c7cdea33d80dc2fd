"""Type rules of the attention ops (the primitives' are in ``primitive_specs``).

Each rule takes the input types and the complete attributes and returns the output types, or
raises ``GraphError`` with a plain description of the mismatch (the verifier adds the node's line).
"""

from __future__ import annotations

import math
import numbers
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
# the fused op's operands: the mask's, then T5's bucket table (rel_buckets, Hq) and the sinks (Hq,)
ATTENTION_OPERANDS = MASK_OPERANDS + ("rel_table", "sinks")
# the fused op's position biases: ALiBi (slopes per q head; added before the scale, or after the softcap)
# and T5's relative bias (added with ALiBi, after the softcap); both at query positions like the mask's
POSITION_BIAS_ATTRS: dict[str, Any] = {"alibi_slopes": (), "alibi_before_scale": False, "rel_buckets": 0,
                                       "rel_max_distance": 128, "rel_bidirectional": True}
MASK_ATTRS: dict[str, Any] = {
    "causal": False, "offset": 0, "window_left": -1, "window_right": -1, "operands": (), "align": "start",
}

def _int_attr(a: dict[str, Attr], name: str, op: str) -> int:
    """An int attribute (NumPy ints too; a bool or a float is a mistake, not an int)."""
    v = a[name]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise GraphError(f"{op} {name} must be an int, got {v!r}")
    return int(v)


def _finite_attr(a: dict[str, Attr], name: str, op: str) -> float:
    """A finite float attribute: a NaN or infinite scale, cap or bound makes every output NaN or meaningless."""
    v = a[name]
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise GraphError(f"{op} {name} must be a number, got {v!r}")
    try:
        x = float(v)
    except OverflowError:  # an int too large for a float
        x = math.inf
    if not math.isfinite(x):
        raise GraphError(f"{op} {name} must be a finite number, got {v!r}")
    return x


def _linear(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    x, w = ts[0], ts[1]
    need_float(x, "linear input")
    if x.rank < 1:
        raise GraphError(f"linear input must have rank >= 1 (..., in), got {x}")
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
    hidden, heads = need_static(x.shape[2], "hidden size"), _int_attr(a, "heads", "split_heads")
    if heads <= 0 or hidden % heads:
        raise GraphError(f"split_heads: heads={heads} does not divide hidden size {hidden}")
    return (TensorType(x.dtype, (x.shape[0], heads, x.shape[1], hidden // heads)),)


def _concat(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    first = ts[0]
    axis = axis_index(first.rank, _int_attr(a, "axis", "concat"))
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
    axis = axis_index(x.rank, _int_attr(a, "axis", "split"))
    if not isinstance(a["sizes"], tuple) or not a["sizes"]:
        raise GraphError(f"split sizes must be a list of ints, got {a['sizes']!r}")
    sizes = tuple(_int_attr({"sizes": s}, "sizes", "split") for s in a["sizes"])
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
    if "value" in a:
        _finite_attr(a, "value", "scale")
    if "cap" in a and not _finite_attr(a, "cap", "softcap") > 0:
        raise GraphError(f"softcap cap must be > 0, got {a['cap']}")
    return (x,)


def check_mask_operands(scores: TensorType, operands: Sequence[TensorType], a: dict[str, Attr]) -> None:
    """Check the mask attributes and each mask operand against the scores ``(B, Hq, Sq, Skv)``."""
    kinds = a["operands"]
    if not isinstance(kinds, tuple) or not all(isinstance(k, str) for k in kinds):
        raise GraphError(f"mask operands must be a list of names from {MASK_OPERANDS}, got {kinds!r}")
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
        if _int_attr(a, name, "mask") < -1:
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
    """softmax(x[, sinks]): a sink is one logit per head (x's axis 1) in the denominator, with no value."""
    if len(ts) == 2:
        need_rank(ts[0], 4, "softmax scores with sinks", "(batch, heads, q_len, kv_len)")
        _need_per_head(ts[1], ts[0].shape[1], "softmax sinks")
    return _elementwise(ts[:1], a)


def _need_per_head(t: TensorType, heads: dims.Dim, what: str) -> None:
    need_float(t, what)
    if t.rank != 1 or not same(t.shape[0], heads):
        raise GraphError(f"{what} must be one value per head, ({heads},), got {t}")


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
    _finite_attr(a, "scale", "attention")
    if _finite_attr(a, "softcap", "attention") < 0:
        raise GraphError(f"softcap must be >= 0 (0 = off), got {a['softcap']}")
    kinds = tuple(a["operands"])
    n_mask = len([k for k in kinds if k in MASK_OPERANDS])
    if list(kinds) != [k for k in ATTENTION_OPERANDS if k in kinds] or len(set(kinds)) != len(kinds):
        raise GraphError(f"attention operands {kinds} must be a subset of {ATTENTION_OPERANDS} in that order")
    if len(kinds) != len(ts) - 3:
        raise GraphError(f"attention lists operands {kinds} but has {len(ts) - 3} operand inputs")
    check_mask_operands(scores, ts[3:3 + n_mask], {**a, "operands": kinds[:n_mask]})
    extra = dict(zip(kinds[n_mask:], ts[3 + n_mask:], strict=True))
    _check_position_biases(scores, extra, a)
    y = TensorType(q.dtype, q.shape[:3] + (v.shape[3],))
    return (y, scores) if a["return_weights"] else (y,)


def _check_position_biases(scores: TensorType, extra: dict[str, TensorType], a: dict[str, Attr]) -> None:
    """ALiBi slopes, the T5 table and the sinks of a fused attention node, one per q head."""
    heads = scores.shape[1]
    if "sinks" in extra:
        _need_per_head(extra["sinks"], heads, "attention sinks")
    slopes = tuple(a["alibi_slopes"])
    if slopes and len(slopes) != need_static(heads, "heads"):
        raise GraphError(f"attention has {len(slopes)} ALiBi slopes for {heads} heads")
    buckets = int(a["rel_buckets"])
    if (buckets > 0) != ("rel_table" in extra):
        raise GraphError("attention rel_buckets > 0 and a 'rel_table' operand come together")
    if "rel_table" in extra:
        t = extra["rel_table"]
        need_float(t, "attention relative-bias table")
        if t.rank != 2 or not same(t.shape[0], buckets) or not same(t.shape[1], heads):
            raise GraphError(f"attention relative-bias table must be ({buckets}, {heads}), got {t}")

def _clamp(ts: Sequence[TensorType], a: dict[str, Attr]) -> tuple[TensorType, ...]:
    (x,) = ts
    need_float(x, "clamp input")
    low, high = _finite_attr(a, "low", "clamp"), _finite_attr(a, "high", "clamp")
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
    Op.SOFTMAX: OpSpec(1, 2, {}, _softmax),
    Op.WEIGHTED_SUM: OpSpec(2, 2, {}, _weighted_sum),
    Op.MERGE_HEADS: OpSpec(1, 1, {}, _merge_heads),
    Op.CLAMP: OpSpec(1, 1, {"low": REQUIRED, "high": REQUIRED}, _clamp),
    Op.ATTENTION: OpSpec(3, 8, {"scale": REQUIRED, "softcap": 0.0, "return_weights": False, **MASK_ATTRS,
                                **POSITION_BIAS_ATTRS}, _attention),
}
