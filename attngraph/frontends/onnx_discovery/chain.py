"""Walk a chain of layout ops (and at most one projection) back from a value, then follow it forward.

``walk_back(value)`` collects the nodes between ``value`` and the nearest value that is not produced by a
layout op (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity, a same-type Cast, Expand, Gather or
Slice or Split of features), a multiplication by a scalar constant (a scale factor, kept aside), or one
projection (``MatMul`` by a 2-D constant with an optional bias ``Add``, or ``Gemm``). ``follow`` then runs
the ``layout`` proofs along those steps from a source view. Both are plain onnx-ir graph walking: which
spelling an exporter chose does not matter, only what the chain does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attngraph.frontends.onnx_discovery import layout as L
from attngraph.frontends.onnx_discovery.evaluate import Evaluator
from attngraph.frontends.onnx_discovery.layout import LayoutError, View
from attngraph.frontends.onnx_discovery.symbolic import Poly

LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Expand", "Gather",
              "Slice", "Split"}


@dataclass
class Step:
    """One node of a chain: ``kind`` is "layout", "factor" (times ``factor``), "linear" (``weight`` (in, out),
    optional ``bias``) or "bias" (an ``Add`` of ``bias`` after a linear); ``data`` is its data input."""

    node: object
    kind: str
    data: object
    out: object
    factor: float = 1.0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass
class Chain:
    """The steps from ``anchor`` to the value walked back from (anchor first)."""

    anchor: object
    steps: list[Step] = field(default_factory=list)

    @property
    def factor(self) -> float:
        return float(np.prod([s.factor for s in self.steps])) if self.steps else 1.0

    @property
    def linear(self) -> Step | None:
        return next((s for s in self.steps if s.kind == "linear"), None)

    @property
    def bias(self) -> np.ndarray | None:
        lin = self.linear
        if lin is not None and lin.bias is not None:
            return lin.bias
        return next((s.bias for s in self.steps if s.kind == "bias"), None)

    @property
    def nodes(self) -> list:
        return [s.node for s in self.steps]

    def values(self) -> list:
        """The anchor and every value along the chain, in order."""
        return [self.anchor] + [s.out for s in self.steps]


def _same_type(node) -> bool:
    a, b = node.inputs[0], node.outputs[0]
    return a is not None and a.dtype is not None and a.dtype == b.dtype


def _const(ev: Evaluator, v):
    """The constant array ``v`` holds (an initializer or a folded value, weights of any size), else None."""
    if v is None:
        return None
    if v.const_value is not None:
        return np.asarray(v.const_value.numpy())
    a = ev.value(v)
    return None if a is None or a.dtype == object else a


def _scalar_shaped(shapes_of, v) -> bool:
    """Whether ``v`` has one element by its (inferred) shape."""
    if v is None:
        return False
    if v.const_value is not None:
        return v.const_value.size == 1
    dims = shapes_of(v)
    return dims is not None and all(d is not None and d == 1 for d in dims)


def _classify(node, v, ev: Evaluator, after_linear: bool) -> Step | None:
    """The chain step ``node`` (which makes ``v``) is, or None when the chain stops there."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    ins = node.inputs
    if op in LAYOUT_OPS:
        if op == "Cast" and not _same_type(node):
            return None
        return Step(node, "layout", ins[0], v)
    if after_linear:
        return None  # before a projection only layout ops (the hidden states' own reshapes)
    if op in ("Mul", "Div") and len(ins) == 2:
        # a scalar factor: its value is folded later, when the chain's shapes are known (torch computes
        # its SDPA scale from the query's shape)
        for k in ((0,) if op == "Div" else (0, 1)):  # the data operand: Div divides input 0 only
            data, other = ins[k], ins[1 - k]
            if _scalar_shaped(ev.shape_of, other) and not _scalar_shaped(ev.shape_of, data):
                return Step(node, "factor", data, v, factor=float("nan"))
        return None
    if op == "MatMul" and len(ins) == 2:
        w = _const(ev, ins[1])
        if w is not None and w.ndim == 2 and w.dtype.kind == "f":
            return Step(node, "linear", ins[0], v, weight=w)
        return None
    if op == "Gemm":
        linear = gemm_as_linear(ev, node)
        return None if linear is None else Step(node, "linear", ins[0], v, weight=linear[0], bias=linear[1])
    if op == "Add" and len(ins) == 2:
        for k in (0, 1):
            c = _const(ev, ins[1 - k])
            made = ins[k].producer() if ins[k] is not None else None
            if c is not None and made is not None and made.op_type in ("MatMul", "Gemm"):
                return Step(node, "bias", ins[k], v, bias=c)
        return None
    return None


def gemm_as_linear(ev: Evaluator, node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(w, bias)`` when the Gemm ``node`` is ``x @ w + bias`` with constant ``w`` (transB undone) and a constant
    bias that is one vector over the output columns; None for any other Gemm (transA, alpha or beta not 1)."""
    ins = node.inputs
    a = {k: x.value for k, x in node.attributes.items()}
    w = _const(ev, ins[1])
    has_c = len(ins) > 2 and ins[2] is not None
    c = _const(ev, ins[2]) if has_c else None
    if w is None or w.ndim != 2 or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return None
    if has_c and (c is None or a.get("beta", 1.0) != 1.0):
        return None
    w = w.T if a.get("transB", 0) else w
    bias = None if c is None else _bias_vector(c, w.shape[1])
    if c is not None and bias is None:
        return None
    return w, bias


def _bias_vector(c: np.ndarray, n: int) -> np.ndarray | None:
    if c.size == n and all(d == 1 for d in c.shape[:-1]) and c.shape[-1:] == (n,):
        return c.reshape(n)
    if c.size == 1:
        return np.full(n, c.reshape(()), dtype=c.dtype)
    return None


def walk_back(value, ev: Evaluator, stop_at: set | None = None) -> Chain:
    """The chain of steps ending at ``value`` (see the module docstring); it stops at values in ``stop_at``."""
    stop_at = stop_at or set()
    steps: list[Step] = []
    v, after_linear = value, False
    while v not in stop_at:
        node = v.producer()
        if node is None:
            break
        step = _classify(node, v, ev, after_linear)
        if step is None:
            break
        if step.kind == "bias":
            lin = step.data.producer()
            lin_step = _classify(lin, step.data, ev, False)
            if lin_step is None or lin_step.kind != "linear" or lin_step.bias is not None:
                break
            if (b := _bias_vector(step.bias, lin_step.weight.shape[1])) is None:
                break
            step.bias = b
        steps.append(step)
        if step.kind == "linear":
            after_linear = True
        v = step.data
    steps.reverse()
    return Chain(v, steps)


class Tracker:
    """Follows chains forward, remembering each value's dims for the evaluator's ``Shape`` folding."""

    def __init__(self, shapes: dict, ev_factory):
        self.shapes = shapes
        self.known: dict[int, list[Poly]] = {}
        self.ev: Evaluator = ev_factory(self.shape_of)

    def shape_of(self, v):
        if id(v) in self.known:
            return self.known[id(v)]
        return self.shapes.get(v.name)

    def dims(self, v) -> list[Poly] | None:
        d = self.shape_of(v)
        return None if d is None or any(x is None for x in d) else list(d)

    def follow(self, chain: Chain, start: View, *, start_at: int = 0) -> View:
        """The view of the chain's last value, from ``start`` (the view of ``chain.values()[start_at]``)."""
        view = start
        self.known[id(chain.values()[start_at])] = view.dims()
        for step in chain.steps[start_at:]:
            view = self._apply(step, view)
            self.known[id(step.out)] = view.dims()
        return view

    def _apply(self, step: Step, view: View) -> View:
        node, ev = step.node, self.ev
        if step.kind == "factor":
            k = 0 if step.data is node.inputs[0] else 1
            c = ev.value(node.inputs[1 - k])
            if c is None or c.dtype == object or c.size != 1 or not np.isfinite(c).all() or float(c.reshape(())) == 0:
                raise LayoutError(f"{node.op_type} {node.name!r} scales by a value that is not a finite constant")
            value = float(c.reshape(()))
            step.factor = 1.0 / value if node.op_type == "Div" else value
            return view
        if step.kind == "bias":
            if step.bias is None or step.bias.shape != (view.dims()[-1].value,):
                raise LayoutError("the bias does not match the projection's width")
            return view
        if step.kind == "linear":
            return L.linear(view, step.weight.shape[0], step.weight.shape[1])
        op = node.op_type
        attrs = {k: a.value for k, a in node.attributes.items()}
        if op in ("Identity", "Cast"):
            return view
        if op == "Transpose":
            perm = list(attrs.get("perm", range(view.rank - 1, -1, -1)))
            return L.transpose(view, perm)
        if op == "Reshape":
            target = ev.sizes(node.inputs[1])
            if target is None:
                raise LayoutError(f"the target shape of Reshape {node.name!r} cannot be worked out")
            return L.reshape(view, L.resolve_target(view, target, bool(attrs.get("allowzero", 0))))
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            dims = view.dims()
            axis = axis + len(dims) if axis < 0 else axis
            lead, rest = Poly.of(1), Poly.of(1)
            for d in dims[:axis]:
                lead = lead * d
            for d in dims[axis:]:
                rest = rest * d
            return L.reshape(view, [lead, rest])
        if op in ("Squeeze", "Unsqueeze"):
            axes = ev.ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else \
                (list(attrs["axes"]) if "axes" in attrs else None)
            if op == "Unsqueeze":
                if axes is None:
                    raise LayoutError(f"Unsqueeze {node.name!r} has no axes")
                return L.unsqueeze(view, axes)
            return L.squeeze(view, axes)
        if op == "Expand":
            target = ev.sizes(node.inputs[1])
            if target is None:
                raise LayoutError(f"the shape of Expand {node.name!r} cannot be worked out")
            return L.expand(view, target)
        if op == "Gather":
            idx = ev.value(node.inputs[1])
            if idx is None or idx.dtype == object or idx.ndim > 1:
                raise LayoutError(f"Gather {node.name!r} does not pick constant indices")
            axis = attrs.get("axis", 0)
            return L.gather(view, axis + view.rank if axis < 0 else axis, idx.tolist(), idx.ndim == 0)
        if op == "Slice":
            return self._slice(node, view, attrs)
        if op == "Split":
            return self._split(step, view, attrs)
        raise LayoutError(f"{op} is not a layout op")

    def _slice(self, node, view: View, attrs) -> View:
        ev = self.ev
        if "starts" in attrs:  # opset < 10
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
        else:
            ins = node.inputs
            starts, ends = ev.ints(ins[1]), ev.ints(ins[2])
            axes = ev.ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts or [])))
            steps = ev.ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts or [])
        if None in (starts, ends, axes, steps):
            raise LayoutError(f"the bounds of Slice {node.name!r} cannot be worked out")
        for s, e, a, st in zip(starts, ends, axes, steps):
            view = L.slice_axis(view, a + view.rank if a < 0 else a, s, e, st)
        return view

    def _split(self, step: Step, view: View, attrs) -> View:
        node = step.node
        axis = attrs.get("axis", 0)
        axis = axis + view.rank if axis < 0 else axis
        size = view.dims()[axis]
        if not size.is_const:
            raise LayoutError("Split cuts a batch or sequence size")
        n = len(node.outputs)
        sizes = None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            sizes = self.ev.ints(node.inputs[1])
        elif "split" in attrs:
            sizes = list(attrs["split"])
        else:
            chunk = -(-size.value // n)
            sizes = [min(chunk, size.value - k * chunk) for k in range(n)]
        if sizes is None or sum(sizes) != size.value:
            raise LayoutError(f"the sizes of Split {node.name!r} cannot be worked out")
        k = step.out.index()
        start = sum(sizes[:k])
        return L.slice_axis(view, axis, start, start + sizes[k], 1)
