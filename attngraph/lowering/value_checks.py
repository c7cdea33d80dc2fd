"""Check the values of a graph's length and position inputs before any backend runs: one check, run by every
``Executable``, so every backend refuses the same bad value with the same message.

``checking.check_inputs`` checks the inputs' shapes and dtypes; this module checks the values that index into
other tensors. A wrong one is a bug upstream, and each runtime would fail its own way: NumPy slices past a
buffer's end or wraps a negative index, onnxruntime's TensorScatter and Gather raise with their own log, a
kernel clamps. The values checked, each in the form the op reads it:

* a static cache's write position (``cache_update``'s lengths): ``0 <= len_b``, and ``len_b + q_len <= max_len``
  for a linear (non-rolling) cache;
* key lengths (the ``lengths`` operand of ``mask``, ``attention``, ``alibi`` and ``rel_bias``: ``key_lengths``,
  ONNX's ``nonpad_kv_seqlen``, a static cache's ``cache_lengths + q_len``): ``0 <= len_b <= kv_len``;
* rotary positions read from cos/sin caches: ``0 <= position < rope_positions`` (``position_ids``, or the
  positions a cache's lengths or a dim offset give).

A checked value is an input, or a small integer expression of inputs and dims (``cache_lengths + q_len``),
evaluated here on the host. The error names the input(s), the batch row, the value and the valid range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attngraph.errors import InputError
from attngraph.ir import Graph, Node, Op, Value, dims
from attngraph.ir.types import INT_DTYPES
from attngraph.lowering.varlen_checks import check_varlen, varlen_plans
from attngraph.lowering.paged_checks import check_paged, paged_plans

# the integer ops a checked value may be computed with (what the constructors and importers emit)
_INDEX_OPS = frozenset({Op.CONST, Op.IOTA, Op.CAST, Op.RESHAPE, Op.ADD, Op.SUB, Op.MINIMUM, Op.MAXIMUM})


@dataclass(frozen=True)
class Bound:
    """One checked value. ``kind``: "cache" (linear write: ``limit`` = (max_len, q_len)), "rolling" (circular
    write: ``limit`` = ()), "lengths" (key lengths: ``limit`` = (kv_len,)) or "positions" (rotary positions
    read from the cos/sin cache ``table``: ``limit`` = (rope_positions,), plus (offset, seq) when ``value`` is
    None: the op's own positions ``offset + 0 .. seq - 1``)."""

    kind: str
    value: Value | None
    limit: tuple[dims.Dim, ...]
    table: str = ""

    def range(self, sizes: Mapping[str, int]) -> tuple[int, int | None]:
        """The inclusive range of the values at these sizes (None: no upper end)."""
        if self.kind == "rolling":
            return 0, None
        if self.kind == "cache":
            max_len, seq = (dims.evaluate(d, sizes) for d in self.limit)
            return 0, max_len - seq
        return 0, dims.evaluate(self.limit[0], sizes) - (1 if self.kind == "positions" else 0)


def bounds_of(node: Node) -> list[Bound]:
    """The values ``node`` reads as indices, each with its range."""
    ins = node.inputs
    if node.op is Op.CACHE_UPDATE:
        cache, new, lengths = ins
        if node.attr("mode") == "circular":
            return [Bound("rolling", lengths, ())]
        return [Bound("cache", lengths, (cache.type.shape[2], new.type.shape[2]))]
    if node.op in (Op.MASK, Op.ATTENTION) and "lengths" in node.attr("operands"):
        first, kv = (1, ins[0].type.shape[3]) if node.op is Op.MASK else (3, ins[1].type.shape[2])
        return [Bound("lengths", ins[first + node.attr("operands").index("lengths")], (kv,))]
    if node.op is Op.LATENT_ATTENTION and "lengths" in node.attr("operands"):
        return [Bound("lengths", ins[4 + node.attr("operands").index("lengths")], (ins[2].type.shape[2],))]
    if node.op in (Op.ALIBI, Op.REL_BIAS) and node.attr("align") == "lengths":
        return [Bound("lengths", ins[-1], (ins[0].type.shape[3],))]
    if node.op is Op.ROTARY and "cos_sin" in node.attr("operands"):
        kinds = node.attr("operands")
        table = ins[1 + kinds.index("cos_sin")]
        if "positions" in kinds:
            return [Bound("positions", ins[1 + kinds.index("positions")], (table.type.shape[0],), table.name)]
        return [Bound("positions", None, (table.type.shape[0], node.attr("offset"), ins[0].type.shape[2]),
                      table.name)]
    return []


class ValueChecks:
    """The value checks of one graph, planned once: ``checks(given, sizes)`` raises ``InputError`` on the first
    value out of range (``sizes``: the dims ``check_inputs`` bound)."""

    def __init__(self, graph: Graph) -> None:
        producers, inputs = graph.producers(), set(graph.inputs)
        plans = []
        for bound in dict.fromkeys(b for node in graph.nodes for b in bounds_of(node)):
            cone = _cone(bound.value, producers, inputs) if bound.value is not None else ((), ())
            if cone is not None:  # a value computed from other than integer inputs and dims is left to the op
                plans.append((bound, *cone))
        # an input read as it is comes first, so its message names it (not an expression computed from it)
        plans.sort(key=lambda plan: bool(plan[1]))
        self._plans = tuple(plans)
        self._varlen = varlen_plans(graph)  # packed sequences' cu_seqlens (varlen_checks)
        # paged caches' block tables (paged_checks), each with its lengths' integer cone (None: left to the op)
        paged = [(p, _cone(p.lengths, producers, inputs)) for p in paged_plans(graph)]
        self._paged = tuple(p for p, cone in paged if cone is not None)
        self._paged_cones = {p.lengths: cone[0] for p, cone in paged if cone is not None}

    def __call__(self, given: Mapping[str, Any], sizes: Mapping[str, int]) -> None:
        if self._varlen:
            check_varlen(self._varlen, given, sizes)
        env: dict[str, np.ndarray] = {}
        if self._paged:
            check_paged(self._paged, given, sizes, lambda v: _evaluate(Bound("lengths", v, ()), self._paged_cones[v],
                                                                       given, sizes, env))
        for bound, cone, sources in self._plans:
            values = _evaluate(bound, cone, given, sizes, env)
            if not values.size:
                continue
            low, high = bound.range(sizes)
            smallest, largest = _extremes(values)
            if smallest < low or (high is not None and largest > high):
                row, got = _first_outside(values, low, high)
                raise InputError(_message(bound, _subject(bound, cone, sources), row, got, sizes))


def _cone(value: Value, producers: dict[Value, Node], inputs: set[Value]):
    """``(nodes, source inputs)`` computing ``value`` from integer inputs with ``_INDEX_OPS``, or None."""
    nodes: list[Node] = []
    sources: list[str] = []

    def visit(v: Value) -> bool:
        if v.type.dtype not in INT_DTYPES:
            return False
        if v in inputs:
            if v.name not in sources:
                sources.append(v.name)
            return True
        node = producers.get(v)
        if node is None or node.op not in _INDEX_OPS or not all(visit(i) for i in node.inputs):
            return False
        if node not in nodes:
            nodes.append(node)
        return True

    return (tuple(nodes), tuple(sources)) if visit(value) else None


def host_array(x: Any) -> np.ndarray:
    """``x`` (a NumPy array, a torch tensor on any device, an array-like) as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _evaluate(bound: Bound, cone: tuple[Node, ...], given, sizes, env: dict[str, np.ndarray]) -> np.ndarray:
    """The values ``bound`` checks; ``env`` (by value name) holds what earlier checks of this call computed."""
    if bound.value is None:  # the op's own positions: offset + 0 .. seq - 1
        _table, offset, seq = bound.limit
        return (np.arange(dims.evaluate(seq, sizes)) + dims.evaluate(offset, sizes)).reshape(1, -1)
    if not cone:
        return host_array(given[bound.value.name])
    for node in cone:
        out = node.outputs[0].name
        if out not in env:
            args = [env[v.name] if v.name in env else env.setdefault(v.name, host_array(given[v.name]).astype(np.int64))
                    for v in node.inputs]
            env[out] = _EVAL[node.op](node, sizes, *args)
    return env[bound.value.name]


def _const(node: Node, sizes) -> np.ndarray:
    value = node.attr("value")
    items = [dims.evaluate(x, sizes) if isinstance(x, str) else x for x in
             (value if isinstance(value, tuple) else (value,))]
    return np.asarray(items if isinstance(value, tuple) else items[0], np.int64)


_EVAL = {
    Op.CONST: _const,
    Op.IOTA: lambda node, sizes: np.arange(dims.evaluate(node.attr("length"), sizes), dtype=np.int64),
    Op.CAST: lambda node, sizes, x: x,  # integer to integer: the checks compute in int64
    Op.RESHAPE: lambda node, sizes, x: x.reshape(tuple(dims.evaluate(d, sizes) for d in node.attr("shape"))),
    Op.ADD: lambda node, sizes, a, b: a + b,
    Op.SUB: lambda node, sizes, a, b: a - b,
    Op.MINIMUM: lambda node, sizes, a, b: np.minimum(a, b),
    Op.MAXIMUM: lambda node, sizes, a, b: np.maximum(a, b),
}


def _extremes(values: np.ndarray) -> tuple[int, int]:
    """(min, max); through a list for the few values of a batch (a third of NumPy's time at B=1)."""
    if values.size <= 256:
        items = values.ravel().tolist()
        return min(items), max(items)
    return int(values.min()), int(values.max())


def _first_outside(values: np.ndarray, low: int, high: int | None) -> tuple[int, int]:
    """The first batch row (the first axis) with a value out of range, and its furthest value out."""
    rows = values.reshape(values.shape[0] if values.ndim else 1, -1)
    bad = (rows < low) | (rows > high if high is not None else False)
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    smallest = int(rows[row].min())
    return row, smallest if smallest < low else int(rows[row].max())


def _message(bound: Bound, what: str, row: int, got: int, sizes) -> str:
    high = bound.range(sizes)[1]
    if bound.kind in ("cache", "rolling") and got < 0:
        return (f"{what}: row {row} is {got}; a cache length is >= 0. Fix: pass each row's number of cached "
                "tokens (0 for an empty cache)")
    if bound.kind == "cache":
        max_len, seq = (dims.evaluate(d, sizes) for d in bound.limit)
        return (f"cache overflow: row {row} holds {got} entries and this step adds {seq}, past the cache's max_len "
                f"{max_len} ({what} takes 0..{high} for a step of {seq}). Fix: allocate a longer cache or start a "
                "new one")
    if bound.kind == "lengths":
        return (f"{what}: row {row} is {got}, outside 0..{high}: a key length counts a row's valid keys and the "
                f"key axis holds {high}. Fix: pass each row's number of valid keys, 0..{high} (a negative length, "
                "or one past the key axis, is a bug upstream)")
    where = f"row {row} reaches" if bound.value is not None else "reach"
    return (f"{what}: {where} rotary position {got}, outside 0..{high}: the cos/sin caches ({bound.table!r}) hold "
            f"{high + 1} positions (rope_positions). Fix: pass cos/sin caches that cover every position the tokens "
            "take, or positions inside them")


def _subject(bound: Bound, cone: tuple[Node, ...], sources: tuple[str, ...]) -> str:
    """What the message is about: the input itself, or the value computed from inputs."""
    if bound.value is None:
        _table, offset, seq = bound.limit
        return f"the tokens' rotary positions ({offset} + 0..{seq} - 1, no position_ids)"
    if not cone:
        return f"input {bound.value.name!r}"
    named = ", ".join(repr(s) for s in sources)
    return f"{bound.value.name!r} (computed from input{'s' if len(sources) > 1 else ''} {named})"
