"""Helpers for users' own tests: run a graph on several backends and compare each with the float64
reference, within the conformance budgets.

    from attngraph.testing import assert_backends_agree
    assert_backends_agree(graph, weights, inputs, backends=["numpy", "onnx", "torch"])

With the pytest plugin (installed with attngraph) a test can take the ``attngraph_backend``
fixture, parametrized over ``--attngraph-backends`` (default: every installed backend).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from attngraph.ir import Graph


class BackendsDisagree(AssertionError):
    """Raised by ``assert_backends_agree`` with one line per backend and output that is off."""


def assert_backends_agree(graph: Graph, weights: Mapping[str, np.ndarray] | None, inputs: Mapping[str, Any], *,
                          backends: Iterable[str] | None = None, budgets: Mapping[str, tuple] | None = None,
                          **options: Any) -> dict[str, dict[str, np.ndarray]]:
    """Run ``graph`` on every backend in ``backends`` (default: all installed) and compare every output
    with the float64 reference; raise ``BackendsDisagree`` naming each backend and output that is out of
    its dtype budget (NaN against a number always is). Returns the outputs by backend."""
    from attngraph.conformance.budgets import BUDGETS, budget_for, compare
    from attngraph.conformance.reference import evaluate
    from attngraph.conformance.runner import installed_backends
    from attngraph.lowering.compile import compile as compile_graph

    names = list(backends) if backends is not None else installed_backends()
    weights = dict(weights or {})
    reference = evaluate(graph, weights, inputs)
    dtype = next((v.type.dtype.value for v in graph.inputs if v.type.dtype.value.startswith(("float", "bf"))),
                 "float32")
    problems, outputs = [], {}
    for name in names:
        try:
            got = compile_graph(graph, name, weights=weights, **options.get(name, {}))(inputs)
        except Exception as e:  # noqa: BLE001 - reported with the others
            problems.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        outputs[name] = got
        for out, ref in reference.items():
            verdict = compare(got[out], ref, budget_for(name, dtype, dict(budgets) if budgets else BUDGETS), out)
            if not verdict.ok:
                problems.append(f"{name}: {verdict.detail}")
    if problems:
        raise BackendsDisagree(f"graph {graph.name}: {len(problems)} disagreement(s) with the float64 reference:\n  "
                               + "\n  ".join(problems))
    return outputs
