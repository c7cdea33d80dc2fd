"""Where the attention output goes: the head merge (B, H, S, Dv) -> (B, S, H*Dv) and the output projection.

``follow_output`` walks forward from the core's output along single readers through layout ops and one
projection (``MatMul``/``Gemm`` by a constant, optional bias), following the layout proofs, and reports the
last model value that is exactly the IR's merged heads (``merged``) and, after the projection, exactly the
IR's ``y`` (``projected``: the projection's rows reordered to the IR's (head, dim) order, its bias).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attngraph.frontends.onnx_discovery import layout as L
from attngraph.frontends.onnx_discovery.chain import LAYOUT_OPS, Step, _bias_vector, _const, _same_type, gemm_as_linear
from attngraph.frontends.onnx_discovery.layout import LayoutError
from attngraph.frontends.onnx_discovery.symbolic import Poly


@dataclass
class Output:
    """``merged``: the model value equal to the IR's merged heads (or None) and the nodes up to it;
    ``projected``: the value equal to ``merged @ weight + bias`` with the IR's row order, and its nodes."""

    merged: object = None
    merged_nodes: set = field(default_factory=set)
    projected: object = None
    projected_nodes: set = field(default_factory=set)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def _single_reader(v, graph_outputs: set):
    """The one node reading ``v``'s data (readers of its shape alone do not count), as its data input."""
    uses = [u for u in v.uses() if u.node.op_type not in ("Shape", "Size")]
    if len(uses) != 1 or v in graph_outputs:
        return None
    node, index = uses[0].node, uses[0].idx
    return node if index == 0 or node.op_type == "Add" else None  # a bias may be added on either side


def follow_output(out, batch: Poly, seq: Poly, heads: int, vdim: int, tracker, graph_outputs: set) -> Output:
    """Walk forward from the core output ``out`` ((B, H, S, Dv) with batch/seq as Q's)."""
    result = Output()
    view = L.source([batch, Poly.of(heads), seq, Poly.of(vdim)], {1, 3})
    tracker.known[id(out)] = view.dims()
    v, nodes, perm, lin, bias = out, set(), None, None, None
    while True:
        node = _single_reader(v, graph_outputs)
        if node is None or node.domain not in ("", "ai.onnx"):
            break
        step = _forward_step(node, v, tracker, lin is not None)
        if step is None:
            break
        try:
            if step.kind == "linear":
                perm = _rows(view, batch, seq, heads * vdim)
                if lin is not None or perm is None or step.weight.shape[0] != heads * vdim:
                    break
                lin, bias = step, step.bias
                n = step.weight.shape[1]
                view = L.View([list(a) for a in view.axes[:-1]] + [[L.Atom(Poly.of(n), True)]],
                              np.arange(n, dtype=np.int64))
            elif step.kind == "bias":
                if lin is None or bias is not None or step.bias.shape != (lin.weight.shape[1],):
                    break
                bias = step.bias
            else:
                view = tracker._apply(step, view)
        except LayoutError:
            break
        tracker.known[id(step.out)] = view.dims()
        nodes.add(node)
        v = step.out
        try:
            b, s, cols = L.tokens(view)
        except LayoutError:
            continue
        if (b, s) != (batch, seq):
            continue
        if lin is None and np.array_equal(cols, np.arange(heads * vdim)):
            result.merged, result.merged_nodes = v, set(nodes)
        elif lin is not None and np.array_equal(cols, np.arange(lin.weight.shape[1])):
            result.projected, result.projected_nodes = v, set(nodes)
            result.weight, result.bias = lin.weight[perm], bias
            nxt = _single_reader(v, graph_outputs)
            if bias is not None or nxt is None or _forward_step(nxt, v, tracker, True) is None or \
                    _forward_step(nxt, v, tracker, True).kind != "bias":
                break  # the projection's output: only its bias may follow
    return result


def _rows(view: L.View, batch: Poly, seq: Poly, width: int) -> np.ndarray | None:
    """For a view whose last axis holds every (head, dim) column and whose other axes hold batch and seq
    (in either order, possibly flattened together: a projection acts on each row alike): the permutation
    taking the IR's merged order to the model's rows (IR row r is model row ``perm[r]``). None otherwise."""
    lead = [a for axis in view.axes[:-1] for a in axis]
    if any(a.feat for a in lead) or sorted(map(repr, (a.size for a in lead))) != sorted(map(repr, (batch, seq))):
        return None
    if not view.axes[-1] or any(not a.feat for a in view.axes[-1]):
        return None
    cols = view.cols.reshape(-1)
    if sorted(cols.tolist()) != list(range(width)):
        return None
    return np.argsort(cols)


def _forward_step(node, v, tracker, after_linear: bool) -> Step | None:
    """The chain step ``node`` is when it reads ``v`` as its data input, or None."""
    op, ins = node.op_type, node.inputs
    ev = tracker.ev
    if op in LAYOUT_OPS:
        if op == "Cast" and not _same_type(node):
            return None
        return Step(node, "layout", v, node.outputs[0])
    if op == "MatMul" and ins[0] is v:
        w = _const(ev, ins[1])
        if w is not None and w.ndim == 2 and w.dtype.kind == "f":
            return Step(node, "linear", v, node.outputs[0], weight=w)
    if op == "Gemm" and ins[0] is v:
        linear = gemm_as_linear(ev, node)
        return None if linear is None else Step(node, "linear", v, node.outputs[0], weight=linear[0], bias=linear[1])
    if op == "Add" and after_linear and len(ins) == 2:
        other = ins[1] if ins[0] is v else ins[0]
        c = _const(ev, other)
        made = v.producer()
        if c is not None and made is not None and made.op_type in ("MatMul", "Gemm"):
            n = c.shape[-1] if c.ndim else 1
            b = _bias_vector(c, n) if c.ndim else None
            if b is not None:
                return Step(node, "bias", v, node.outputs[0], bias=b)
    return None
