"""The table of default decompositions and the decorator that fills it (JAX's ``lower_fun``)."""

from __future__ import annotations

from collections.abc import Callable

from attngraph.ir import Node, Op
from attngraph.passes.rewrite import Emitter

Decomposition = Callable[[Node, Emitter], None]

DECOMPOSITIONS: dict[Op, Decomposition] = {}
# op -> every op its decomposition may emit (a test checks these against real expansions)
USES: dict[Op, frozenset[Op]] = {}


def decomposes(op: Op, uses: set[Op]) -> Callable[[Decomposition], Decomposition]:
    """Register the decorated function as ``op``'s default decomposition, emitting only ``uses``."""
    def register(fn: Decomposition) -> Decomposition:
        DECOMPOSITIONS[op] = fn
        USES[op] = frozenset(uses)
        return fn
    return register
