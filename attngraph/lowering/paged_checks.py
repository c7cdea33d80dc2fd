"""Check a paged KV cache's block table and lengths before any backend runs, so every backend refuses the same bad
value with the same ``InputError`` (NumPy would wrap a negative block id, onnxruntime's ScatterND would write one
slot twice in an undefined order, a kernel would read another sequence's block).

For each ``paged_cache_update`` (the write, at positions ``cache_lengths[b] .. + S - 1``) and ``paged_attention``
(the read of positions ``0 .. seq_lens[b] - 1``) whose block table is a graph input, with the row's ``needed =
ceil(end / block_size)`` table columns:

* the length is >= 0, and the table has at least ``needed`` columns (a table too short for the length);
* each used block id is in ``0 .. num_blocks - 1``, and a row lists no block twice (two positions, one slot);
* a block written by one row is used by no other row of the batch: two rows writing one slot is a slot collision,
  and a block another row reads (a shared prefix) is read-only (copy it on write: ``PagedDecodeSession`` does).

Columns past ``needed`` are not read and not checked (``-1`` padding is fine). The lengths may be computed from
inputs (``seq_lens = cache_lengths + q_len``), as ``value_checks`` evaluates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attngraph.errors import InputError
from attngraph.ir import Graph, Op, Value, dims
from attngraph.ir.paged_specs import block_geometry

_FIX_COW = ("Fix: give the row that appends its own copy of the block (copy-on-write; PagedDecodeSession does it), "
            "and keep shared prefix blocks read-only")


@dataclass(frozen=True)
class PagedPlan:
    """One paged node's check: ``lengths`` is the write's start (``write``) or the read's end."""

    op: str
    table: str
    lengths: Value
    seq: dims.Dim
    num_blocks: int
    block_size: int
    write: bool


def paged_plans(graph: Graph) -> tuple[PagedPlan, ...]:
    """The checks of every paged node whose block table is fed as it is (writes first: their messages name more)."""
    inputs = {v.name for v in graph.inputs}
    plans = []
    for node in graph.nodes:
        if node.op not in (Op.PAGED_CACHE_UPDATE, Op.PAGED_ATTENTION):
            continue
        write = node.op is Op.PAGED_CACHE_UPDATE
        pool, table, lengths = (node.inputs[0], node.inputs[2], node.inputs[3]) if write else \
            (node.inputs[1], node.inputs[3], node.inputs[4])
        if table.name not in inputs:
            continue
        n, bs, _, _ = block_geometry(pool.type, node.attr("layout"))
        seq = (node.inputs[1] if write else node.inputs[0]).type.shape[2]
        plans.append(PagedPlan(node.op.value, table.name, lengths, seq, n, bs, write))
    plans.sort(key=lambda p: not p.write)
    return tuple(dict.fromkeys(plans))


def check_paged(plans: tuple[PagedPlan, ...], given: Mapping[str, Any], sizes: Mapping[str, int], lengths_of) -> None:
    """Raise ``InputError`` on the first bad table or length. ``lengths_of(value)`` evaluates a lengths value."""
    for plan in plans:
        table = _host(given[plan.table]).astype(np.int64)
        lengths = np.asarray(lengths_of(plan.lengths), np.int64).reshape(-1)
        seq = dims.evaluate(plan.seq, sizes)
        what = f"input {plan.lengths.name!r}" if plan.lengths.name in given else repr(plan.lengths.name)
        used = _check_rows(plan, table, lengths, seq, what)
        if plan.write and seq:
            _check_writes(plan, table, lengths, used)


def _check_rows(plan: PagedPlan, table: np.ndarray, lengths: np.ndarray, seq: int, what: str) -> list[np.ndarray]:
    """Per-row checks; returns each row's used block ids."""
    bs, cols = plan.block_size, table.shape[1]
    used = []
    for b, length in enumerate(lengths.tolist()):
        if length < 0:
            raise InputError(f"{plan.op}: {what} row {b} is {length}; a length is >= 0. Fix: pass each row's "
                             "number of cached tokens")
        end = length + seq if plan.write else length
        needed = -(-end // bs)
        if needed > cols:
            raise InputError(f"{plan.op}: block table too short: row {b} reaches position {end - 1} ({end} tokens), "
                             f"which needs {needed} blocks of {bs}, but input {plan.table!r} has {cols} columns. Fix: "
                             "allocate a wider block table (max_blocks) or stop the sequence earlier")
        ids = table[b, :needed]
        bad = np.flatnonzero((ids < 0) | (ids >= plan.num_blocks))
        if bad.size:
            c = int(bad[0])
            raise InputError(f"{plan.op}: block id out of range: {plan.table}[{b}, {c}] = {int(ids[c])}, but the pool "
                             f"has blocks 0..{plan.num_blocks - 1} (row {b} uses columns 0..{needed - 1}). Fix: pass "
                             "block ids the allocator gave out")
        if len(set(ids.tolist())) != ids.size:
            first = next(x for x in ids.tolist() if ids.tolist().count(x) > 1)
            cs = [int(c) for c in np.flatnonzero(ids == first)]
            raise InputError(f"{plan.op}: slot collision: row {b} of {plan.table!r} lists block {first} twice "
                             f"(columns {cs}), so two of its positions would share one slot. Fix: give each "
                             "position of a sequence its own block")
        used.append(ids)
    return used


def _check_writes(plan: PagedPlan, table: np.ndarray, lengths: np.ndarray, used: list[np.ndarray]) -> None:
    """No block written by one row is used by another row of the batch."""
    users: dict[int, list[int]] = {}
    for b, ids in enumerate(used):
        for x in ids.tolist():
            users.setdefault(x, []).append(b)
    for b, length in enumerate(lengths.tolist()):
        for c in range(length // plan.block_size, used[b].size):
            block = int(used[b][c])
            others = [r for r in users[block] if r != b]
            if not others:
                continue
            r = others[0]
            r_col = int(np.flatnonzero(used[r] == block)[0])
            writes_too = r_col >= int(lengths[r]) // plan.block_size
            if writes_too:
                raise InputError(f"{plan.op}: slot collision: rows {b} and {r} both write into block {block} "
                                 f"({plan.table}[{b}, {c}] and [{r}, {r_col}]). Fix: give every sequence's tail "
                                 "its own block")
            raise InputError(f"{plan.op}: writing into a shared block: row {b} writes into block {block} "
                             f"({plan.table}[{b}, {c}]), which row {r} also reads ([{r}, {r_col}]). {_FIX_COW}")


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

