"""The rewrite helper every pass uses: an index of the graph, chain patterns, an emitter, and ``rewrite``.

A pass is a *rule*: given one node (the root of a possible match) and the graph's index, it returns
a ``Rewrite`` (the nodes it replaces and the nodes that replace them) or None. ``rewrite`` applies
every non-overlapping match at once and returns the same graph object when nothing matched, in the
spirit of onnxscript's rewrite rules and tinygrad's pattern matcher::

    def fold(node, index):
        m = index.match_chain(node, (Step(Op.SCALE), Step(Op.SCALE)))
        if m is None:
            return None
        ...
        return Rewrite(remove=m.nodes, add=[...])

    graph = rewrite(graph, fold)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from attngraph.errors import GraphError
from attngraph.ir import DType, Graph, Node, Op, Value
from attngraph.ir.graph import Attr
from attngraph.ir.nodes import make_node


def taken_names(graph: Graph) -> set[str]:
    """Every value name used in ``graph``."""
    names = {v.name for v in graph.inputs + graph.params}
    names.update(v.name for n in graph.nodes for v in n.outputs)
    return names


class GraphIndex:
    """Who produces and who reads each value, and which values are graph outputs or params."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = graph.producers()
        self.users = graph.users()
        self.outputs = set(graph.outputs)
        self.params = set(graph.params)

    def producer(self, value: Value, op: Op | None = None) -> Node | None:
        """The node defining ``value`` (None for inputs, params, or a node of another op)."""
        node = self.producers.get(value)
        return node if node is not None and (op is None or node.op is op) else None

    def single_use(self, value: Value) -> bool:
        """True when ``value`` feeds exactly one node and is not a graph output."""
        return len(self.users.get(value, [])) == 1 and value not in self.outputs

    def match_chain(self, root: Node, steps: Sequence[Step]) -> Match | None:
        """Walk back from ``root`` along input 0 through ``steps`` (root first). An optional step that
        does not match is skipped; every value inside the chain must have a single reader."""
        if root.op is not steps[0].op:
            return None
        found: dict[Op | str, Node] = {steps[0].key: root}
        nodes, value = [root], root.inputs[0]
        for step in steps[1:]:
            node = self.producer(value, step.op)
            if node is None:
                if step.optional:
                    continue
                return None
            if not self.single_use(value):
                return None
            found[step.key] = node
            nodes.append(node)
            value = node.inputs[0]
        return Match(tuple(nodes), found)


@dataclass(frozen=True)
class Step:
    """One op of a chain pattern; ``optional`` steps may be absent; ``name`` tells two steps of one op apart."""

    op: Op
    optional: bool = False
    name: str | None = None

    @property
    def key(self) -> Op | str:
        return self.name or self.op


@dataclass(frozen=True)
class Match:
    """The nodes a chain pattern matched, root first, and each by its op."""

    nodes: tuple[Node, ...]
    by_op: dict[Op | str, Node]

    def get(self, key: Op | str) -> Node | None:
        """The node matched by the step of that op (or that name)."""
        return self.by_op.get(key)


@dataclass
class Rewrite:
    """Replace ``remove`` (which includes the root) by ``add``, placed where the root was."""

    remove: Sequence[Node]
    add: Sequence[Node] = field(default_factory=list)


Rule = Callable[[Node, GraphIndex], Rewrite | None]


def rewrite(graph: Graph, rule: Rule) -> Graph:
    """Apply ``rule`` at every node, in order; matches that overlap an earlier one are skipped.
    Returns ``graph`` itself when nothing matched."""
    index = GraphIndex(graph)
    placed: dict[int, Sequence[Node]] = {}
    removed: set[int] = set()
    for node in graph.nodes:
        if id(node) in removed:
            continue
        change = rule(node, index)
        if change is None or any(id(n) in removed for n in change.remove):
            continue
        removed.update(id(n) for n in change.remove)
        placed[id(node)] = change.add
    if not removed:
        return graph
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) in placed:
            nodes.extend(placed[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    return graph.replace(nodes=tuple(nodes))


class Emitter:
    """Creates typed nodes with fresh names (through ``make_node``) and collects them in order."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.nodes: list[Node] = []

    def emit(self, op: Op, *inputs: Value, name: str | None = None, out: Value | None = None, **attrs: Attr):
        """Append ``op(inputs)``; returns its output (a tuple for several). ``out`` fixes the output Value."""
        node = make_node(op, inputs, self.taken, name=name, outputs=None if out is None else [out], **attrs)
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def node(self, op: Op, inputs: Sequence[Value], outputs: Sequence[Value | None], **attrs: Attr) -> Node:
        """Append a node whose outputs are given (None entries get fresh names); returns the node."""
        node = make_node(op, inputs, self.taken, name=[(v.name if v else op.value) for v in outputs],
                         outputs=outputs, **attrs)
        self.nodes.append(node)
        return node

    # ---- small conveniences the decompositions use -------------------------------------------
    def const(self, value, dtype: DType | str) -> Value:
        return self.emit(Op.CONST, value=value, dtype=DType.parse(dtype).value, name="c")

    def cast(self, x: Value, dtype: DType, out: Value | None = None) -> Value:
        """``x`` as ``dtype``; no node unless the dtype changes or ``out`` must be defined."""
        if x.type.dtype is dtype and out is None:
            return x
        return self.emit(Op.CAST, x, dtype=dtype.value, out=out, name=None if out else f"{x.name}_{dtype.short}")

    def finish(self, x: Value, out: Value) -> Value:
        """Define ``out`` (a node's original output) from ``x``, casting to its dtype."""
        if x.type.shape != out.type.shape:
            raise GraphError(f"a decomposition made {x.type} for %{out.name}: {out.type}")
        return self.cast(x, out.type.dtype, out=out)
