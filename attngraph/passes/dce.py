"""``eliminate_dead_code``: drop nodes none of whose outputs reach a graph output.

Graph inputs and params are kept, so a graph's signature never changes under a pass.
"""

from __future__ import annotations

from attngraph.ir import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    """Remove dead nodes; returns the same graph object when nothing is dead."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    if len(kept) == len(graph.nodes):
        return graph
    return graph.replace(nodes=tuple(reversed(kept)))
