"""The text form of a graph, one line per input, param and node, e.g.::

    graph causal_self_attention {
      input %x: f32[batch,q_len,64]
      param %w_q: f32[64,64]
      %scores: f32[batch,4,q_len,q_len] = matmul(%qh, %kh) {transpose_b=True}
      return %y
    }

Attribute values are printed with ``repr`` so floats keep every digit; a tuple longer than
``LONG_TUPLE`` (a rotary frequency table, ALiBi slopes) shows its first values and its length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the graph module imports this one
    from attngraph.ir.graph import Graph, Node, Value

LONG_TUPLE = 8


def format_value(value: Value) -> str:
    """``%name: f32[batch,q_len,64]``."""
    return f"%{value.name}: {value.type}"


def format_attr(value) -> str:
    if isinstance(value, tuple) and len(value) > LONG_TUPLE:
        head = ", ".join(repr(v) for v in value[:3])
        return f"({head}, ... {len(value)} values)"
    return repr(value)


def format_node(node: Node) -> str:
    """One node as a line of text (no indent)."""
    outs = ", ".join(format_value(v) for v in node.outputs)
    args = ", ".join(str(v) for v in node.inputs)
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs)
    return f"{outs} = {node.op.value}({args})" + (f" {{{attrs}}}" if attrs else "")


def format_graph(graph: Graph) -> str:
    """The whole graph as text."""
    lines = [f"graph {graph.name} {{"]
    lines += [f"  input {format_value(v)}" for v in graph.inputs]
    lines += [f"  param {format_value(v)}" for v in graph.params]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines.append("  return " + ", ".join(str(v) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
