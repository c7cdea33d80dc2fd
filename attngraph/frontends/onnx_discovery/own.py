"""attngraph's own exports: the graph in the model's metadata, believed only once proven.

An attngraph export carries its IR graph in ``metadata_props``. The ONNX backend's proof
(``embedded_graph``: re-export the embedded graph in the recorded style and opset and compare the model node
for node, and check the params' initializers) decides whether the model is exactly that export; only then
is the embedded graph the discovered one, with every node of the model. A model that fails the proof is
discovered from its nodes like any other. The backend is reached through the registry (the frontends do
not import ``attngraph_backends``).
"""

from __future__ import annotations

import numpy as np

from attngraph.frontends.onnx_discovery.found import Subgraph


def own_export(proto, base_dir: str | None) -> tuple[Subgraph | None, str | None]:
    """``(subgraph, None)`` when ``proto`` is provably attngraph's export of its embedded graph; ``(None, why)``
    when it claims to be one but is not; ``(None, None)`` when it makes no such claim."""
    props = {p.key: p.value for p in proto.metadata_props}
    if "attngraph.graph" not in props:
        return None, None
    from attngraph.errors import AttnGraphError
    from attngraph.lowering.registry import get_backend

    try:
        graph, why = get_backend("onnx").embedded_graph(proto, base_dir or "")
    except (AttnGraphError, AttributeError, ImportError) as e:
        return None, f"the embedded attngraph graph could not be checked: {e}"
    if graph is None:
        return None, f"the model claims to be an attngraph export, but {why}"
    inits = {t.name: t for t in proto.graph.initializer}
    import onnx

    weights = {p.name: np.asarray(onnx.numpy_helper.to_array(inits[p.name], base_dir or "")) for p in graph.params}
    names = tuple(n.name for n in proto.graph.node)
    if len(set(names)) != len(names) or not all(names):
        return None, "the model's node names are not unique"
    inputs = {v.name: v.name for v in graph.inputs}
    outputs = {v.name: v.name for v in graph.outputs}
    given = {v.name for v in graph.inputs}
    kind = "self" if "x" in given else "cross" if "query" in given else "core"
    summary = {"kind": kind, **describe_graph(graph), "export": f"attngraph, style {props.get('attngraph.style')}"}
    notes = ("an attngraph export: the graph in its metadata, proven by re-exporting it and comparing every node",)
    return Subgraph(0, graph, weights, names, inputs, outputs, summary, notes), None


def describe_graph(graph) -> dict:
    """The listing's fields of an IR graph (for attngraph exports)."""
    from attngraph.ir import Op

    info = {"heads": None, "kv_heads": None, "head_dim": None, "causal": "no", "mask": None, "rotary": None,
            "cache": False}
    for node in graph.nodes:
        if node.op in (Op.MATMUL, Op.ATTENTION) and info["heads"] is None:
            q, k = node.inputs[0].type.shape, node.inputs[1].type.shape
            info.update(heads=q[1], kv_heads=k[1], head_dim=q[3])
        if node.op in (Op.MASK, Op.ATTENTION):
            attrs = node.attr_dict
            if attrs.get("causal"):
                info["causal"] = "yes"
            ops = attrs.get("operands", ())
            if "bool" in ops or "bias" in ops:
                info["mask"] = "bool" if "bool" in ops else "additive"
        if node.op is Op.ROTARY:
            info["rotary"] = f"{node.attr('layout')} {node.attr('rotary_dim')}/{node.inputs[0].type.shape[3]}"
    info["cache"] = any(v.name == "past_key" for v in graph.inputs)
    return info
