"""``check_inputs`` once per input signature: the fast path of a repeated call (a decode loop).

A decode loop calls the same ``Executable`` with arrays of the same names, types, shapes and dtypes every
step; ``check_inputs`` (names, dtypes, ranks, every symbolic dim) is a pure function of exactly that, and
costs ~45 us a call on six inputs -- a tenth of a B1 decode step against 1024 keys. So its result is kept
per signature and a repeated signature skips the walk. Values are still checked every call
(``value_checks``): a length or position may change from one step to the next, a shape cannot without
changing the signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attngraph.ir import Graph
from attngraph.lowering.checking import check_inputs

# Signatures kept per Executable: a decode loop has one or two (prefill, step); a caller cycling through
# more only loses the fast path, never a check.
SIGNATURES_KEPT = 16


def signature(given: Mapping[str, Any]) -> tuple | None:
    """What ``check_inputs`` reads of ``given``: each input's name, array type, shape and dtype (None when an
    input is no array: the full check then runs and names it)."""
    try:
        return tuple((name, type(a), tuple(a.shape), a.dtype) for name, a in given.items())
    except (AttributeError, TypeError):
        return None


class CheckedSignatures:
    """``check_inputs(graph, given)``, remembered per ``signature(given)``: returns the bound dims (a fresh dict
    each call, so a caller may change it); raises ``InputError`` exactly as ``check_inputs``."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._bound: dict[tuple, dict[str, int]] = {}

    def __call__(self, given: Mapping[str, Any]) -> dict[str, int]:
        key = signature(given)
        if key is not None:
            try:
                hit = self._bound.get(key)
            except TypeError:  # an unhashable dtype or shape entry: no fast path for it
                key, hit = None, None
            if hit is not None:
                return dict(hit)
        bound = check_inputs(self.graph, given)  # raises on a bad signature: only good ones are kept
        if key is not None:
            if len(self._bound) >= SIGNATURES_KEPT:
                self._bound.clear()
            self._bound[key] = bound
        return dict(bound)
