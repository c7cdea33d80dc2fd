"""Which model nodes a lifted subgraph replaces.

Every node between the subgraph's inputs and its outputs, found by walking back from the outputs (a
``Shape`` reads only its input's shape, so the walk does not go through it), minus the nodes that something
outside still reads (and what they need). Every node found must be one the discovery recognised or pure
shape arithmetic; anything else means a dependency the lifted graph does not account for, and the lift
is refused.
"""

from __future__ import annotations

from attngraph.frontends.onnx_discovery.operands import Refused

_SHAPE_ONLY = {"Shape", "Size"}


def replaced_nodes(graph, inputs: set, outputs: set, recognised: set, foldable) -> list:
    """The nodes of ``graph`` (onnx-ir) the subgraph replaces, in graph order. ``inputs``/``outputs``: the
    model values feeding and made by the lifted graph; ``recognised``: the nodes the discovery matched;
    ``foldable(value)``: whether a value is shape arithmetic the evaluator folds."""
    closure: set = set()
    stack = [v.producer() for v in outputs if v.producer() is not None]
    graph_inputs = set(graph.inputs)
    while stack:
        node = stack.pop()
        if node in closure:
            continue
        closure.add(node)
        if node.op_type in _SHAPE_ONLY:
            continue
        for v in node.inputs:
            if v is None or v in inputs or v in graph_inputs or v.const_value is not None:
                continue
            made = v.producer()
            if made is not None:
                stack.append(made)
    stray = [n for n in closure if n not in recognised and n.op_type not in _SHAPE_ONLY | {"Constant"}
             and not all(foldable(o) for o in n.outputs)]
    if stray:
        names = sorted(n.name for n in stray)[:3]
        raise Refused(f"the attention depends on node(s) {names} that discovery did not recognise", nodes=stray)
    readers_outside = _kept(graph, closure, outputs)
    return [n for n in graph if n in closure and n not in readers_outside]


def _kept(graph, closure: set, outputs: set) -> set:
    """Nodes of ``closure`` that must stay: something outside reads a value they make (other than the
    subgraph's outputs, which the lifted graph provides), and every node of the closure those need."""
    graph_outputs = set(graph.outputs)
    kept = set()
    for node in closure:
        for v in node.outputs:
            if v in outputs:
                continue
            if v in graph_outputs or v.is_graph_output() or any(u.node not in closure for u in v.uses()):
                kept.add(node)
    stack = list(kept)
    while stack:
        node = stack.pop()
        for v in node.inputs:
            if v is None or v in outputs:
                continue
            made = v.producer()
            if made is not None and made in closure and made not in kept:
                kept.add(made)
                stack.append(made)
    return kept
