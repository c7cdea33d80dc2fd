"""``PagedDecodeSession``: many sequences of their own lengths on one paged KV cache, on any backend.

    g = attngraph.paged_self_attention(512, 8, num_kv_heads=2, block_size=16, num_blocks=512, max_blocks=256)
    session = attngraph.PagedDecodeSession(g, "numba", weights=w)
    a, b = session.add(), session.add()
    session.prefill(a, prompt_a)                  # (1, T_a, d_model): a sequence's prompt, run alone
    session.prefill(b, prompt_b)
    ys = session.step({a: tok_a, b: tok_b})       # one batched call; {id: (1, 1, d_model)}
    c = session.fork(a)                           # shares a's full blocks (a common prefix), copies its tail
    session.finish(b)                             # b's blocks go back to the pool for new sequences

The session owns the pools (``key_cache`` / ``value_cache``, zeros), a ``BlockAllocator`` over their blocks and each
sequence's block list and length. Before each call it gives every sequence the blocks its new tokens need, and
copies a shared tail block first (copy-on-write), so a block shared by several sequences is only ever read. The
block table fed to the graph lists each row's blocks in order, padded with -1 (never read). Every backend writes
the new tokens into the pools in place (the ONNX backend's copy is written back).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from attngraph.errors import ConfigError, InputError
from attngraph.ir import Graph, Op
from attngraph.ir.dtypes import to_numpy
from attngraph.ir.paged_specs import block_geometry
from attngraph.lowering.buffers import aligned_zeros
from attngraph.lowering.compile import compile as compile_graph

_FIXED = ("block_table", "cache_lengths")


class BlockAllocator:
    """Block ids of a pool of ``num_blocks``, handed out from a free list, with a reference count each: a block
    shared by forked sequences (a common prefix) goes back to the free list when its last user releases it."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = int(num_blocks)
        self._free = deque(range(self.num_blocks))
        self.refs = np.zeros(self.num_blocks, np.int64)

    @property
    def num_free(self) -> int:
        """How many blocks no sequence holds."""
        return len(self._free)

    def allocate(self) -> int:
        """A free block, now held once. ``InputError`` when the pool is exhausted."""
        if not self._free:
            raise InputError(f"the paged cache has no free block: all {self.num_blocks} are held. Fix: finish a "
                             "sequence (PagedDecodeSession.finish) or build the graph with more num_blocks")
        block = self._free.popleft()
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more holder of ``block`` (a forked sequence reading the same prefix)."""
        if self.refs[block] <= 0:
            raise InputError(f"block {block} is free; only a held block can be shared")
        self.refs[block] += 1

    def release(self, block: int) -> None:
        """One holder fewer; the last one returns the block to the free list."""
        if self.refs[block] <= 0:
            raise InputError(f"block {block} is already free (released twice?)")
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self._free.append(block)


class PagedDecodeSession:
    """Sequences that start, grow and finish independently on one paged cache (see the module docstring)."""

    def __init__(self, graph: Graph, backend: str | Any = "numpy", *, weights: Mapping[str, np.ndarray] | None = None,
                 **options: Any) -> None:
        nodes = [n for n in graph.nodes if n.op is Op.PAGED_CACHE_UPDATE]
        names = {v.name: v for v in graph.inputs}
        outputs = {v.name for v in graph.outputs}
        if not nodes or any(n not in names for n in _FIXED):
            raise ConfigError(f"PagedDecodeSession runs a paged-cache graph (attngraph.paged_self_attention or "
                              f"paged_attention: inputs key_cache, value_cache, block_table, cache_lengths); graph "
                              f"{graph.name} takes {sorted(names)}")
        self._pool_names = tuple(dict.fromkeys(n.inputs[0].name for n in nodes))
        missing = [n for n in self._pool_names if n not in names or f"present_{n}" not in outputs]
        if missing:
            raise ConfigError(f"PagedDecodeSession needs each written pool as an input X and an output present_X; "
                              f"graph {graph.name} lacks that for {missing}")
        self.graph = graph
        self.executable = compile_graph(graph, backend, weights=weights, **options)
        first = names[self._pool_names[0]].type
        self.layout = nodes[0].attr("layout")
        self.num_blocks, self.block_size, _, _ = block_geometry(first, self.layout)
        self.max_blocks = int(names["block_table"].type.shape[1])
        self.pools = {n: aligned_zeros(tuple(int(d) for d in names[n].type.shape), to_numpy(names[n].type.dtype))
                      for n in self._pool_names}
        self.allocator = BlockAllocator(self.num_blocks)
        self._token_inputs = tuple(n for n in names if n not in self._pool_names and n not in _FIXED)
        self._table_dtype = to_numpy(names["block_table"].type.dtype)
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    # ---- the sequences ----------------------------------------------------------------------------------------
    def add(self) -> int:
        """A new, empty sequence; returns its id."""
        sid, self._next_id = self._next_id, self._next_id + 1
        self._blocks[sid], self._lengths[sid] = [], 0
        return sid

    def fork(self, sid: int) -> int:
        """A new sequence continuing ``sid``'s tokens: it shares every block of ``sid`` (read-only for both; the
        first write into a shared block copies it). Returns the new id."""
        self._known(sid)
        child = self.add()
        for block in self._blocks[sid]:
            self.allocator.share(block)
        self._blocks[child], self._lengths[child] = list(self._blocks[sid]), self._lengths[sid]
        return child

    def finish(self, sid: int) -> None:
        """Forget sequence ``sid``; its blocks return to the pool (shared ones when their last holder finishes)."""
        self._known(sid)
        for block in self._blocks.pop(sid):
            self.allocator.release(block)
        del self._lengths[sid]

    def length(self, sid: int) -> int:
        """The number of tokens sequence ``sid`` holds in the cache."""
        self._known(sid)
        return self._lengths[sid]

    def blocks(self, sid: int) -> tuple[int, ...]:
        """The block ids of sequence ``sid``, in order."""
        self._known(sid)
        return tuple(self._blocks[sid])

    # ---- running ----------------------------------------------------------------------------------------------
    def prefill(self, sid: int, tokens: Any) -> np.ndarray:
        """Run ``sid``'s next ``T`` tokens alone (a prompt, or a chunk of one): ``tokens`` is the token input's
        (1, T, ...) array (or a dict by input name); returns the graph's first output for them."""
        return self.step({sid: tokens})[sid]

    def step(self, tokens: Mapping[int, Any]) -> dict[int, np.ndarray]:
        """One batched call: each sequence of ``tokens`` (id -> its (1, S, ...) input, or a dict by input name; the
        same ``S`` for all) appends its tokens. Returns each sequence's slice of the graph's first output."""
        ids = list(tokens)
        if not ids:
            return {}
        for sid in ids:
            self._known(sid)
        feeds = [self._as_inputs(sid, tokens[sid]) for sid in ids]
        seq = {int(np.shape(f[self._token_inputs[0]])[1]) for f in feeds}
        if len(seq) != 1:
            raise InputError(f"PagedDecodeSession.step batches sequences with the same number of new tokens; got "
                             f"{sorted(seq)} (sequences {ids}). Fix: call step per group, or prefill one at a time")
        added = seq.pop()
        self._reserve(ids, added)
        feed: dict[str, Any] = {name: np.concatenate([np.asarray(f[name]) for f in feeds], axis=0)
                                for name in self._token_inputs}
        table = np.full((len(ids), self.max_blocks), -1, self._table_dtype)
        for row, sid in enumerate(ids):
            table[row, :len(self._blocks[sid])] = self._blocks[sid]
        feed.update(self.pools)
        feed["block_table"] = table
        feed["cache_lengths"] = np.asarray([self._lengths[s] for s in ids], np.int64)
        out = self.executable(feed)
        for name in self._pool_names:
            result = out[f"present_{name}"]
            if not np.may_share_memory(np.asarray(result), self.pools[name]):  # a backend that wrote a copy
                self.pools[name][...] = np.asarray(result)
        y = np.asarray(out[self.graph.outputs[0].name])
        for sid in ids:
            self._lengths[sid] += added
        return {sid: y[row:row + 1] for row, sid in enumerate(ids)}

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _known(self, sid: int) -> None:
        if sid not in self._blocks:
            raise InputError(f"sequence {sid!r} is not in this session (live: {sorted(self._blocks)}). Fix: use an id "
                             "from add() or fork() that was not finished")

    def _as_inputs(self, sid: int, given: Any) -> dict[str, Any]:
        if isinstance(given, Mapping):
            missing = [n for n in self._token_inputs if n not in given]
            if missing:
                raise InputError(f"sequence {sid}: missing input(s) {missing}; the graph takes {self._token_inputs}")
            return dict(given)
        if len(self._token_inputs) != 1:
            raise InputError(f"sequence {sid}: the graph takes {self._token_inputs}; pass a dict by input name")
        return {self._token_inputs[0]: given}

    def _reserve(self, ids: list[int], added: int) -> None:
        """Give each sequence the blocks its next ``added`` tokens need; copy a shared block before it is
        written. Checks the whole call first, so a refusal changes nothing."""
        bs = self.block_size
        fresh = 0
        for sid in ids:
            end = self._lengths[sid] + added
            if -(-end // bs) > self.max_blocks:
                raise InputError(f"sequence {sid} would hold {end} tokens, past the graph's {self.max_blocks} blocks "
                                 f"of {bs} ({self.max_blocks * bs} tokens). Fix: finish it, or build the graph with "
                                 "more max_blocks")
            fresh += -(-end // bs) - len(self._blocks[sid]) + len(self._shared_written(sid, added))
        if fresh > self.allocator.num_free:
            raise InputError(f"the paged cache has {self.allocator.num_free} free blocks but this call needs {fresh} "
                             f"(sequences {ids}). Fix: finish a sequence, or build the graph with more num_blocks")
        for sid in ids:
            blocks = self._blocks[sid]
            for col in self._shared_written(sid, added):  # copy-on-write: this sequence gets its own copy
                mine = self.allocator.allocate()
                for pool in self.pools.values():
                    pool[mine] = pool[blocks[col]]
                self.allocator.release(blocks[col])
                blocks[col] = mine
            while len(blocks) < -(-(self._lengths[sid] + added) // bs):
                blocks.append(self.allocator.allocate())

    def _shared_written(self, sid: int, added: int) -> list[int]:
        """Columns of ``sid``'s blocks that its next tokens write into and another sequence also holds."""
        if not added:
            return []
        blocks, start = self._blocks[sid], self._lengths[sid]
        first, last = start // self.block_size, (start + added - 1) // self.block_size
        return [c for c in range(first, min(last + 1, len(blocks))) if self.allocator.refs[blocks[c]] > 1]
