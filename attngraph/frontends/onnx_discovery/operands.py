"""Where Q, K and V come from: projections, head splits, rotary embeddings, the KV cache and the GQA repeat.

``resolve`` walks back from an operand of the attention core. The layout chain in between is followed
exactly (``chain``/``layout``) to one of:

* a projection ``x @ W (+ b)`` of hidden states (B, S, E): the chain then proves which columns of W feed
  which head and dim, so the IR's weights are W's columns in the IR's (head, dim) order;
* a rotary embedding (``rotary``) or a ``Concat(past, new)`` on the sequence axis (the KV cache), each
  resolved again on its own input;
* a (B, H, S, D) model value that the chain only moves (a core input of the lifted graph).

A repeat of whole heads on the way (``Expand`` of K/V heads) is GQA when head h reads kv head h // n. Scalar
factors on Q and K fold into the score scale, except before a KV cache (they would scale the cached keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attngraph.frontends.onnx_discovery import layout as L
from attngraph.frontends.onnx_discovery import rotary as R
from attngraph.frontends.onnx_discovery.chain import Tracker, walk_back
from attngraph.frontends.onnx_discovery.layout import LayoutError
from attngraph.frontends.onnx_discovery.symbolic import Poly


class Refused(Exception):
    """A part of an attention subgraph that cannot be lifted exactly (the message says what and why)."""

    def __init__(self, reason: str, nodes=()):
        super().__init__(reason)
        self.reason = reason
        self.nodes = tuple(nodes)


@dataclass
class Operand:
    """Q, K or V of one core, resolved. ``heads``/``dim``: per the source (K/V: the kv heads, before any
    repeat), ``group``: the repeat factor, ``factor``: scalar scale folded from the chain. The source is a
    projection (``x``, ``weight`` (in, heads*dim), ``bias``) or ``leaf`` (a (B, H, S, D) model value);
    ``rotary``, ``past``/``present`` (the cache concat) when present. ``seq``: the new tokens' length,
    ``total``: with the cache."""

    role: str
    batch: Poly
    seq: Poly
    total: Poly
    heads: int
    dim: int
    group: int = 1
    factor: float = 1.0
    x: object = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    leaf: object = None
    rotary: R.Rotary | None = None
    past: object = None
    present: object = None
    dtype: object = None
    nodes: set = field(default_factory=set)


@dataclass
class Context:
    """What resolving needs: the onnx-ir model, the tracker (with its evaluator), and the mode: "full"
    (through rotary embeddings down to projections) or "core" (stop at the nearest (B, H, S, D) values)."""

    model: object
    tracker: Tracker
    mode: str = "full"

    def dims(self, v):
        return self.tracker.dims(v)


def resolve(value, role: str, ctx: Context, *, transposed: bool = False, inner: bool = False) -> Operand:
    """The operand ``value`` of the core (``role`` "q", "k" or "v"; K as the core reads it, transposed or
    not). ``inner``: the input of a rotary embedding or the new half of a cache concat, which must be plain
    (B, H, S, D) heads (no repeat)."""
    tr = ctx.tracker
    chain = walk_back(value, tr.ev)
    reasons = []
    if chain.linear is not None and ctx.mode == "full":
        try:
            return _projection(chain, role, ctx, transposed, inner)
        except (LayoutError, Refused) as e:
            reasons.append(str(e))
    values = chain.values()
    for idx, cand in enumerate(values):
        if idx < _linear_index(chain):
            continue  # before the projection: hidden states, not heads
        d = ctx.dims(cand)
        if d is None or len(d) != 4 or not (d[1].is_const and d[3].is_const):
            continue
        try:
            view = tr.follow(chain, L.source(d, {1, 3}), start_at=idx)
            batch, seq, cols = L.heads(view, transposed)
            heads, group, base = _group(cols, role, inner)
        except LayoutError as e:
            reasons.append(f"{cand.name}: {e}")
            continue
        if not np.array_equal(base.reshape(-1), np.arange(base.size)):
            reasons.append(f"{cand.name}: the chain reorders heads or dims")
            continue
        steps = chain.steps[idx:]
        factor = float(np.prod([s.factor for s in steps])) if steps else 1.0
        op = Operand(role, batch, seq, seq, heads, base.shape[1], group, factor, dtype=value.dtype,
                     nodes={s.node for s in steps})
        if idx == 0:
            special = _special(cand, op, role, ctx, inner)
            if special is not None:
                return special
        op.leaf = cand
        return op
    why = reasons[0] if chain.linear is not None and reasons else (reasons[-1] if reasons else "no such chain")
    raise Refused(f"{role.upper()} ({value.name!r}) does not come from (batch, heads, seq, dim) heads or a "
                  f"projection attngraph can follow: {why}", nodes=chain.nodes[-1:])


def _linear_index(chain) -> int:
    for i, s in enumerate(chain.steps):
        if s.kind == "linear":
            return i + 1
    return 0


def _projection(chain, role: str, ctx: Context, transposed: bool, inner: bool) -> Operand:
    tr = ctx.tracker
    x = chain.anchor
    d = ctx.dims(x)
    if d is None or len(d) != 3 or not d[2].is_const:
        raise Refused(f"the projection input {x.name!r} is not (batch, seq, features) with a known width")
    view = tr.follow(chain, L.source(d, {2}))
    batch, seq, cols = L.heads(view, transposed)
    heads, group, base = _group(cols, role, inner)
    lin = chain.linear
    if (batch, seq) != (d[0], d[1]):
        raise Refused(f"the projection of {x.name!r} does not keep its batch and sequence axes")
    flat = base.reshape(-1)
    weight = lin.weight[:, flat]
    bias = chain.bias[flat] if chain.bias is not None else None
    return Operand(role, batch, seq, seq, heads, base.shape[1], group, chain.factor, x=x, weight=weight,
                   bias=bias, dtype=x.dtype, nodes=set(chain.nodes))


def _group(cols: np.ndarray, role: str, inner: bool) -> tuple[int, int, np.ndarray]:
    """``(heads, repeat, base)``: K/V heads repeated n times in a row (head h reads kv head h // n) collapse
    to ``base`` = ``cols[::n]``; Q and the inner values are never repeated."""
    h = cols.shape[0]
    if role == "q" or inner:
        return h, 1, cols
    for n in sorted((n for n in range(1, h + 1) if h % n == 0), reverse=True):
        base = cols[::n]
        if np.array_equal(np.repeat(base, n, axis=0), cols) and len({tuple(r) for r in base.tolist()}) == len(base):
            return h // n, n, base
    return h, 1, cols


def _special(value, op: Operand, role: str, ctx: Context, inner: bool) -> Operand | None:
    """``value`` made by a cache concat or a rotary embedding: resolve what feeds it. None: not special."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Concat" and role in ("k", "v") and not inner and len(node.inputs) == 2:
        axis = node.attributes["axis"].value if "axis" in node.attributes else None
        if axis in (2, -2):
            return _cache(node, op, role, ctx)
    if role in ("q", "k") and ctx.mode == "full":
        rot, why = R.recognise(value, ctx.model, ctx.tracker.ev, ctx.dims)
        if rot is None and why:
            raise Refused(why, nodes=(node,))
        if rot is not None:
            return _rotated(rot, op, role, ctx)
    return None


def _cache(node, op: Operand, role: str, ctx: Context) -> Operand:
    past, new = node.inputs
    pd = ctx.dims(past)
    new_op = resolve(new, role, ctx, inner=True)
    if new_op.factor != 1.0:
        raise Refused(f"the new {role.upper()} is scaled before the KV cache concat {node.name!r}: the cache "
                      "would hold scaled keys", nodes=(node,))
    if pd is None or len(pd) != 4 or pd[0] != new_op.batch or pd[1] != new_op.heads or pd[3] != new_op.dim:
        raise Refused(f"the past {role.upper()} {past.name!r} of the KV cache concat {node.name!r} is not "
                      f"(batch, {new_op.heads}, past, {new_op.dim})", nodes=(node,))
    if op.seq != pd[2] + new_op.seq or op.heads != new_op.heads:
        raise Refused(f"the KV cache concat {node.name!r} does not join past and new keys on the sequence axis")
    new_op.group, new_op.factor, new_op.total = op.group, op.factor, op.seq
    new_op.past, new_op.present = past, node.outputs[0]
    new_op.nodes |= op.nodes | {node}
    return new_op


def _rotated(rot: R.Rotary, op: Operand, role: str, ctx: Context) -> Operand:
    inner_op = resolve(rot.x, role, ctx, inner=True)
    if (inner_op.heads, inner_op.dim) != (op.heads, op.dim):
        raise Refused("the rotary embedding's input and output heads differ")
    if inner_op.rotary is not None or inner_op.past is not None:
        raise Refused("two rotary embeddings (or a cache) on one path")
    inner_op.rotary = rot
    inner_op.group = op.group
    inner_op.factor *= op.factor
    inner_op.nodes |= op.nodes | set(rot.nodes)
    if rot.rotary_dim > inner_op.dim or rot.rotary_dim % 2:
        raise Refused(f"the rotary dim {rot.rotary_dim} does not fit the head dim {inner_op.dim}")
    return inner_op
