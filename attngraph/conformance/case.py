"""``Case``: one conformance case, a name, the convention it pins down, and how to build it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attngraph.ir import Graph


@dataclass(frozen=True)
class Case:
    """One conformance case. ``build()`` -> (graph, weights, inputs), seeded: every run sees the same numbers."""

    name: str
    pins: str
    build: Callable[[], tuple[Graph, dict, dict]]
    dtype: str = "float32"
    quick: bool = True
