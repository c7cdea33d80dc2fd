"""Rule tables keyed by ``Op`` and the shared interpreter loop that every backend runs.

A rule is ``rule(ctx, *inputs) -> output`` (a tuple for several outputs); ``ctx`` carries the node,
the run-time values of the symbolic dims and the backend's state. Errors raised inside a rule get
the node's text line and the backend's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from attngraph.errors import AttnGraphError, LoweringError
from attngraph.ir import Attr, Node, Op, Value, dims
from attngraph.ir.printer import format_node

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

    def extended(self, backend: str, *, without: tuple[Op, ...] = ()) -> Rules:
        """A copy for another backend that starts from these rules (minus ``without``)."""
        copy = Rules(backend)
        copy.update({op: fn for op, fn in self.items() if op not in without})
        return copy

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

    def dim(self, d: dims.Dim) -> int:
        """The run-time value of dim ``d`` (an int or a symbol bound by the inputs)."""
        return dims.evaluate(d, self.dims)


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
