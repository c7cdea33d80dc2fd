"""``DecodeSession``: the decode loop of a static-cache graph, on any backend.

    g = attngraph.causal_self_attention(512, 8, num_kv_heads=2, rotary="half", kv_cache="static", max_len=4096)
    session = attngraph.DecodeSession(g, "numba", weights=w, batch=2)
    y = session.prefill(prompt, lengths=[7, 5])     # (B, T, d_model), right-padded; per-row prompt lengths
    for _ in range(n):
        y = session.step(token)                      # (B, 1, d_model): one new token per row

The session holds the cache buffers (zeros: a runtime that reads past a row's length then sees finite
values) and each row's valid length. Every backend writes the new keys and values into those buffers
in place (``cache_inplace``), so a step costs no copy of the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attngraph.errors import ConfigError, InputError
from attngraph.ir import Graph
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering.buffers import aligned_zeros
from attngraph.lowering.compile import compile as compile_graph


class DecodeSession:
    """Prefill, then one step per token, with the cache kept between calls (see the module docstring)."""

    def __init__(self, graph: Graph, backend: str | Any = "numpy", *, weights: Mapping[str, np.ndarray] | None = None,
                 batch: int = 1, **options: Any) -> None:
        names = {v.name: v for v in graph.inputs}
        outputs = {v.name for v in graph.outputs}
        # the cache buffers: each input past_X whose present_X is an output (past_key/past_value; MLA's
        # past_latent/past_rope_key)
        self._cache_names = tuple(n for n in names if n.startswith("past_") and f"present_{n[5:]}" in outputs)
        if "cache_lengths" not in names or not self._cache_names:
            raise ConfigError(f"DecodeSession runs a static-cache graph (kv_cache='static' or 'rolling', inputs "
                              f"past_key, past_value, cache_lengths; latent_attention: past_latent, past_rope_key, "
                              f"cache_lengths); graph {graph.name} takes {sorted(names)}")
        first_cache = names[self._cache_names[0]]
        if not isinstance(first_cache.type.shape[2], int):
            raise ConfigError(f"DecodeSession allocates the cache itself: it needs a fixed max_len, but graph "
                              f"{graph.name} leaves it to the caller ({first_cache.type}); build it with "
                              "max_len=N (an int)")
        self.graph = graph
        self.executable = compile_graph(graph, backend, weights=weights, **options)
        self.batch = int(batch)
        self.max_len = int(first_cache.type.shape[2])
        # 64-byte aligned: torch's MKL streams such a cache faster (buffers.py); zeros: see the module docstring
        self._caches = {n: aligned_zeros(tuple(self.batch if d == "batch" else int(d) for d in names[n].type.shape),
                                         to_numpy(names[n].type.dtype)) for n in self._cache_names}
        self.lengths = np.zeros(self.batch, np.int64)
        # The steady state of a step builds nothing here: the feed and its lengths buffer are made once (a
        # backend may keep a view of the lengths it was given, so it gets a copy the session refills in place)
        self._fed_lengths = np.zeros(self.batch, np.int64)
        self._feed = {**self._caches, "cache_lengths": self._fed_lengths}

    def reset(self) -> None:
        """Forget every row's cached tokens (the buffers are kept and zeroed)."""
        for cache in self._caches.values():
            cache[...] = 0
        self.lengths[:] = 0

    def prefill(self, x: np.ndarray, lengths: Sequence[int] | None = None, **inputs: Any) -> np.ndarray:
        """Run a (right-padded) prompt; ``lengths`` is each row's real length (default: all of it)."""
        steps = np.asarray(x).shape[1]
        added = np.full(self.batch, steps, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        if added.shape != (self.batch,) or (added < 0).any() or (added > steps).any():
            raise InputError(f"lengths must be {self.batch} numbers in 0..{steps} (each row's prompt length), "
                             f"got {list(added)}")
        return self._run(x, added, inputs)

    def step(self, x: np.ndarray, **inputs: Any) -> np.ndarray:
        """One new token per row: ``x`` is (batch, 1, d_model) (or the graph's first input's shape)."""
        return self._run(x, np.asarray(x).shape[1], inputs)

    def _run(self, x: np.ndarray, added: np.ndarray | int, inputs: dict) -> np.ndarray:
        # No overflow check here: the Executable's value checks (value_checks.py) refuse a step past max_len,
        # naming the row, its length and the fix -- one check, in one place, for sessions and direct calls.
        feed = self._feed
        feed[self.graph.inputs[0].name] = x
        if inputs:
            feed = {**feed, **inputs}
        self._fed_lengths[...] = self.lengths
        out = self.executable(feed)
        for name in self._cache_names:
            result = out[f"present_{name[5:]}"]
            # a backend that could not write in place (may_share_memory: bounds only, O(1))
            if not np.may_share_memory(np.asarray(result), self._caches[name]):
                self._caches[name][...] = result
        self.lengths += added
        return out[self.graph.outputs[0].name]
