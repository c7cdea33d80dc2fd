"""The public entry point ``compile``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attngraph.ir import Graph
from attngraph.lowering import Executable


def compile(graph: Graph, backend: str | Any = "numpy", weights: Mapping[str, np.ndarray] | None = None,
            **options: Any) -> Executable:  # noqa: A001 - the name users expect; not exported by `*`
    """Lower ``graph`` on ``backend`` (a name or a backend object) with ``weights`` bound.

    Returns an ``Executable``: call it with arrays by input name, get a dict of arrays by output
    name. Inputs are checked against the graph's types (symbolic dims included) before any work.

    Example::

        g = attngraph.causal_self_attention(d_model=64, num_heads=4)
        run = attngraph.compile(g, "numpy", weights=attngraph.Weights.random(g, seed=0))
        y = run(x=np.zeros((2, 10, 64), np.float32))["y"]
    """
    from attngraph.registry import get_backend

    impl = get_backend(backend) if isinstance(backend, str) else backend
    return impl.compile(graph, weights, **options)
