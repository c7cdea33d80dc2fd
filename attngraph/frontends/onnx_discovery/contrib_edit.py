"""``GraphEdit``: a graph from ``build_attention`` changed at its edges, for the onnxruntime contrib operators.

A contrib operator's inputs are rarely the IR graph's: a packed QKV tensor instead of Q, K and V, an int32
``seqlens_k`` instead of the static cache's ``cache_lengths``, a 0/1 key padding mask instead of an additive
mask, a (2, B, H, S, D) past instead of two caches. Each is an edit of the built graph: the old input is
*defined* by nodes computed from new inputs (placed before the first node that reads it), a new output is
computed from the graph's values, a node is replaced. The core (scale, softcap, mask, softmax, cache) stays
exactly what ``build_attention`` made, so it keeps the one set of conventions every backend is held to.
"""

from __future__ import annotations

from collections.abc import Callable

from attngraph.errors import GraphError
from attngraph.ir import DType, Graph, Node, Op, TensorType, Value, dims
from attngraph.ir.verify import verify_graph
from attngraph.passes.rewrite import Emitter, taken_names


class GraphEdit:
    """Edits of one graph, applied by ``finish()`` (which verifies the result)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.em = Emitter(taken_names(graph))
        self.inputs = list(graph.inputs)
        self.params = list(graph.params)
        self.outputs = list(graph.outputs)
        self._before: dict[str, list[Node]] = {}  # replaced input name -> the nodes that now define it
        self._after: list[Node] = []
        self._first: list[Node] = []
        self._defined: list[Value] = []  # inputs replaced by computed values (still the graph's values)
        self._nodes = list(graph.nodes)

    # ---- looking up -------------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        """A value of the graph (input, param or node output) by name."""
        for v in self.inputs + self.params + self._defined + [o for n in self._nodes for o in n.outputs]:
            if v.name == name:
                return v
        raise GraphError(f"the graph {self.graph.name} has no value named {name!r}")

    def node(self, op: Op) -> Node:
        """The graph's one node of ``op``."""
        found = [n for n in self._nodes if n.op is op]
        if len(found) != 1:
            raise GraphError(f"expected one {op.value} node in {self.graph.name}, found {len(found)}")
        return found[0]

    # ---- new values ---------------------------------------------------------------------------------------
    def new_input(self, name: str, dtype: DType | str, shape) -> Value:
        """A new graph input (its name must be free)."""
        if name in self.em.taken:
            raise GraphError(f"the graph already has a value named {name!r}")
        self.em.taken.add(name)
        value = Value(name, TensorType(DType.parse(dtype), tuple(dims.canonical(d) for d in shape)))
        self.inputs.append(value)
        return value

    def new_param(self, name: str, dtype: DType | str, shape) -> Value:
        """A new weight of fixed shape (its name must be free)."""
        if name in self.em.taken:
            raise GraphError(f"the graph already has a value named {name!r}")
        self.em.taken.add(name)
        value = Value(name, TensorType(DType.parse(dtype), tuple(int(d) for d in shape)))
        self.params.append(value)
        return value

    # ---- edits --------------------------------------------------------------------------------------------
    def define(self, name: str, make: Callable[[Emitter], Value]) -> None:
        """Input ``name`` is no longer an input: ``make(emitter)`` computes it (from new inputs, params or the
        graph's earlier values; it may define the old value itself, as ``out=``); its nodes run just before
        the first node that reads it."""
        old = next((v for v in self.inputs if v.name == name), None)
        if old is None:
            raise GraphError(f"the graph has no input {name!r} to define")
        self.inputs.remove(old)
        self._defined.append(old)
        start = len(self.em.nodes)
        made = make(self.em)
        if made.type != old.type:
            raise GraphError(f"input {name!r} is {old.type}, but its new definition makes {made.type}")
        if made != old:
            self.em.emit(Op.RESHAPE, made, shape=old.type.shape, out=old)  # a no-op reshape naming the value
        self._before[name] = self.em.nodes[start:]

    def prelude(self, make: Callable[[Emitter], Value]) -> Value:
        """Nodes computed from inputs and params alone, placed first; returns what ``make`` returns."""
        start = len(self.em.nodes)
        made = make(self.em)
        self._first += self.em.nodes[start:]
        return made

    def replace_node(self, old: Node, new: Node) -> None:
        self._nodes[self._nodes.index(old)] = new

    def set_output(self, name: str, make: Callable[[Emitter], Value] | None) -> None:
        """Output ``name`` becomes what ``make`` computes (appended at the end); ``make`` None drops it."""
        index = next((i for i, v in enumerate(self.outputs) if v.name == name), None)
        if make is None:
            if index is not None:
                del self.outputs[index]
            return
        start = len(self.em.nodes)
        made = make(self.em)
        self._after += self.em.nodes[start:]
        if index is None:
            self.outputs.append(made)
        else:
            self.outputs[index] = made

    def finish(self) -> Graph:
        """The edited graph, verified."""
        nodes: list[Node] = list(self._first)
        pending = dict(self._before)

        def place(name: str) -> None:  # a replaced input's nodes, after those of the replaced inputs they read
            for n in pending.pop(name, []):
                for v in n.inputs:
                    place(v.name)
                nodes.append(n)

        for node in self._nodes:
            for v in node.inputs:
                place(v.name)
            nodes.append(node)
        for name in list(pending):  # defined but read by no node (an output only)
            place(name)
        nodes += self._after
        return verify_graph(Graph(self.graph.name, tuple(self.inputs), tuple(self.params), tuple(nodes),
                                  tuple(self.outputs)))


def with_mask_operand(edit: GraphEdit, kind: str, value: Value) -> None:
    """Add a ``bool`` or ``bias`` operand to the graph's one ``mask`` node (combined with what it has)."""
    from attngraph.ir.attention_specs import MASK_OPERANDS

    node = edit.node(Op.MASK)
    kinds = tuple(node.attr("operands"))
    if kind in kinds:
        raise GraphError(f"the mask already has a {kind} operand")
    operands = dict(zip(kinds, node.inputs[1:]))
    operands[kind] = value
    order = tuple(k for k in MASK_OPERANDS if k in operands)
    attrs = dict(node.attrs)
    attrs["operands"] = order
    inputs = (node.inputs[0],) + tuple(operands[k] for k in order)
    edit.replace_node(node, Node(Op.MASK, inputs, node.outputs, tuple(sorted(attrs.items()))))


def same_length_keys(graph: Graph) -> Graph:
    """Self-attention from one input: the keys are as many as the queries, so the dim ``kv_len`` is ``q_len``
    in every type and dim attribute (the core graph ``build_attention`` makes names the two apart)."""
    from attngraph.ir.specs import DIM_ATTRS

    def sub(d):
        if not isinstance(d, str):
            return d
        return dims.canonical("+".join("q_len" if p.strip() == "kv_len" else p.strip() for p in d.split("+")))

    def retyped(v: Value) -> Value:
        return Value(v.name, TensorType(v.type.dtype, tuple(sub(d) for d in v.type.shape)))

    def attr(k, a):
        if k not in DIM_ATTRS:
            return a
        return tuple(sub(x) for x in a) if isinstance(a, tuple) else sub(a)

    nodes = tuple(Node(n.op, tuple(map(retyped, n.inputs)), tuple(map(retyped, n.outputs)),
                       tuple((k, attr(k, a)) for k, a in n.attrs)) for n in graph.nodes)
    return verify_graph(graph.replace(inputs=tuple(map(retyped, graph.inputs)), nodes=nodes,
                                      outputs=tuple(map(retyped, graph.outputs))))
