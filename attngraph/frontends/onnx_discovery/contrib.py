"""onnxruntime's fused attention operators (domain ``com.microsoft``), each lifted as one subgraph.

``GroupQueryAttention`` (``contrib_gqa``), ``MultiHeadAttention`` (``contrib_mha``), ``Attention``
(``contrib_attention``) and ``RotaryEmbedding`` (``contrib_rotary``) are read one node at a time: the node's
attributes and inputs become an IR graph (``build_attention`` and edits at its edges, ``contrib_edit``) that
computes what onnxruntime 1.32's CPU kernel computes, input for input, each convention pinned by a
conformance case named after its trap (``attngraph.conformance.contrib_cases``). Anything whose meaning is
not provably the same (an attribute value, an input form, a quantized cache) is refused by name with the
value: ``Refused``, which discovery lists as not lifted. What the lifters share is in ``contrib_node``.
"""

from __future__ import annotations

from attngraph.errors import AttnGraphError
from attngraph.frontends.onnx_discovery.contrib_attention import lift_attention
from attngraph.frontends.onnx_discovery.contrib_gqa import lift_gqa
from attngraph.frontends.onnx_discovery.contrib_mha import lift_mha
from attngraph.frontends.onnx_discovery.contrib_rotary import lift_rotary
from attngraph.frontends.onnx_discovery.found import Subgraph
from attngraph.frontends.onnx_discovery.operands import Refused

LIFTERS = {"GroupQueryAttention": lift_gqa, "MultiHeadAttention": lift_mha, "Attention": lift_attention,
           "RotaryEmbedding": lift_rotary}


def lift_contrib(node, prep, index: int) -> Subgraph:
    """The ``Subgraph`` of one ``com.microsoft`` attention node, or ``Refused`` with the reason."""
    lifter = LIFTERS.get(node.op_type)
    if lifter is None:
        raise Refused(f"onnxruntime's com.microsoft.{node.op_type} is not lifted: attngraph reads "
                      f"{', '.join(LIFTERS)} (export the model without onnxruntime's fusions)", nodes=(node,))
    try:
        lifted = lifter(node, prep)
    except AttnGraphError as e:  # the IR refused the combination: a reason, not a crash
        raise Refused(f"com.microsoft.{node.op_type} {node.name!r}: attngraph cannot express it: "
                      f"{str(e).splitlines()[0]}", nodes=(node,)) from None
    summary = {"kind": "core", "op": f"com.microsoft.{node.op_type}", **lifted.summary}
    notes = tuple(prep.notes) + tuple(lifted.notes)
    return Subgraph(index, lifted.graph, lifted.weights, (node.name,), lifted.inputs, lifted.outputs, summary, notes,
                    dict(lifted.unspecified))
