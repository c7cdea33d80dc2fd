"""``fuse_attention``: the core chain becomes one ``attention`` node.

    matmul(q, k) {transpose_b=True} -> [alibi] -> [scale] -> [softcap] -> [alibi] -> [rel_bias] -> [mask]
        -> softmax(., [sinks]) -> weighted_sum(., v)
    ==>  attention(q, k, v, *mask_operands, [rel_table], [sinks]) {scale, softcap, mask attrs, biases}

Every intermediate must have a single reader and not be a graph output, except the softmax output,
which may also be a graph output: the fused node then returns the weights too (``return_weights``).
ALiBi, the relative bias and the mask must place the queries alike (offset, align, key lengths).
Like onnxscript's SDPA fusion, a chain that does not match exactly is left alone.
"""

from __future__ import annotations

from attngraph.ir import Graph, Node, Op, specs
from attngraph.passes.rewrite import Emitter, GraphIndex, Match, Rewrite, Step, rewrite, taken_names

CHAIN = (Step(Op.SOFTMAX), Step(Op.MASK, optional=True), Step(Op.REL_BIAS, optional=True),
         Step(Op.ALIBI, optional=True, name="alibi_after"), Step(Op.SOFTCAP, optional=True),
         Step(Op.SCALE, optional=True), Step(Op.ALIBI, optional=True, name="alibi_before"), Step(Op.MATMUL))


def _placement(m: Match) -> dict | None:
    """The query placement (offset, align, key lengths) the chain's mask and biases share, or None if they differ."""
    found = {}
    for key in (Op.MASK, Op.REL_BIAS, "alibi_after", "alibi_before"):
        node = m.get(key)
        if node is None:
            continue
        lengths = None
        if node.op is Op.MASK:
            lengths = dict(zip(node.attr("operands"), node.inputs[1:])).get("lengths")
        elif node.attr("align") == "lengths":
            lengths = node.inputs[-1]
        place = {"offset": node.attr("offset"), "align": node.attr("align")}
        if found and any(found[k] != v for k, v in place.items()):
            return None
        if lengths is not None and found.get("lengths", lengths) != lengths:
            return None
        found.update(place, **({"lengths": lengths} if lengths is not None else {}))
    if found.get("align") == "lengths" and (m.get(Op.MASK) is None or "lengths" not in m.get(Op.MASK).attr("operands")):
        return None  # the fused op reads the lengths from the mask's operands
    return found


def _fuse(node: Node, index: GraphIndex, taken: set[str]) -> Rewrite | None:
    if node.op is not Op.WEIGHTED_SUM:
        return None
    probs, v = node.inputs
    soft = index.producer(probs, Op.SOFTMAX)
    if soft is None or len(index.users.get(probs, [])) != 1:
        return None
    m = index.match_chain(soft, CHAIN)
    if m is None or not m.get(Op.MATMUL).attr("transpose_b") or (where := _placement(m)) is None:
        return None
    if m.get("alibi_before") is not None and m.get("alibi_after") is not None:
        return None
    q, k = m.get(Op.MATMUL).inputs
    scale, softcap, mask, rel = m.get(Op.SCALE), m.get(Op.SOFTCAP), m.get(Op.MASK), m.get(Op.REL_BIAS)
    alibi = m.get("alibi_before") or m.get("alibi_after")
    weights = probs in index.outputs
    attrs = {
        "scale": float(scale.attr("value")) if scale else 1.0,
        "softcap": float(softcap.attr("cap")) if softcap else 0.0,
        "return_weights": weights,
        **({name: mask.attr(name) for name in specs.MASK_ATTRS} if mask else {}),
        **{k_: v_ for k_, v_ in where.items() if k_ != "lengths"},
        "alibi_slopes": alibi.attr("slopes") if alibi else (),
        "alibi_before_scale": m.get("alibi_before") is not None,
        **({"rel_buckets": rel.attr("num_buckets"), "rel_max_distance": rel.attr("max_distance"),
            "rel_bidirectional": rel.attr("bidirectional")} if rel else {}),
    }
    kinds = tuple(mask.attr("operands") if mask else ()) + (("rel_table",) if rel else ()) + \
        (("sinks",) if len(soft.inputs) == 2 else ())
    extra = ((rel.inputs[1],) if rel else ()) + tuple(soft.inputs[1:])
    em = Emitter(taken)
    em.node(Op.ATTENTION, (q, k, v, *(mask.inputs[1:] if mask else ()), *extra),
            (node.output, probs) if weights else (node.output,), **{**attrs, "operands": kinds})
    return Rewrite(remove=[node, *m.nodes], add=em.nodes)


def fuse_attention(graph: Graph) -> Graph:
    """Fuse every matching core chain; same object back when none matches."""
    taken = taken_names(graph)
    return rewrite(graph, lambda node, index: _fuse(node, index, taken))
