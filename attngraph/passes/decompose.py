"""``decompose``: expand every op a backend has no rule for, by the default decompositions, until
only ops it has rules for remain (JAX's ``lower_fun``). ``covered_ops`` says which ops that reaches.
"""

from __future__ import annotations

from attngraph.errors import GraphError
from attngraph.ir import Graph, Node, Op
from attngraph.passes.decompositions import DECOMPOSITIONS, USES
from attngraph.passes.rewrite import Emitter, Rewrite, rewrite, taken_names


def covered_ops(keep: frozenset[Op]) -> frozenset[Op]:
    """Ops runnable with rules for ``keep``: those in it, and those that decompose into covered ops."""
    covered = set(keep)
    changed = True
    while changed:
        changed = False
        for op, uses in USES.items():
            if op not in covered and uses <= covered:
                covered.add(op)
                changed = True
    return frozenset(covered)


def decompose(graph: Graph, keep: frozenset[Op] | set[Op] = frozenset()) -> Graph:
    """Expand every node whose op is not in ``keep`` and has a decomposition, repeatedly; the same
    graph object back when there is nothing to expand."""
    keep = frozenset(keep)
    for _ in range(16):  # decompositions nest a few levels deep (attention -> mask -> primitives)
        if all(n.op in keep or n.op not in DECOMPOSITIONS for n in graph.nodes):
            return graph
        taken = taken_names(graph)

        def expand(node: Node, index) -> Rewrite | None:
            if node.op in keep or node.op not in DECOMPOSITIONS:
                return None
            em = Emitter(taken)
            DECOMPOSITIONS[node.op](node, em)
            return Rewrite(remove=[node], add=em.nodes)

        graph = rewrite(graph, expand)
    raise GraphError("decompose did not reach ops with rules after 16 rounds: a decomposition cycle?")


def expand_nodes(nodes: list[Node], keep: frozenset[Op], taken: set[str]) -> list[Node]:
    """``nodes`` with every node whose op is not in ``keep`` replaced by its decomposition, recursively
    (for a backend that lowers a piece of graph inline, as the ONNX exporter's guard branches do)."""
    out: list[Node] = []
    for node in nodes:
        if node.op in keep or node.op not in DECOMPOSITIONS:
            out.append(node)
            continue
        em = Emitter(taken)
        DECOMPOSITIONS[node.op](node, em)
        out += expand_nodes(em.nodes, keep, taken)
    return out


def decompose_attention(graph: Graph) -> Graph:
    """Expand every fused ``attention`` node back into the primitive chain."""
    return decompose(graph, keep=frozenset(set(Op) - {Op.ATTENTION}))
