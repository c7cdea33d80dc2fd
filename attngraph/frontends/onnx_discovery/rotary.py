"""Rotary embeddings as exporters write them: the ONNX ``RotaryEmbedding`` node (opset 23), and Hugging
Face's ``x * cos + rotate_half(x) * sin`` spelled out (``Slice``/``Neg``/``Concat``/``Mul``/``Add``), with the
partial form (``Concat(rotated(x[..., :rd]), x[..., rd:])``).

The decomposed form is matched with onnxscript patterns (every commuted order of its ``Add`` and ``Mul``);
the slice bounds are then checked exactly: ``rotate_half`` must swap the two halves of the rotated dims.
Its cos/sin are per-token tables of the full rotary width whose two halves are equal (``Cos(Concat(f, f))``,
proven from the nodes that make them), which is what lets the IR read the first half as its cos table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attngraph.frontends.onnx_discovery.symbolic import Poly


@dataclass
class Rotary:
    """One rotary embedding: ``out = rotate(x)``. ``layout`` "half" or "interleaved", ``rotary_dim`` (the
    rotated leading dims of a head), ``cos``/``sin`` the model values, ``form``: "table" (a (positions, rd/2)
    cache read at ``positions``), "half" (per-token (.., S, rd/2)) or "full" (per-token (.., S, rd), halves
    equal); ``nodes``: the model nodes it spans."""

    x: object
    out: object
    layout: str
    rotary_dim: int
    cos: object
    sin: object
    form: str
    positions: object = None
    nodes: tuple = ()


def _rules():
    from onnxscript.rewriter import pattern

    def rotate_half(op, x, cos, sin):
        x1 = op.Slice(x, _allow_other_inputs=True, _outputs=["x1"])
        x2 = op.Slice(x, _allow_other_inputs=True, _outputs=["x2"])
        rot = op.Concat(op.Neg(x2), x1, axis=pattern.AttrVar("axis"), _outputs=["rot"])
        return op.Add(op.Mul(x, cos, _outputs=["xc"]), op.Mul(rot, sin, _outputs=["rs"]), _outputs=["out"])

    rule = pattern.RewriteRule(rotate_half, lambda op, **_: None, name="RotateHalf")
    return rule.commute()


_RULES = None


def rotate_half_rules():
    """The commuted variants of the ``rotate_half`` pattern (built once)."""
    global _RULES
    if _RULES is None:
        _RULES = _rules()
    return _RULES


def recognise(value, model, ev, dims_of) -> tuple[Rotary | None, str | None]:
    """The rotary embedding that makes ``value`` (a (B, H, S, D) tensor), or ``(None, why)``; ``(None, None)``
    when ``value`` does not look like one at all."""
    node = value.producer()
    if node is None:
        return None, None
    if node.op_type == "RotaryEmbedding" and node.domain in ("", "ai.onnx"):
        return _onnx_node(node, dims_of)
    if node.op_type == "Concat" and len(node.inputs) == 2:  # partial: rotated leading dims, the rest as is
        inner, why = _decomposed(node.inputs[0], model, ev, dims_of)
        if inner is None:
            return None, why
        return _partial(node, inner, ev, dims_of)
    if node.op_type == "Add":
        return _decomposed(value, model, ev, dims_of)
    return None, None


def _onnx_node(node, dims_of):
    attrs = {k: a.value for k, a in node.attributes.items()}
    x, cos, sin = node.inputs[:3]
    positions = node.inputs[3] if len(node.inputs) > 3 else None
    xd = dims_of(x)
    if xd is None or len(xd) != 4 or not xd[3].is_const:
        return None, f"RotaryEmbedding {node.name!r}: only a 4-D input (batch, heads, seq, head_dim) is lifted"
    rd = int(attrs.get("rotary_embedding_dim", 0)) or xd[3].value
    form = "table" if positions is not None else "half"
    return Rotary(x, node.outputs[0], "interleaved" if attrs.get("interleaved", 0) else "half", rd, cos, sin, form,
                  positions, (node,)), None


def _decomposed(value, model, ev, dims_of):
    node = value.producer()
    if node is None or node.op_type != "Add":
        return None, None
    match = None
    for rule in rotate_half_rules():
        match = rule.match(model, model.graph, node, check_nodes_are_removable=False)
        if match:
            break
    if not match:
        return None, None
    b = match.bindings
    x, axis = b["x"], b["axis"].value
    xd = dims_of(x)
    if xd is None or len(xd) != 4 or not xd[3].is_const:
        return None, f"rotate_half at {node.name!r}: the rotated tensor is not (batch, heads, seq, head_dim)"
    d = xd[3].value
    if axis not in (-1, 3) or d % 2:
        return None, f"rotate_half at {node.name!r} concatenates on axis {axis}, not the head dim"
    half = d // 2
    lo, hi = _last_axis_slice(b["x1"].producer(), ev, 4), _last_axis_slice(b["x2"].producer(), ev, 4)
    if lo != (0, half) or hi not in ((half, d), (half, None)):
        return None, (f"rotate_half at {node.name!r} slices the head dim as {lo} and {hi}, not the two halves "
                      f"(0, {half}) and ({half}, {d}): not the half-rotation attngraph lifts")
    cos, sin = b["cos"], b["sin"]
    nodes = tuple(match.nodes)
    return Rotary(x, match.bindings["out"], "half", d, cos, sin, "full", None, nodes), None


def _partial(node, inner: Rotary, ev, dims_of):
    """``Concat(rotate(x[..., :rd]), x[..., rd:])`` on the head dim: rotary over the first ``rd`` dims of x."""
    attrs = {k: a.value for k, a in node.attributes.items()}
    rest = node.inputs[1]
    src_rot, src_rest = inner.x.producer(), rest.producer()
    if attrs.get("axis") not in (-1, 3) or src_rot is None or src_rest is None \
            or src_rot.op_type != "Slice" or src_rest.op_type != "Slice" or src_rot.inputs[0] is not src_rest.inputs[0]:
        return None, f"Concat {node.name!r} after a rotary embedding is not the partial-rotary form"
    x = src_rot.inputs[0]
    xd = dims_of(x)
    if xd is None or len(xd) != 4 or not xd[3].is_const:
        return None, f"partial rotary at {node.name!r}: the input is not (batch, heads, seq, head_dim)"
    d, rd = xd[3].value, inner.rotary_dim
    if _last_axis_slice(src_rot, ev, 4) != (0, rd) or _last_axis_slice(src_rest, ev, 4) not in ((rd, d), (rd, None)):
        return None, f"partial rotary at {node.name!r}: the slices are not [:{rd}] and [{rd}:]"
    return Rotary(x, node.outputs[0], inner.layout, rd, inner.cos, inner.sin, inner.form, None,
                  inner.nodes + (src_rot, src_rest, node)), None


def _last_axis_slice(node, ev, rank: int) -> tuple[int, int | None] | None:
    """``(start, end)`` of a step-1 ``Slice`` on the last axis (end None: to the end), else None."""
    if node is None or node.op_type != "Slice" or len(node.inputs) < 3:
        return None
    starts, ends = ev.ints(node.inputs[1]), ev.ints(node.inputs[2])
    axes = ev.ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
    steps = ev.ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if None in (starts, ends, axes, steps) or len(starts) != 1 or steps != [1]:
        return None
    if axes[0] not in (-1, rank - 1) or starts[0] < 0:
        return None
    end = ends[0]
    return starts[0], (None if end >= 2**31 else end)


# ---- the cos/sin tables -------------------------------------------------------------------------------

def halves_equal(v, trig: str, ev, depth: int = 12) -> bool:
    """Whether the last axis of ``v`` is two equal halves, proven from the nodes that make it:
    ``trig(Concat(f, f))`` (``trig`` "Cos" or "Sin"), then scalar scalings, casts and unsqueezes."""
    for _ in range(depth):
        node = v.producer()
        if node is None:
            return False
        op = node.op_type
        if op == trig:
            cat = node.inputs[0].producer()
            if cat is None or cat.op_type != "Concat" or len(cat.inputs) != 2:
                return False
            axis = cat.attributes["axis"].value if "axis" in cat.attributes else 0
            rank = len(ev.shape_of(cat.inputs[0]) or ())
            return axis in (-1, rank - 1) and same_value(cat.inputs[0], cat.inputs[1], ev)
        if op in ("Cast", "Identity"):
            v = node.inputs[0]
        elif op in ("Unsqueeze", "Reshape", "Expand", "Squeeze"):
            data, out = node.inputs[0], node.outputs[0]
            din, dout = ev.shape_of(data), ev.shape_of(out)
            if not din or not dout or din[-1] is None or din[-1] != dout[-1]:
                return False  # only ops that keep the last axis whole
            if op == "Reshape" and not _keeps_last(ev, node, din):
                return False
            v = data
        elif op in ("Mul", "Div") and len(node.inputs) == 2:
            k = next((k for k in ((0,) if op == "Div" else (0, 1))
                      if (c := ev.value(node.inputs[1 - k])) is not None and c.dtype != object and c.size == 1), None)
            if k is None:
                return False
            v = node.inputs[k]
        else:
            return False
    return False


def _keeps_last(ev, node, din) -> bool:
    target = ev.sizes(node.inputs[1])
    return target is not None and target[-1] == din[-1]


def same_value(a, b, ev, depth: int = 10) -> bool:
    """Whether ``a`` and ``b`` always hold the same tensor: one value, equal constants, or the same op with
    the same attributes on the same inputs (exporters often repeat a computation)."""
    if a is b:
        return True
    if a is None or b is None or depth <= 0:
        return False
    ca, cb = a.const_value, b.const_value
    if ca is not None or cb is not None:
        if ca is None or cb is None:
            return False
        x, y = ca.numpy(), cb.numpy()
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    pa, pb = a.producer(), b.producer()
    if pa is None or pb is None or a.index() != b.index():
        return False
    if (pa.op_type, pa.domain) != (pb.op_type, pb.domain) or len(pa.inputs) != len(pb.inputs):
        return False
    if {k: v.value for k, v in pa.attributes.items()}.keys() != {k: v.value for k, v in pb.attributes.items()}.keys():
        return False
    for k in pa.attributes:
        va, vb = pa.attributes[k].value, pb.attributes[k].value
        if hasattr(va, "numpy"):
            if not np.array_equal(va.numpy(), vb.numpy()):
                return False
        elif va != vb:
            return False
    return all(same_value(x, y, ev, depth - 1) for x, y in zip(pa.inputs, pb.inputs))


def table_dims(r: Rotary, dims_of, seq: Poly) -> tuple[tuple, str | None]:
    """The cos/sin tables' dims, checked for the form the IR reads: leading dims 1 (one table for the batch),
    then the query length, then rd (full) or rd/2 (half); or (positions, rd/2) with a positions input."""
    cd, sd = dims_of(r.cos), dims_of(r.sin)
    if cd is None or sd is None or any(x is None for x in cd) or tuple(cd) != tuple(sd):
        return (), "the cos and sin tables' shapes are unknown or differ"
    width = r.rotary_dim if r.form == "full" else r.rotary_dim // 2
    if r.form == "table":
        if len(cd) != 2 or cd[1] != width:
            return (), f"a RotaryEmbedding cache with position_ids must be (positions, {width}), got {cd}"
        return tuple(cd), None
    if len(cd) < 2 or cd[-1] != width or cd[-2] != seq or any(x != 1 for x in cd[:-2]):
        return (), (f"the cos table is {list(cd)}: attngraph reads per-token tables shared by the batch "
                    f"(1, .., seq={seq}, {width}); tables per batch row (position_ids per row) are not lifted")
    return tuple(cd), None
