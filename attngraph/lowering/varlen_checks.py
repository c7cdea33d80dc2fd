"""Check the values of ``varlen_attention``'s ``cu_seqlens_q`` / ``cu_seqlens_k`` before any backend runs, so
every backend refuses the same bad value with the same ``InputError`` (a kernel would read past a sequence, a
gather would wrap a negative index, onnxruntime would fail with its own log).

A valid ``cu_seqlens`` of the packed axis of length ``total`` is ``0 = cu[0] <= cu[1] <= ... <= cu[N] = total``.
Its length ``N + 1`` is the same for queries and keys: that is a shape, checked with the other shapes
(``checking.check_inputs``: both are declared with the same dim). Only inputs fed as they are are checked here; a
computed ``cu_seqlens`` is the graph's own business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attngraph.errors import InputError
from attngraph.ir import Graph, Op, dims


def varlen_plans(graph: Graph) -> tuple[tuple[str, str, Any], ...]:
    """(input name, which axis it cuts, that axis' dim) for each cu_seqlens input of a ``varlen_attention``."""
    inputs = {v.name for v in graph.inputs}
    plans = []
    for node in graph.nodes:
        if node.op is not Op.VARLEN_ATTENTION:
            continue
        q, k, _, cu_q, cu_k = node.inputs
        for cu, what, packed in ((cu_q, "queries", q), (cu_k, "keys", k)):
            if cu.name in inputs:
                plans.append((cu.name, what, packed.type.shape[2]))
    return tuple(dict.fromkeys(plans))


def check_cu_seqlens(name: str, what: str, values: np.ndarray, total: int) -> None:
    """Raise ``InputError`` unless ``values`` is a valid cumulative-lengths vector of ``total`` packed {what}."""
    cu = values.astype(np.int64).ravel().tolist()
    fix = (f"Fix: pass the running sum of each sequence's number of {what}, starting at 0 and ending at the packed "
           f"axis' length {total} (e.g. [0, 3, 3, 7] for lengths 3, 0, 4)")
    if not cu:
        raise InputError(f"input {name!r} is empty; expected at least [0] (num_seqs + 1 entries). {fix}")
    if cu[0] != 0:
        raise InputError(f"input {name!r} starts at {cu[0]}; expected 0 (the first sequence starts at the packed "
                         f"axis' start). {fix}")
    for s in range(len(cu) - 1):
        if cu[s + 1] < cu[s]:
            raise InputError(f"input {name!r} decreases at index {s + 1} ({cu[s]} -> {cu[s + 1]}): a sequence "
                             f"length cannot be negative; expected non-decreasing values. {fix}")
    if cu[-1] != total:
        raise InputError(f"input {name!r} ends at {cu[-1]} but the packed {what} number {total}; expected its last "
                         f"entry to be {total}. {fix}")


def _host(x: Any) -> np.ndarray:
    """``x`` (a NumPy array, a torch tensor on any device, an array-like) as a NumPy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def check_varlen(plans, given: Mapping[str, Any], sizes: Mapping[str, int]) -> None:
    """Every cu_seqlens input of the plans against the packed length bound at this call."""
    for name, what, dim in plans:
        check_cu_seqlens(name, what, _host(given[name]), dims.evaluate(dim, sizes))


def random_cu_seqlens(rng: np.random.Generator, entries: int, total: int, dtype) -> np.ndarray:
    """A valid random ``cu_seqlens`` of ``entries`` values cutting ``total`` packed positions (``random_inputs``)."""
    if entries < 2:  # no sequence (valid only for an empty packed axis)
        return np.zeros(entries, dtype)
    cuts = np.sort(rng.integers(0, total + 1, size=entries - 2))
    return np.concatenate([[0], cuts, [total]]).astype(dtype)
