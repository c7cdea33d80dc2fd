"""The public entry point ``compile``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attngraph.errors import ConfigError
from attngraph.ir import Graph
from attngraph.lowering.backend import Executable


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
    from attngraph.lowering.registry import get_backend

    graph, weights = _unpack(graph, weights)
    if backend == "auto":
        return compile_auto(graph, weights, **options)
    impl = get_backend(backend) if isinstance(backend, str) else backend
    return impl.compile(graph, weights, **options)


def _unpack(graph: Any, weights: Mapping[str, np.ndarray] | None) -> tuple[Any, Mapping | None]:
    """An importer's result (``from_torch``, ``from_transformers``: it carries ``.graph`` and ``.weights``)
    compiles as its graph with its weights; anything else that is not a graph or a path is refused by name."""
    import os

    if isinstance(graph, Graph | str | os.PathLike):
        return graph, weights
    if isinstance(getattr(graph, "graph", None), Graph) and hasattr(graph, "weights"):
        return graph.graph, graph.weights if weights is None else weights
    raise ConfigError(f"compile() takes an attngraph Graph (or an .onnx path for the onnx backend), got "
                      f"{type(graph).__name__}; build one with attngraph.self_attention(...) or an importer")


def compile_auto(graph: Graph, weights: Mapping[str, np.ndarray] | None = None, *, autotune: bool = False,
                 sizes: Mapping[str, int] | None = None, **options: Any) -> Executable:
    """``compile(graph, "auto")``: the backend ``select_backend`` ranks first (or the fastest measured,
    with ``autotune=True`` at ``sizes``), falling back to the next one, with a warning, when a backend
    fails to compile or fails its first call. ``sizes``: batch, q_len, kv_len, past_len."""
    import warnings

    from attngraph.errors import GraphError, InputError, WeightError
    from attngraph.selection import select_backend
    from attngraph.selection.autotune import tuned_order

    if options:
        raise TypeError(f"backend='auto' takes no backend options (got {sorted(options)}); "
                        "name a backend to pass its options")
    selection = select_backend(graph, sizes=sizes)
    order = selection.order
    if autotune:
        order, selection.tuned = tuned_order(graph, weights, dict(sizes or {}), selection)
        selection.choice = order[0]
    failures: list[str] = []
    users_errors = (InputError, WeightError, GraphError, ConfigError)  # no other backend would take these

    def first_working(start: int) -> tuple[int, Executable]:
        for i in range(start, len(order)):
            try:
                return i, get_backend_compile(order[i], graph, weights)
            except users_errors:
                raise
            except Exception as e:  # noqa: BLE001 - any failure moves on to the next backend
                failures.append(f"{order[i]}: {type(e).__name__}: {str(e).splitlines()[0]}")
                warnings.warn(f"backend {order[i]!r} failed to compile ({failures[-1]}); trying the next one",
                              stacklevel=3)
        raise RuntimeError("every eligible backend failed: " + "; ".join(failures))

    index, ex = first_working(0)
    state = {"index": index, "ex": ex, "proven": False}

    def run(given, bound):
        while True:
            try:
                out = state["ex"].run(given, bound)
                state["proven"] = True
                return out
            except users_errors:
                raise
            except Exception as e:  # noqa: BLE001
                if state["proven"]:
                    raise
                name = order[state["index"]]
                warnings.warn(f"backend {name!r} failed its first call ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]}); falling back to the next one", stacklevel=3)
                state["index"], state["ex"] = first_working(state["index"] + 1)
                auto.backend = f"auto:{order[state['index']]}"

    auto = Executable(ex.graph, f"auto:{order[index]}", run, {"selection": selection}, ex.value_checks)
    auto.selection = selection
    return auto


def get_backend_compile(name: str, graph: Graph, weights) -> Executable:
    from attngraph.lowering.registry import get_backend

    return get_backend(name).compile(graph, weights)
