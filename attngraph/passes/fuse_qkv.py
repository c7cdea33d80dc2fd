"""``fuse_qkv_projection``: projections of one input become one matmul and a split.

    %q = linear(%x, %w_q, %b_q); %k = linear(%x, %w_k, %b_k); %v = linear(%x, %w_v, %b_v)
    ==>  %w_qkv = concat(%w_q, %w_k, %w_v) {axis=1}; %b_qkv = concat(...) {axis=0}
         %qkv = linear(%x, %w_qkv, %b_qkv); %q, %k, %v = split(%qkv) {axis=-1, sizes=(...)}

The weight concats read params only, so backends fold them once per compile; each call then
does one GEMM over x instead of three. Only linears whose weights (and biases) are params join.
``unfuse_qkv_projection`` is the inverse, for runtimes where the split's copies cost more than
reading ``x`` again (onnxruntime).
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op
from attngraph.passes.rewrite import Emitter, GraphIndex, Rewrite, rewrite, taken_names


def _groups(graph: Graph) -> dict[int, list[Node]]:
    """First linear of each group -> the group (linears sharing an input, weights and biases params)."""
    params = set(graph.params)
    by_input: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if node.op is Op.LINEAR and all(v in params for v in node.inputs[1:]):
            by_input.setdefault((node.inputs[0], len(node.inputs)), []).append(node)
    return {id(g[0]): g for g in by_input.values() if len(g) >= 2}


def fuse_qkv_projection(graph: Graph) -> Graph:
    """Fuse linears that share their input; same object back when there are none."""
    groups = _groups(graph)
    if not groups:
        return graph
    taken = taken_names(graph)

    def fuse(node: Node, index: GraphIndex) -> Rewrite | None:
        group = groups.get(id(node))
        if group is None:
            return None
        em = Emitter(taken)
        tag = "".join(n.outputs[0].name[:1] for n in group)
        args = [node.inputs[0], em.emit(Op.CONCAT, *(n.inputs[1] for n in group), axis=1, name=f"w_{tag}")]
        if len(node.inputs) == 3:
            args.append(em.emit(Op.CONCAT, *(n.inputs[2] for n in group), axis=0, name=f"b_{tag}"))
        fused = em.emit(Op.LINEAR, *args, name=tag)
        sizes = tuple(int(n.output.type.shape[-1]) for n in group)
        em.node(Op.SPLIT, (fused,), tuple(n.output for n in group), axis=-1, sizes=sizes)
        return Rewrite(remove=group, add=em.nodes)

    return rewrite(graph, fuse)


def unfuse_qkv_projection(graph: Graph) -> Graph:
    """``split(linear(x, concat(w...), concat(b...)))`` back to one linear per output."""
    def unfuse(node: Node, index: GraphIndex) -> Rewrite | None:
        if node.op is not Op.SPLIT or node.attr("axis") not in (-1, 2):
            return None
        lin = index.producer(node.inputs[0], Op.LINEAR)
        if lin is None or not index.single_use(lin.output):
            return None
        cats = [index.producer(v, Op.CONCAT) for v in lin.inputs[1:]]
        if any(c is None or not all(v in index.params for v in c.inputs) or not index.single_use(c.output)
               or len(c.inputs) != len(node.outputs) for c in cats):
            return None
        parts = zip(*(c.inputs for c in cats), strict=True)  # (w_i, b_i) per output
        add = [Node(Op.LINEAR, (lin.inputs[0], *p), (out,), ()) for p, out in zip(parts, node.outputs, strict=True)]
        return Rewrite(remove=[node, lin, *cats], add=add)

    return rewrite(graph, unfuse)
