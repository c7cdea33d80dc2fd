"""``verify_graph``: the IR's rules, checked after building, loading and every pass."""

from __future__ import annotations

from attngraph.errors import GraphError
from attngraph.ir import DType, Graph, Op, TensorType, Value, dims
from attngraph.ir import specs as ops
from attngraph.ir.printer import format_node, format_value

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def verify_graph(graph: Graph) -> Graph:
    """Check SSA form, topological order, arity, attributes and types; return the graph.

    Raises ``GraphError`` naming the rule broken and quoting the offending line of the text form.
    """
    defined: dict[str, Value] = {}

    def define(value: Value, where: str) -> None:
        _check_value(value, where)
        if value.name in defined:
            raise GraphError(f"value %{value.name} is defined twice (SSA)\n  at: {where}")
        defined[value.name] = value

    for value in graph.inputs:
        define(value, f"input {format_value(value)}")
    for value in graph.params:
        define(value, f"param {format_value(value)}")
        if any(not dims.is_static(d) for d in value.type.shape):
            raise GraphError(f"param %{value.name} must have a fixed shape, got {value.type}")
    for node in graph.nodes:
        line = format_node(node)
        if not isinstance(node.op, Op):
            raise GraphError(f"unknown op {node.op!r}\n  at: {line}")
        for value in node.inputs:
            if defined.get(value.name) != value:
                why = ("is used before it is defined" if value.name not in defined
                       else "has a different type than where it is defined")
                raise GraphError(f"input %{value.name} {why}\n  at: {line}")
        given = node.attr_dict
        try:
            if ops.complete_attrs(node.op, given) != node.attrs:
                raise GraphError(f"attributes must be complete and sorted: {ops.complete_attrs(node.op, given)}")
            types = ops.infer_types(node.op, [v.type for v in node.inputs], given)
        except GraphError as e:
            raise GraphError(f"{e}\n  at: {line}") from None
        if tuple(v.type for v in node.outputs) != types:
            want = ", ".join(str(t) for t in types)
            raise GraphError(f"declared output types differ from inferred ({want})\n  at: {line}")
        for value in node.outputs:
            define(value, line)
    if not graph.outputs:
        raise GraphError(f"graph {graph.name} has no outputs")
    seen = set()
    for value in graph.outputs:
        if defined.get(value.name) != value:
            raise GraphError(f"graph output %{value.name} is not defined by an input or a node")
        if value.name in seen:
            raise GraphError(f"graph output %{value.name} is listed twice")
        seen.add(value.name)
    return graph


def _check_value(value: Value, where: str) -> None:
    if not value.name or not set(value.name) <= _NAME_OK:
        raise GraphError(f"value name {value.name!r} must be letters, digits, '_' or '.'\n  at: {where}")
    if not isinstance(value.type, TensorType) or not isinstance(value.type.dtype, DType):
        raise GraphError(f"value %{value.name} has no valid type\n  at: {where}")
    for d in value.type.shape:
        if isinstance(d, int) and d < 0:
            raise GraphError(f"value %{value.name} has a negative dim {d}\n  at: {where}")
        try:
            dims.canonical(d)
        except (TypeError, ValueError) as e:
            raise GraphError(f"value %{value.name}: {e}\n  at: {where}") from None
