"""``fuse_qkv_projection``: projections of one input become one matmul and a split.

    %q = linear(%x, %w_q, %b_q); %k = linear(%x, %w_k, %b_k); %v = linear(%x, %w_v, %b_v)
    ==>  %w_qkv = concat(%w_q, %w_k, %w_v) {axis=1}; %b_qkv = concat(...) {axis=0}
         %qkv = linear(%x, %w_qkv, %b_qkv); %q, %k, %v = split(%qkv) {axis=-1, sizes=(...)}

The weight concats read params only, so backends fold them once per compile; each call then
does one GEMM over x instead of three. Only linears whose weights (and biases) are params join.
"""

from __future__ import annotations

from attngraph import ops
from attngraph.ir import Graph, Node, Op, Value
from attngraph.passes.util import fresh_name, taken_names


def _emit(op: Op, inputs: tuple[Value, ...], names: list[str], **attrs) -> Node:
    full = ops.complete_attrs(op, attrs)
    types = ops.infer_types(op, [v.type for v in inputs], dict(full))
    return Node(op, inputs, tuple(Value(n, t) for n, t in zip(names, types)), full)


def _groups(graph: Graph) -> list[list[Node]]:
    params = set(graph.params)
    by_input: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if node.op is Op.LINEAR and all(v in params for v in node.inputs[1:]):
            by_input.setdefault((node.inputs[0], len(node.inputs)), []).append(node)
    return [g for g in by_input.values() if len(g) >= 2]


def fuse_qkv_projection(graph: Graph) -> Graph:
    """Fuse linears that share their input; same object back when there are none."""
    groups = _groups(graph)
    if not groups:
        return graph
    taken = taken_names(graph)
    first = {id(g[0]): g for g in groups}
    absorbed = {id(n) for g in groups for n in g[1:]}
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        group = first.get(id(node))
        if group is None:
            nodes.append(node)
            continue
        tag = "".join(n.outputs[0].name[:1] for n in group)
        w = _emit(Op.CONCAT, tuple(n.inputs[1] for n in group), [fresh_name(taken, f"w_{tag}")], axis=1)
        args = [node.inputs[0], w.output]
        nodes.append(w)
        if len(node.inputs) == 3:
            b = _emit(Op.CONCAT, tuple(n.inputs[2] for n in group), [fresh_name(taken, f"b_{tag}")], axis=0)
            nodes.append(b)
            args.append(b.output)
        fused = _emit(Op.LINEAR, tuple(args), [fresh_name(taken, tag)])
        sizes = tuple(int(n.output.type.shape[-1]) for n in group)
        split = ops.complete_attrs(Op.SPLIT, {"axis": -1, "sizes": sizes})
        nodes += [fused, Node(Op.SPLIT, fused.outputs, tuple(n.output for n in group), split)]
    return graph.replace(nodes=tuple(nodes))


def unfuse_qkv_projection(graph: Graph) -> Graph:
    """The inverse: ``split(linear(x, concat(w...), concat(b...)))`` back to one linear per output.

    For runtimes where the split's copies cost more than reading ``x`` again (onnxruntime).
    """
    producers, users, outputs = graph.producers(), graph.users(), set(graph.outputs)
    params = set(graph.params)
    swap: dict[int, list[Node]] = {}
    drop: set[int] = set()
    for node in graph.nodes:
        lin = producers.get(node.inputs[0]) if node.op is Op.SPLIT and node.attr("axis") in (-1, 2) else None
        if lin is None or lin.op is not Op.LINEAR or len(users.get(lin.output, [])) != 1 or lin.output in outputs:
            continue
        cats = [producers.get(v) for v in lin.inputs[1:]]
        if any(c is None or c.op is not Op.CONCAT or not all(v in params for v in c.inputs)
               or len(users.get(c.output, [])) != 1 or len(c.inputs) != len(node.outputs) for c in cats):
            continue
        parts = zip(*(c.inputs for c in cats), strict=True)  # (w_i, b_i) per output
        swap[id(node)] = [Node(Op.LINEAR, (lin.inputs[0], *p), (out,), ()) for p, out in zip(parts, node.outputs,
                                                                                             strict=True)]
        drop.update({id(lin), *(id(c) for c in cats)})
    if not swap:
        return graph
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) not in drop:
            nodes.extend(swap.get(id(node), [node]))
    return graph.replace(nodes=tuple(nodes))
