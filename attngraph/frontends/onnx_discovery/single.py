"""An ONNX ``Attention`` node lifted on its own, through the single-node importer ``from_onnx`` uses.

``from_onnx`` maps every form of the operator the IR expresses (3-D inputs, ``nonpad_kv_seqlen``, the
``qk_matmul_output`` modes, windows) and validates it against the schema. Here the node is cut out of the
model as a one-node model whose inputs carry the model's inferred shapes, imported, and its graph's
inputs and outputs keep the model's value names.
"""

from __future__ import annotations

import re

from attngraph.errors import AttnGraphError
from attngraph.frontends.onnx_discovery.found import Subgraph
from attngraph.frontends.onnx_discovery.operands import Refused
from attngraph.frontends.onnx_node_import import import_node_model


def _dim_name(poly, names: dict) -> object:
    if poly is None:
        return None
    if poly.is_const:
        return poly.value
    key = repr(poly)
    if key not in names:
        text = re.sub(r"[^A-Za-z0-9_]", "_", key).strip("_") or "d"
        names[key] = text if text[0].isalpha() else f"d_{text}"
    return names[key]


def attention_node(node, prep, index: int) -> Subgraph:
    """The ``Subgraph`` of one ``Attention`` node (onnx-ir ``node`` of ``prep``), or ``Refused``."""
    import onnx
    from onnx import helper

    proto_node = next(n for n in prep.proto.graph.node if n.name == node.name)
    names: dict = {}
    inputs = []
    for v in node.inputs:
        if v is None:
            continue
        dims = prep.shapes.get(v.name)
        elem = v.dtype.value if v.dtype is not None else onnx.TensorProto.FLOAT
        shape = None if dims is None else [_dim_name(d, names) for d in dims]
        if shape is not None and any(d is None for d in shape):
            shape = [d if d is not None else f"unknown_{v.name}_{i}" for i, d in enumerate(shape)]
        inputs.append(helper.make_tensor_value_info(v.name, elem, shape))
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in proto_node.output if o]
    opset = next((o.version for o in prep.proto.opset_import if o.domain in ("", "ai.onnx")), 23)
    mini = helper.make_model(helper.make_graph([proto_node], "attention", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", opset)])
    mini.ir_version = 10
    try:
        graph = import_node_model(mini)
    except AttnGraphError as e:
        raise Refused(f"Attention node {node.name!r}: {e}", nodes=(node,)) from None
    ins = {v.name: v.name for v in graph.inputs}
    outs = {v.name: v.name for v in graph.outputs}
    summary = {"kind": "core", "heads": None, "kv_heads": None, "head_dim": None, "causal": None, "mask": None,
               "rotary": None, "cache": False}
    from attngraph.frontends.onnx_discovery.own import describe_graph

    summary.update(describe_graph(graph))
    return Subgraph(index, graph, {}, (node.name,), ins, outs, summary,
                    tuple(prep.notes) + ("an ONNX Attention node, imported by from_onnx",))
