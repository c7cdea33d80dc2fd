"""The graph: named SSA values, nodes applying an ``Op``, and a graph of nodes in topological order.

The semantics every op follows are the normative table ``attngraph.ir.semantics.SEMANTICS`` (the
README shows the same table; a test keeps the two equal). Weights are graph *params*, kept apart
from the runtime *inputs*, so a backend can fold the weight-only part of a graph once per compile.
Linear weights are stored ``(in, out)``: ``x @ w``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attngraph.ir.op import Op
from attngraph.ir.printer import format_graph
from attngraph.ir.types import TensorType


@dataclass(frozen=True, slots=True)
class Value:
    """A named SSA value; the name is unique within its graph."""

    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"%{self.name}"


Attr = Any  # int | float | bool | str | tuple of those; always hashable


@dataclass(frozen=True, slots=True)
class Node:
    """One op applied to values. ``attrs`` is sorted ``(name, value)`` pairs, complete (defaults filled)."""

    op: Op
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: tuple[tuple[str, Attr], ...] = ()

    def attr(self, name: str) -> Attr:
        for key, value in self.attrs:
            if key == name:
                return value
        raise KeyError(f"{self.op.value} node has no attribute {name!r}")

    @property
    def attr_dict(self) -> dict[str, Attr]:
        return dict(self.attrs)

    @property
    def output(self) -> Value:
        """The single output; ``ValueError`` for multi-output nodes."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op.value} node has {len(self.outputs)} outputs")
        return self.outputs[0]


@dataclass(frozen=True, slots=True)
class Graph:
    """A whole attention computation.

    ``inputs`` are fed at every call, ``params`` (weights) once per compile, ``nodes`` are in
    topological order, and ``outputs`` are returned by name.
    """

    name: str
    inputs: tuple[Value, ...]
    params: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]

    def __str__(self) -> str:
        return format_graph(self)

    def producers(self) -> dict[Value, Node]:
        """Map from each node output to the node that defines it."""
        return {out: node for node in self.nodes for out in node.outputs}

    def users(self) -> dict[Value, list[Node]]:
        """Map from each value to the nodes that read it (graph outputs are not counted)."""
        uses: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for value in node.inputs:
                uses.setdefault(value, []).append(node)
        return uses

    def count(self, op: Op) -> int:
        """How many nodes apply ``op``."""
        return sum(1 for node in self.nodes if node.op is op)

    def replace(self, **changes: Any) -> Graph:
        """A copy with some fields changed."""
        fields = {f: getattr(self, f) for f in ("name", "inputs", "params", "nodes", "outputs")}
        fields.update(changes)
        return Graph(**fields)
