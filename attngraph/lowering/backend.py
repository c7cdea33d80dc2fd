"""``Backend`` and ``Executable``: how a backend prepares, binds and runs a graph, and describes itself.

A backend is a table of short rules (``attngraph.lowering.rules``), one per op it runs itself, plus
a ``compile`` that prepares the graph (fusing the attention core where its rules want that, and
expanding every op it has no rule for by the default decompositions, as JAX's ``lower_fun``),
binds the weights, folds the weight-only part of the graph once, and returns an ``Executable``.

A backend also describes itself on its class (``devices``, ``dtypes``, ``note``, ``supports`` and
``working_set``), so ``compile(g, "auto")`` ranks or rejects a plug-in exactly as a built-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attngraph.errors import AttnGraphError, ConfigError, LoweringError
from attngraph.ir import DType, Graph, Node, Op, Value
from attngraph.ir.specs import uses_symbols
from attngraph.ir.verify import verify_graph
from attngraph.lowering.checking import native_byte_order
from attngraph.lowering.rules import Rules, interpret
from attngraph.lowering.signatures import CheckedSignatures
from attngraph.lowering.value_checks import ValueChecks
from attngraph.lowering.weights import Weights
from attngraph.passes.decompose import covered_ops, decompose
from attngraph.passes.fuse_attention import fuse_attention
from attngraph.passes.fuse_quant_attention import fuse_quant_attention

ALL_DTYPES = frozenset(DType)


def split_param_nodes(graph: Graph) -> tuple[list[Node], list[Node]]:
    """Nodes that depend on params only (run once per compile) and the rest (run per call): a node
    whose attributes hold a symbolic dim (an ``iota`` of ``q_len``) needs the call's sizes."""
    known = {v.name for v in graph.params}
    const, per_call = [], []
    for node in graph.nodes:
        if all(v.name in known for v in node.inputs) and not uses_symbols(node):
            const.append(node)
            known.update(v.name for v in node.outputs)
        else:
            per_call.append(node)
    return const, per_call


@dataclass
class Executable:
    """A compiled graph: call it with arrays by input name; get a dict of arrays by output name.

    Every call checks the inputs' names, dtypes and shapes (``checking``), then the values of the length and
    position inputs (``value_checks``), before ``run`` hands them to the backend. ``value_checks`` are those
    of the graph the user compiled (made from ``graph`` when not given): a backend's lowered graph may have
    expanded the ops that say what those values index."""

    graph: Graph
    backend: str
    run: Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    value_checks: ValueChecks | None = None
    # check_inputs per input signature (signatures.py): a decode loop's repeated call skips the shape walk
    checked: CheckedSignatures | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.value_checks is None:
            self.value_checks = ValueChecks(self.graph)
        if self.checked is None:
            self.checked = CheckedSignatures(self.graph)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    def __call__(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, Any]:
        given = native_byte_order({**(inputs or {}), **named})
        bound = self.checked(given)
        self.value_checks(given, bound)
        return self.run(given, bound)

    def __repr__(self) -> str:
        return f"Executable({self.graph.name!r} on {self.backend!r}, inputs={self.input_names})"


def quiet_non_finite():
    """NumPy's float warnings off: NaN and inf propagate by the semantics table (masked ones are dropped), so a
    warning about them on every call with such an input would be noise, not news."""
    return np.errstate(invalid="ignore", divide="ignore", over="ignore")


class Backend:
    """Base class: subclasses set ``name``, ``rules``, ``options`` and, where needed, the hooks below."""

    name: str = "?"
    rules: Rules
    # ``fuse``: let the backend fuse the attention core into its own kernel (True for speed and
    # memory); False runs the primitive chain op by op, which is how tests pin each rule.
    # ``cache_inplace``: a static cache's write goes into the caller's own buffer (the output cache is the
    # input array, updated) where the backend can; False keeps the functional form (a new array).
    options: dict[str, Any] = {"fuse": True, "cache_inplace": True}
    # self-description, read by backend selection
    devices: tuple[str, ...] = ("cpu",)
    dtypes: frozenset[DType] = ALL_DTYPES
    note: str = ""

    # ---- what the backend can run, and at what memory cost -----------------------------------
    @classmethod
    def covered(cls) -> frozenset[Op]:
        """Every op this backend runs: its rules, and every op that decomposes into them."""
        return covered_ops(frozenset(cls.rules))

    @classmethod
    def supports(cls, graph: Graph) -> str | None:
        """None when the backend can run ``graph`` exactly, else the reason it cannot."""
        missing = sorted({n.op.value for n in graph.nodes} - {op.value for op in cls.covered()})
        if missing:
            return f"has no rule or decomposition for {', '.join(missing)}"
        dtypes = {v.type.dtype for v in graph.inputs + graph.params + graph.outputs} - set(cls.dtypes)
        if dtypes:
            return f"does not take {', '.join(sorted(d.value for d in dtypes))} tensors"
        return None

    @classmethod
    def working_set(cls, problem: Any) -> int:
        """Bytes of working memory beyond inputs and weights at ``problem``'s sizes (a
        ``selection.Problem``). Default: the scores, the masked scores and the probabilities."""
        return 3 * problem.scores_bytes

    # ---- conversions and hooks ---------------------------------------------------------------
    def to_backend(self, array: np.ndarray, options: dict[str, Any]) -> Any:
        return array

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def prepare(self, graph: Graph, options: dict[str, Any]) -> Graph:
        """Rewrite the graph for this backend: fuse the core when allowed, expand ops without a rule."""
        if options.get("fuse") and Op.ATTENTION in self.rules:
            graph = fuse_attention(graph)
        if options.get("fuse") and Op.QUANT_ATTENTION in self.rules:  # a kernel reading the quantized cache
            graph = fuse_quant_attention(graph)
        return decompose(graph, keep=frozenset(self.rules))

    def make_state(self, graph: Graph, options: dict[str, Any]) -> Any:
        return None

    def make_executor(self, nodes: list[Node], state: Any, options: dict[str, Any]) -> Callable[..., tuple]:
        """``execute(env, dims, outputs)``: run the per-call ``nodes`` and return the outputs' values.
        A backend may wrap it (the torch backend hands it to ``torch.compile``)."""
        rules = self.rules

        def execute(env: dict[Value, Any], dims: Mapping[str, int], outputs) -> tuple:
            with quiet_non_finite():
                interpret(nodes, rules, env, dims, state)
            return tuple(env[v] for v in outputs)
        return execute

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise ConfigError(f"backend {self.name!r} has no option(s) {unknown}; "
                              f"its options are {dict(self.options)}")
        return {**self.options, **given}

    def compile(self, graph: Graph, weights: Mapping[str, np.ndarray] | None = None, **options: Any) -> Executable:
        """Verify, prepare, bind weights, fold weight-only nodes, and return an ``Executable``."""
        opts = self.resolve_options(options)
        if not isinstance(graph, Graph):
            raise AttnGraphError(f"backend {self.name!r} compiles an attngraph Graph, got {type(graph).__name__}")
        verify_graph(graph)
        missing = [n for n in graph.nodes if n.op not in self.covered()]
        if missing:
            from attngraph.ir.printer import format_node

            raise LoweringError(f"backend {self.name!r} has no lowering for {missing[0].op.value} (no rule, and no "
                                f"decomposition into ops it has rules for)\n  at: {format_node(missing[0])}")
        weights = Weights(weights or {}).check(graph)
        lowered = verify_graph(self.prepare(graph, opts))
        state = self.make_state(lowered, opts)
        env: dict[Value, Any] = {p: self.to_backend(weights[p.name], opts) for p in lowered.params}
        const, per_call = split_param_nodes(lowered)
        with quiet_non_finite():
            interpret(const, self.rules, env, {}, state)
        outputs = lowered.outputs
        execute = self.make_executor(per_call, state, opts)

        def run(given: dict[str, Any], bound: dict[str, int]) -> dict[str, Any]:
            local = dict(env)
            for value in lowered.inputs:
                local[value] = self.to_backend(given[value.name], opts)
            results = execute(local, bound, outputs)
            return {v.name: self.to_numpy(r) for v, r in zip(outputs, results, strict=True)}

        return Executable(lowered, self.name, run, opts, ValueChecks(graph))
