"""``GraphBuilder``: typed graph construction with unique names and inferred output types."""

from __future__ import annotations

from collections.abc import Sequence

from attngraph.errors import GraphError
from attngraph.ir import Attr, DType, Graph, Node, Op, TensorType, Value, dims
from attngraph.ir.nodes import make_node
from attngraph.ir.verify import verify_graph


class GraphBuilder:
    """Records nodes in order. Output types come from ``attngraph.ir.specs``; names are made unique.

    Example::

        b = GraphBuilder("scores")
        q = b.input("q", "float32", ("batch", 4, "q_len", 16))
        k = b.input("k", "float32", ("batch", 4, "kv_len", 16))
        s = b.op(Op.MATMUL, q, k, transpose_b=True, name="scores")
        graph = b.build([s])
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._inputs: list[Value] = []
        self._params: list[Value] = []
        self._nodes: list[Node] = []
        self._taken: set[str] = set()

    def _value(self, name: str, dtype: DType | str, shape: Sequence[dims.Dim], kind: str) -> Value:
        if name in self._taken:
            raise GraphError(f"{kind} name {name!r} is already used in graph {self.name}")
        self._taken.add(name)
        return Value(name, TensorType(DType.parse(dtype), tuple(dims.canonical(d) for d in shape)))

    def input(self, name: str, dtype: DType | str, shape: Sequence[dims.Dim]) -> Value:
        """Declare a runtime input (fed at every call)."""
        value = self._value(name, dtype, shape, "input")
        self._inputs.append(value)
        return value

    def param(self, name: str, dtype: DType | str, shape: Sequence[int]) -> Value:
        """Declare a weight (bound once per compile); its shape must be fixed."""
        value = self._value(name, dtype, shape, "param")
        self._params.append(value)
        return value

    def op(self, op: Op, *inputs: Value, name: str | Sequence[str] | None = None, **attrs: Attr):
        """Append ``op(inputs) {attrs}``; returns the output Value (or a tuple for several)."""
        node = make_node(op, inputs, self._taken, name=name, **attrs)
        self._nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def build(self, outputs: Sequence[Value]) -> Graph:
        """The finished, verified graph."""
        graph = Graph(self.name, tuple(self._inputs), tuple(self._params), tuple(self._nodes), tuple(outputs))
        return verify_graph(graph)
