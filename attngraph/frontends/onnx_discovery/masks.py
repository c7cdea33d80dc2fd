"""The mask of an attention core, as the IR takes it, and what the model's mask is made of.

A float mask *added* to the scores is the IR's additive mask exactly, whatever computed it (padding,
causal, relative position bias): it stays in the model and feeds the lifted graph. Its fill is read from
the nodes that make it: a finite fill (``finfo(float32).min``, ``-10000``) is a number, not ``-inf``, so a
query row whose keys are all masked averages V in the model *and* in the lifted graph (the IR adds the
bias; only ``-inf`` makes the IR's zero-row rule apply): the notes say so. torch's causal mask
(``Where(Trilu(ones) == 0, fill, 0)``) becomes the IR's ``causal`` flag when its size is the scores' own.
A ``Where(cond, scores, -inf)`` is the IR's bool mask; a ``Where`` with a finite fill is not lifted (a
fully masked row averages V there, where the IR's bool mask gives 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from attngraph.frontends.onnx_discovery.operands import Refused
from attngraph.frontends.onnx_discovery.symbolic import Poly


@dataclass
class Mask:
    """The mask as the IR takes it: ``kind`` None, "additive" or "bool", the model ``value`` feeding the
    IR's ``attn_mask``, its IR ``shape``; ``causal`` (the IR's flag); ``structure`` (for the listing:
    "causal", "padding", ... seen in the nodes that make it), ``notes``; ``nodes``: the model nodes it
    replaces (a causal mask the IR computes itself)."""

    kind: str | None = None
    value: object = None
    extra: object = None  # a second bias added after the first (T5: position bias, then the mask)
    shape: tuple = ()
    causal: bool = False
    structure: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    nodes: set = field(default_factory=set)


def broadcast(a: tuple, b: tuple) -> tuple:
    """NumPy broadcasting of two IR mask shapes (each dim 1 or the full size)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def ir_mask_shape(dims, targets: list[tuple[Poly, object]]) -> tuple:
    """The mask's dims in IR terms: each (right-aligned to batch, heads, q, kv) is 1 or the scores' size
    there; ``targets`` pairs each scores size with its IR dim."""
    if dims is None or any(d is None for d in dims) or not 1 <= len(dims) <= 4:
        raise Refused(f"the mask's shape is unknown or not of rank 1 to 4 ({dims})")
    out = []
    for d, (size, ir_dim) in zip(reversed(dims), reversed(targets)):
        if d == 1 and size != 1:
            out.append(1)
        elif d == size:
            out.append(ir_dim)
        else:
            raise Refused(f"mask dim {d} does not broadcast to the scores' {size}")
    return tuple(reversed(out))


def classify(core, ev, dims_of, q_seq: Poly, kv_total: Poly, cached: bool, dtype) -> Mask:
    """The IR mask of ``core`` (see the module docstring)."""
    if core.mask is None:
        return Mask(causal=core.causal, structure=("causal",) if core.causal else ())
    kind = core.mask[0]
    if kind == "input":  # an Attention node's attn_mask
        value = core.mask[1]
        is_bool = value.dtype is not None and value.dtype.name == "BOOL"
        m = Mask("bool" if is_bool else "additive", value, causal=core.causal)
        m.structure, fills = describe(value, ev)
        m.notes += _fill_notes(fills, value)
        return m
    if kind == "where":
        cond, fill = core.mask[1], core.mask[2]
        if not (math.isinf(fill) and fill < 0):
            raise Refused(f"the scores are replaced by {fill:g} where the mask is False (Where on the scores): a "
                          "query row with every key masked averages V there, where attngraph's bool mask gives "
                          "0, so it is not lifted")
        if cond.dtype is None or cond.dtype.name != "BOOL":
            raise Refused(f"the condition {cond.name!r} of the Where on the scores is not bool")
        m = Mask("bool", cond)
        m.structure, _ = describe(cond, ev)
        m.notes.append("the model replaces masked scores by -inf: a query row with every key masked gives NaN "
                       "there and 0 in the lifted graph")
        return m
    value = core.mask[1]
    extra = core.mask[2] if len(core.mask) > 2 else None
    for v in (value, extra):
        if v is not None and v.dtype != dtype:
            raise Refused(f"the mask {v.name!r} added to the scores is {v.dtype}, not the scores' type")
    if extra is not None:
        m = Mask("additive", value, extra)
        for v in (value, extra):
            structure, fills = describe(v, ev)
            m.structure = tuple(sorted(set(m.structure) | set(structure)))
            m.notes += _fill_notes(fills, v)
        m.notes.append(f"two biases are added to the scores in turn ({value.name!r}, then {extra.name!r}); the "
                       "lifted graph adds their sum (the same up to rounding)")
        return m
    causal = _torch_causal(value, ev, dims_of, q_seq, kv_total)
    if causal is not None and not cached:
        fill, nodes = causal
        m = Mask(causal=True, structure=("causal",), nodes=nodes)
        if not math.isinf(fill):
            m.notes.append(f"the causal mask fills with {fill:g}, not -inf: lifted as the IR's causal flag, which "
                           "is exact because every query keeps key 0 and the fill underflows exp() for any score "
                           "below 1e31 in magnitude")
        return m
    m = Mask("additive", value)
    m.structure, fills = describe(value, ev)
    m.notes += _fill_notes(fills, value)
    if not core.nan_guard and any(math.isinf(f) for f in fills):
        m.notes.append("the mask holds -inf: a query row with every key masked gives NaN in the model and 0 in "
                       "the lifted graph")
    return m


def _fill_notes(fills: list[float], value) -> list[str]:
    finite = sorted({f for f in fills if not math.isinf(f)})
    if not finite:
        return []
    shown = ", ".join(f"{f:g}" for f in finite)
    note = (f"the mask {value.name!r} fills masked keys with {shown}, a finite number, not -inf: lifted as an "
            "additive mask, so a query row with every key masked averages V exactly as the model does (the IR's "
            "zero-row rule applies to -inf only)")
    return [note]


def _torch_causal(value, ev, dims_of, q_seq: Poly, kv_total: Poly):
    """``(fill, nodes)`` when ``value`` is torch's causal mask ``Where(Trilu(ones(Sq, Skv)) == 0, fill, 0)``
    of the scores' own size (query i sees keys j <= i), else None."""
    where = value.producer()
    if where is None or where.op_type != "Where":
        return None
    cond, fill_v, zero_v = where.inputs
    fill, zero = ev.scalar(fill_v), ev.scalar(zero_v)
    eq = cond.producer()
    if fill is None or zero != 0.0 or not fill < -1e30 or eq is None or eq.op_type != "Equal":
        return None
    tri, z = eq.inputs
    if ev.scalar(z) != 0.0 and ev.scalar(tri) is None:
        tri, z = z, tri
    trilu = tri.producer()
    if ev.scalar(z) != 0.0 or trilu is None or trilu.op_type != "Trilu" or len(trilu.inputs) > 1 and \
            trilu.inputs[1] is not None and ev.ints(trilu.inputs[1]) != [0]:
        return None
    if trilu.attributes.get("upper") is not None and trilu.attributes["upper"].value != 0:
        return None
    ones = trilu.inputs[0].producer()
    if ones is None or ones.op_type not in ("Expand", "ConstantOfShape"):
        return None
    if ones.op_type == "Expand":
        one, shape = ev.value(ones.inputs[0]), ev.sizes(ones.inputs[1])
    else:
        a = ones.attributes.get("value")
        one, shape = (a.value.numpy() if a is not None else np.zeros(1)), ev.sizes(ones.inputs[0])
    if one is None or one.dtype == object or one.size != 1 or float(one.reshape(())) == 0 or shape is None:
        return None
    if list(shape) != [q_seq, kv_total] or dims_of(value) is None or len(dims_of(value)) != 2:
        return None
    return fill, {where, eq, trilu, ones}


def describe(value, ev, limit: int = 80) -> tuple[tuple[str, ...], list[float]]:
    """What the nodes making ``value`` show (for the listing): "causal" (a Trilu, or a comparison of two
    ranges), "padding" (a 2-D model input), "position bias" (a Gather from a constant table, as T5); and the
    large negative constants used as fills."""
    seen, stack, found, fills = set(), [value], set(), []
    count = 0
    while stack and count < limit:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        node = v.producer()
        if node is None:
            if v.const_value is None and v.shape is not None and len(v.shape) == 2:
                found.add("padding")
            continue
        count += 1
        op = node.op_type
        if op == "Trilu":
            found.add("causal")
        if op in ("LessOrEqual", "Less", "Greater", "GreaterOrEqual") and \
                sum(_from_range(i) for i in node.inputs) >= 2:
            found.add("causal")
        if op == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None \
                and node.inputs[0].const_value.size > 8:
            found.add("position bias")
        for i in node.inputs:
            if i is None:
                continue
            c = ev.value(i) if i.const_value is not None or i.producer() is None or \
                i.producer().op_type == "Constant" else None
            if c is not None and c.dtype != object and c.dtype.kind == "f" and c.size == 1:
                f = float(c.reshape(()))
                if f <= -1e3:
                    fills.append(f)
            if op not in ("Shape", "Size"):
                stack.append(i)
    return tuple(sorted(found)), fills


def _from_range(v, depth: int = 6) -> bool:
    for _ in range(depth):
        node = v.producer() if v is not None else None
        if node is None:
            return False
        if node.op_type == "Range":
            return True
        if node.op_type not in ("Unsqueeze", "Reshape", "Cast", "Add", "Sub", "Expand", "Slice", "Squeeze",
                                "Identity"):
            return False
        v = node.inputs[0]
    return False
