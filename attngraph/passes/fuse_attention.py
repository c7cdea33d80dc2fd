"""``fuse_attention``: the core chain becomes one ``attention`` node.

    matmul(q, k) {transpose_b=True} -> [scale] -> [softcap] -> [mask] -> softmax -> weighted_sum(., v)
    ==>  attention(q, k, v, *mask_operands) {scale, softcap, causal, offset, window_*, operands}

Every intermediate must have a single reader and not be a graph output, except the softmax output,
which may also be a graph output: the fused node then returns the weights too (``return_weights``).
Like onnxscript's SDPA fusion, a chain that does not match exactly is left alone.
"""

from __future__ import annotations

from attngraph import ops
from attngraph.ir import Graph, Node, Op
from attngraph.passes.util import producer_of, single_user


def _match(node: Node, producers, users, outputs) -> tuple[Node, list[Node]] | None:
    probs, v = node.inputs
    soft = producer_of(producers, probs, Op.SOFTMAX)
    if soft is None or len(users.get(probs, [])) != 1:
        return None
    chain, value = [soft], soft.inputs[0]
    found: dict[Op, Node] = {}
    for op in (Op.MASK, Op.SOFTCAP, Op.SCALE, Op.MATMUL):
        prev = producer_of(producers, value, op)
        if prev is None:
            if op is Op.MATMUL:
                return None
            continue
        if not single_user(users, outputs, value):
            return None
        found[op] = prev
        chain.append(prev)
        value = prev.inputs[0]
    mm = found[Op.MATMUL]
    if not mm.attr("transpose_b"):
        return None
    q, k = mm.inputs
    mask = found.get(Op.MASK)
    attrs = {
        "scale": float(found[Op.SCALE].attr("value")) if Op.SCALE in found else 1.0,
        "softcap": float(found[Op.SOFTCAP].attr("cap")) if Op.SOFTCAP in found else 0.0,
        "return_weights": probs in outputs,
        **({k_: mask.attr(k_) for k_ in ops.MASK_ATTRS} if mask else {}),
    }
    operands = mask.inputs[1:] if mask else ()
    outs = (node.output, probs) if attrs["return_weights"] else (node.output,)
    fused = Node(Op.ATTENTION, (q, k, v, *operands), outs, ops.complete_attrs(Op.ATTENTION, attrs))
    return fused, chain


def fuse_attention(graph: Graph) -> Graph:
    """Fuse every matching core chain; same object back when none matches."""
    producers, users, outputs = graph.producers(), graph.users(), set(graph.outputs)
    replace: dict[int, Node] = {}
    remove: set[int] = set()
    for node in graph.nodes:
        if node.op is Op.WEIGHTED_SUM:
            hit = _match(node, producers, users, outputs)
            if hit is not None:
                replace[id(node)] = hit[0]
                remove.update(id(n) for n in hit[1])
    if not replace:
        return graph
    nodes = tuple(replace.get(id(n), n) for n in graph.nodes if id(n) not in remove)
    return graph.replace(nodes=nodes)
