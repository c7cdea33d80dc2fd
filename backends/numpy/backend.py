"""The NumPy backend: the shared array math (``attngraph.array_math``) on NumPy, for float16,
bfloat16, float32 and float64.

Math runs in float32 (float64 for float64 graphs) and results are cast back to the graph's dtype.
By default ``compile`` fuses the attention core first (option ``fuse=True``) so the fused rule can
walk the queries in chunks and never hold more than ``max_scores_bytes`` of scores; with
``fuse=False`` the primitive chain runs op by op, materialising each intermediate.
"""

from __future__ import annotations

import array_api_compat.numpy as xp
from attngraph_backends.numpy.rules import rules

from attngraph.array_math import ArrayState, numpy_dtypes
from attngraph.ir import Graph
from attngraph.lowering import Backend


class NumpyBackend(Backend):
    """Reference backend. Options: ``fuse`` (default True), ``max_scores_bytes`` (default 64 MiB)."""

    name = "numpy"
    rules = rules
    options = {**Backend.options, "max_scores_bytes": 64 << 20}
    note = "the reference; query chunks of at most 64 MiB of scores"

    @classmethod
    def working_set(cls, problem) -> int:
        return min(64 << 20, 3 * problem.scores_bytes)

    def make_state(self, graph: Graph, options: dict) -> ArrayState:
        return ArrayState(xp, numpy_dtypes(), None, int(options["max_scores_bytes"]),
                          {"cache_inplace": bool(options["cache_inplace"])})
