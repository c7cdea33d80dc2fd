"""The Numba backend: the fused ``attention`` op runs a streaming (flash-style) CPU kernel
(``kernels.py``); every other op uses the NumPy backend's rules.

Options: ``threads`` (default: NUMBA_NUM_THREADS / all cores), ``block_q`` and ``block_k`` (tile
sizes; ``block_k=0`` picks it from the head dim, see ``rules.auto_block_k``), ``fuse`` (default
True). Kernels compile once and are cached on disk (see this package's ``__init__``).
"""

from __future__ import annotations

import array_api_compat.numpy as xp
from attngraph_backends.numba import quant_rule  # noqa: F401 - registers quant_attention's rule in `rules`
from attngraph_backends.numba import paged_rule  # noqa: F401 - registers paged_attention's rule in `rules`
from attngraph_backends.numba.rules import rules

from attngraph.array_math import ArrayState, numpy_dtypes
from attngraph.errors import ConfigError
from attngraph.lowering import Backend


class NumbaBackend(Backend):
    """Streaming attention on the CPU. Options: ``threads``, ``block_q``, ``block_k``, ``fuse``."""

    name = "numba"
    rules = rules
    options = {**Backend.options, "threads": 0, "block_q": 64, "block_k": 0}
    note = "streaming kernel, O(T) memory"

    @classmethod
    def working_set(cls, problem) -> int:
        return problem.batch * problem.heads * problem.kv_len * problem.head_dim * 4  # one packed copy of K

    def make_state(self, graph, options: dict) -> ArrayState:
        for key, least in (("block_q", 1), ("block_k", 0)):
            if int(options[key]) < least:
                raise ConfigError(f"numba option {key} must be >= {least}, got {options[key]}")
        extra = {k: options[k] for k in ("threads", "block_q", "block_k", "cache_inplace")}
        return ArrayState(xp, numpy_dtypes(), None, 64 << 20, extra)
