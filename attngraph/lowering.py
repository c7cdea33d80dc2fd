"""Lowering: rule tables keyed by ``Op``, the shared interpreter loop, ``Backend`` and ``Executable``.

A backend is a table of short rules, one per op, plus a ``compile`` that prepares the graph
(fusing or decomposing what its rules want), binds the weights, folds the weight-only part of
the graph once, and returns an ``Executable``. Ops without a rule are expanded by the
decomposition table in ``attngraph.passes.decompose`` (JAX's ``lower_fun``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attngraph.checking import check_inputs
from attngraph.errors import AttnGraphError, LoweringError
from attngraph.ir import Attr, Graph, Node, Op, Value
from attngraph.printer import format_node
from attngraph.verify import verify_graph
from attngraph.weights import Weights

Rule = Callable[..., Any]


class Rules(dict):
    """``Op -> rule``. ``@rules.register(Op.X)`` refuses duplicates; a missing op names the backend."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend

    def register(self, op: Op) -> Callable[[Rule], Rule]:
        def deco(fn: Rule) -> Rule:
            if op in self:
                raise ValueError(f"backend {self.backend!r} already has a rule for {op.value}")
            self[op] = fn
            return fn
        return deco

    def __missing__(self, op: Op) -> Rule:
        raise LoweringError(f"backend {self.backend!r} has no lowering for {op.value}")


@dataclass
class NodeCtx:
    """What a rule sees besides its inputs: the node, the bound symbolic dims, backend state."""

    node: Node
    dims: Mapping[str, int]
    state: Any = None

    def attr(self, name: str) -> Attr:
        return self.node.attr(name)


def interpret(nodes, rules: Rules, env: dict[Value, Any], dims: Mapping[str, int], state: Any = None) -> None:
    """Run ``nodes`` in order, reading and writing ``env``. Errors get the node's text line."""
    for node in nodes:
        try:
            result = rules[node.op](NodeCtx(node, dims, state), *(env[v] for v in node.inputs))
        except AttnGraphError as e:
            if "while running" not in str(e):
                e.args = (f"{e}\n  while running `{format_node(node)}` on backend {rules.backend!r}",)
            raise
        except Exception as e:
            raise LoweringError(f"{type(e).__name__}: {e}\n  while running `{format_node(node)}` "
                                f"on backend {rules.backend!r}") from e
        outs = result if len(node.outputs) > 1 else (result,)
        for value, out in zip(node.outputs, outs, strict=True):
            env[value] = out


def split_param_nodes(graph: Graph) -> tuple[list[Node], list[Node]]:
    """Nodes that depend on params only (run once per compile) and the rest (run per call)."""
    known = {v.name for v in graph.params}
    const, per_call = [], []
    for node in graph.nodes:
        if all(v.name in known for v in node.inputs):
            const.append(node)
            known.update(v.name for v in node.outputs)
        else:
            per_call.append(node)
    return const, per_call


@dataclass
class Executable:
    """A compiled graph: call it with arrays by input name; get a dict of arrays by output name."""

    graph: Graph
    backend: str
    run: Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    def __call__(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, Any]:
        given = {**(inputs or {}), **named}
        bound = check_inputs(self.graph, given)
        return self.run(given, bound)

    def __repr__(self) -> str:
        return f"Executable({self.graph.name!r} on {self.backend!r}, inputs={self.input_names})"


class Backend:
    """Base class: subclasses set ``name``, ``rules``, ``options`` and the array conversions."""

    name: str = "?"
    rules: Rules
    # ``fuse``: let the backend fuse the attention core into its own kernel (True for speed and
    # memory); False runs the primitive chain op by op, which is how tests pin each rule.
    options: dict[str, Any] = {"fuse": True}

    def to_backend(self, array: np.ndarray, options: dict[str, Any]) -> Any:
        return array

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def prepare(self, graph: Graph, options: dict[str, Any]) -> Graph:
        """Rewrite the graph for this backend: fuse the core when allowed, expand ops without a rule."""
        from attngraph.passes import decompose, fuse_attention

        if options.get("fuse") and Op.ATTENTION in self.rules:
            graph = fuse_attention(graph)
        return decompose(graph, keep=set(self.rules))

    def make_state(self, graph: Graph, options: dict[str, Any]) -> Any:
        return None

    def make_executor(self, nodes: list[Node], state: Any, options: dict[str, Any]) -> Callable[..., tuple]:
        """``execute(env, dims, outputs)``: run the per-call ``nodes`` and return the outputs' values.
        A backend may wrap it (the torch backend hands it to ``torch.compile``)."""
        rules = self.rules

        def execute(env: dict[Value, Any], dims: Mapping[str, int], outputs) -> tuple:
            interpret(nodes, rules, env, dims, state)
            return tuple(env[v] for v in outputs)
        return execute

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise AttnGraphError(f"backend {self.name!r} has no option(s) {unknown}; "
                                 f"its options are {dict(self.options)}")
        return {**self.options, **given}

    def compile(self, graph: Graph, weights: Mapping[str, np.ndarray] | None = None, **options: Any) -> Executable:
        """Verify, prepare, bind weights, fold weight-only nodes, and return an ``Executable``."""
        opts = self.resolve_options(options)
        verify_graph(graph)
        weights = Weights(weights or {}).check(graph)
        lowered = verify_graph(self.prepare(graph, opts))
        state = self.make_state(lowered, opts)
        env: dict[Value, Any] = {p: self.to_backend(weights[p.name], opts) for p in lowered.params}
        const, per_call = split_param_nodes(lowered)
        interpret(const, self.rules, env, {}, state)
        outputs = lowered.outputs
        execute = self.make_executor(per_call, state, opts)

        def run(given: dict[str, Any], bound: dict[str, int]) -> dict[str, Any]:
            local = dict(env)
            for value in lowered.inputs:
                local[value] = self.to_backend(given[value.name], opts)
            results = execute(local, bound, outputs)
            return {v.name: self.to_numpy(r) for v, r in zip(outputs, results, strict=True)}

        return Executable(lowered, self.name, run, opts)
