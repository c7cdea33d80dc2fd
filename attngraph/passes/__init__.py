"""Graph-to-graph passes and the pipeline runner.

Each pass is a plain function ``Graph -> Graph`` that returns the same object when it changes
nothing. ``run_pipeline`` verifies the graph after every pass.

Pipelines: ``O0`` runs nothing (the primitive chain, as built); ``O1`` folds scales, fuses the
Q/K/V projections, fuses the attention core and removes dead code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from attngraph.ir import Graph
from attngraph.ir.verify import verify_graph
from attngraph.passes.dce import eliminate_dead_code
from attngraph.passes.decompose import decompose, decompose_attention
from attngraph.passes.fold_scales import fold_scales
from attngraph.passes.fuse_attention import fuse_attention
from attngraph.passes.fuse_quant_attention import fuse_quant_attention
from attngraph.passes.fuse_qkv import fuse_qkv_projection, unfuse_qkv_projection

Pass = Callable[[Graph], Graph]

PIPELINES: dict[str, tuple[Pass, ...]] = {
    "O0": (),
    "O1": (fold_scales, fuse_qkv_projection, fuse_attention, fuse_quant_attention, eliminate_dead_code),
}


def run_pipeline(graph: Graph, passes: str | Sequence[Pass] = "O1", *, verify: bool = True,
                 dump: bool | None = None) -> Graph:
    """Run ``passes`` (a pipeline name or a list) in order, verifying after each one.

    With ``dump`` (or ``ATTNGRAPH_DUMP=1``) the graph is printed after every pass that changed it.
    """
    if isinstance(passes, str):
        if passes not in PIPELINES:
            raise KeyError(f"unknown pipeline {passes!r}; known: {sorted(PIPELINES)}")
        passes = PIPELINES[passes]
    dump = os.environ.get("ATTNGRAPH_DUMP") == "1" if dump is None else dump
    if verify:
        verify_graph(graph)
    for p in passes:
        new = p(graph)
        if verify and new is not graph:
            verify_graph(new)
        if dump and new is not graph:
            print(f"--- after {p.__name__}\n{new}", file=sys.stderr)
        graph = new
    return graph


__all__ = [
    "PIPELINES", "Pass", "decompose", "decompose_attention", "eliminate_dead_code", "fold_scales",
    "fuse_attention", "fuse_qkv_projection", "fuse_quant_attention", "run_pipeline", "unfuse_qkv_projection",
]
