"""Lift one attention core and what surrounds it into a ``Subgraph``.

First the whole attention is tried ("full"): projections, head split, rotary embedding, GQA repeat, KV
cache, core, head merge and output projection, as one ``self`` or ``cross`` attention graph (or a ``core``
graph with its rotary embedding when there are no projections). Should a part around the core not be
provably what the IR computes, the core alone is lifted ("core": Q, K, V as the (B, H, S, D) values the
model feeds it), the rest stays in the model, and what was left is reported with the reason.
"""

from __future__ import annotations

import math

import numpy as np

from attngraph.frontends.onnx_discovery import rotary as R
from attngraph.frontends.onnx_discovery.build import Plan, build
from attngraph.frontends.onnx_discovery.found import Subgraph, Unrecognised
from attngraph.frontends.onnx_discovery.masks import classify
from attngraph.frontends.onnx_discovery.nodes import replaced_nodes
from attngraph.frontends.onnx_discovery.operands import Context, Refused, resolve
from attngraph.frontends.onnx_discovery.output import follow_output

_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "BFLOAT16": "bfloat16"}


def lift(core, prep, tracker, index: int) -> tuple[Subgraph, list[Unrecognised]]:
    """The ``Subgraph`` of ``core`` (see the module docstring) and the parts around it left unlifted.
    Raises ``Refused`` when not even the core can be lifted exactly."""
    left: list[Unrecognised] = []
    first: Refused | None = None
    for mode in ("full", "core"):
        ctx = Context(prep.model, tracker, mode)
        try:
            plan, recognised = _plan(core, ctx)
            sub = _subgraph(plan, recognised, core, prep, tracker, index)
        except Refused as e:
            first = first or e
            if mode == "full":
                continue
            why = first.reason if first.reason == e.reason else \
                f"{first.reason} (and the core alone cannot be lifted either: {e.reason})"
            raise Refused(why, first.nodes or e.nodes) from None
        if first is not None:
            names = tuple(n.name for n in first.nodes) or (core.root.name,)
            left.append(Unrecognised(names, f"around the attention core at {core.root.name!r}, only the core was "
                                            f"lifted: {first.reason}"))
            sub = _with_note(sub, f"only the attention core was lifted; the rest stays in the model: {first.reason}")
        return sub, left
    raise AssertionError("unreachable")


def _with_note(sub: Subgraph, note: str) -> Subgraph:
    from dataclasses import replace

    return replace(sub, notes=sub.notes + (note,))


def _plan(core, ctx: Context):
    ev = ctx.tracker.ev
    is_node = core.node is not None
    q = resolve(core.q, "q", ctx)
    k = resolve(core.kt, "k", ctx, transposed=not is_node)
    v = resolve(core.v, "v", ctx)
    if is_node and core.past:
        _node_cache(core, k, v, ctx)
    _check_shapes(core, q, k, v, is_node)
    kind = _kind(q, k, v, ctx)
    dtype = _DTYPES.get(getattr(q.dtype, "name", ""), None)
    if dtype is None or any(x.dtype != q.dtype for x in (k, v)):
        raise Refused(f"Q, K and V are not all of one float type ({q.dtype}, {k.dtype}, {v.dtype})")
    base = core.scale if core.scale is not None else 1.0 / math.sqrt(q.dim)
    scale = float(np.float64(base) * q.factor * k.factor)
    if v.factor != 1.0:
        raise Refused("V is scaled by a constant on its way to the core")
    mask = classify(core, ev, ctx.dims, q.seq, k.total, k.past is not None, q.dtype)
    plan = Plan(kind, q, k, v, mask, scale, core.softcap, dtype, core.out, notes=list(mask.notes))
    if mask.kind:
        plan.mask_dims = tuple(ctx.dims(mask.value) or ()) or None
    if mask.extra is not None:
        plan.extra_dims = tuple(ctx.dims(mask.extra) or ()) or None
    _rotary(plan, ctx)
    recognised = set(core.nodes) | q.nodes | k.nodes | v.nodes | mask.nodes
    plan.weights_probs = _probs_read(core)
    if kind in ("self", "cross"):
        out = follow_output(core.out, q.batch, q.seq, q.heads, v.dim, ctx.tracker, set(ctx.model.graph.outputs))
        if out.projected is None:
            raise Refused("the attention output does not go through a head merge and an output projection "
                          "attngraph can follow", nodes=(core.root,))
        plan.y, plan.w_o, plan.b_o = out.projected, out.weight, out.bias
        recognised |= out.projected_nodes
    plan.name = f"attention_{core.root.name}".replace("/", "_")[:80]
    return plan, recognised


def _node_cache(core, k, v, ctx: Context) -> None:
    """An ``Attention`` node with past inputs concatenates the cache itself."""
    if k.past is not None or v.past is not None:
        raise Refused("a KV cache both before and inside the Attention node")
    for op, past, present in ((k, core.past[0], core.presents[0] if core.presents else None),
                              (v, core.past[1], core.presents[1] if len(core.presents) > 1 else None)):
        pd = ctx.dims(past)
        if pd is None or len(pd) != 4 or pd[0] != op.batch or pd[1] != op.heads * op.group or pd[3] != op.dim:
            raise Refused(f"the Attention node's past input {past.name!r} is not (batch, heads, past, dim)")
        if op.group != 1:
            raise Refused("the Attention node's cache holds repeated kv heads")
        op.past, op.present, op.total = past, present, pd[2] + op.seq


def _check_shapes(core, q, k, v, is_node: bool) -> None:
    if not (q.batch == k.batch == v.batch):
        raise Refused(f"Q, K and V disagree on the batch size ({q.batch}, {k.batch}, {v.batch})")
    if k.total != v.total or k.seq != v.seq:
        raise Refused(f"K and V disagree on the key length ({k.total}, {v.total})")
    if q.dim != k.dim:
        raise Refused(f"Q and K head sizes differ ({q.dim}, {k.dim})")
    if k.heads != v.heads:
        raise Refused(f"K and V have different numbers of heads ({k.heads}, {v.heads})")
    seen = k.heads * k.group
    if is_node:
        if q.heads % seen or v.heads * v.group != seen:
            raise Refused(f"the Attention node's {q.heads} query heads do not group {seen} kv heads")
    elif seen not in (q.heads, 1) or v.heads * v.group not in (q.heads, 1) or q.heads % k.heads:
        raise Refused(f"{q.heads} query heads meet {seen} key heads: not a head grouping attngraph lifts")


def _kind(q, k, v, ctx: Context) -> str:
    projected = [x.x is not None for x in (q, k, v)]
    if all(projected):
        return "self" if q.x is k.x and k.x is v.x else "cross"
    if any(projected):
        from attngraph.frontends.onnx_discovery.chain import walk_back

        # name the op each unprojected operand stops at (behind the layout ops that only move its heads)
        stuck = [(x.role.upper(), walk_back(x.leaf, ctx.tracker.ev).anchor) for x in (q, k, v)
                 if x.x is None and x.leaf is not None]
        made = [leaf.producer() for _, leaf in stuck if leaf.producer() is not None]
        what = ", ".join(f"{role} from {leaf.name!r} ({leaf.producer().op_type if leaf.producer() else 'an input'})"
                         for role, leaf in stuck)
        raise Refused(f"only some of Q, K and V come from a projection attngraph can follow: {what} (a "
                      "normalisation of the heads, for one, is not lifted)", nodes=made)
    return "core"


def _rotary(plan: Plan, ctx: Context) -> None:
    q, k = plan.q, plan.k
    rq, rk = q.rotary, k.rotary
    if rq is None and rk is None:
        return
    if rq is None or rk is None:
        raise Refused("a rotary embedding on only one of Q and K", nodes=(rq or rk).nodes)
    ev = ctx.tracker.ev
    same = (rq.layout, rq.rotary_dim, rq.form) == (rk.layout, rk.rotary_dim, rk.form) \
        and R.same_value(rq.cos, rk.cos, ev) and R.same_value(rq.sin, rk.sin, ev) \
        and (rq.positions is None and rk.positions is None or R.same_value(rq.positions, rk.positions, ev))
    if not same:
        raise Refused("Q and K are rotated with different tables or layouts", nodes=rq.nodes + rk.nodes)
    if rq.form == "full" and not (R.halves_equal(rq.cos, "Cos", ev) and R.halves_equal(rq.sin, "Sin", ev)):
        raise Refused("the rotary cos/sin tables are not provably two equal halves (cos(cat(f, f)))",
                      nodes=rq.nodes)
    shape, why = R.table_dims(rq, ctx.dims, q.seq)
    if why:
        raise Refused(why, nodes=rq.nodes)
    if rq.form == "table":
        pd = ctx.dims(rq.positions)
        if pd is None or len(pd) != 2 or pd[1] != q.seq or not (pd[0] == 1 or pd[0] == q.batch):
            raise Refused("the rotary position_ids are not (batch, seq)", nodes=rq.nodes)
    else:
        plan.rope_shape = tuple("q_len" if d == q.seq else d.value for d in shape)
    k.nodes |= set(rq.nodes)
    # K may read its own copy of the tables (exporters repeat the computation): proven equal above, so the
    # lifted graph's one cos/sin input stands for both, and the copy stays in the model unused
    plan.aliases += [x for x, y in ((rk.cos, rq.cos), (rk.sin, rq.sin), (rk.positions, rq.positions))
                     if x is not None and x is not y]


def _probs_read(core):
    """The attention weights, when the model reads them outside the core: the lifted graph then returns them.
    (Other values inside the core that the model reads keep their nodes in the model: ``nodes``.)"""
    probs = core.probs
    if probs is None:
        return None
    inside = set(core.nodes)
    if probs.is_graph_output() or any(u.node not in inside and u.node.op_type not in ("Shape", "Size")
                                      for u in probs.uses()):
        return probs
    return None


def _subgraph(plan: Plan, recognised: set, core, prep, tracker, index: int) -> Subgraph:
    graph, weights, inputs, outputs = build(plan)
    values = _values(prep.model)
    in_values = {values[n] for n in inputs.values()} | set(plan.aliases)
    out_values = {values[n] for n in outputs.values()}
    nodes = replaced_nodes(prep.model.graph, in_values, out_values, recognised,
                           lambda v: tracker.ev.value(v) is not None)
    q, k = plan.q, plan.k
    rot = q.rotary
    summary = {"kind": plan.kind, "heads": q.heads, "kv_heads": k.heads, "head_dim": q.dim,
               "causal": "yes" if plan.mask.causal else ("in mask" if "causal" in plan.mask.structure else "no"),
               "mask": _mask_text(plan.mask), "rotary": f"{rot.layout} {rot.rotary_dim}/{q.dim}" if rot else None,
               "cache": k.past is not None, "scale": round(plan.scale, 6), "softcap": plan.softcap}
    notes = tuple(prep.notes) + tuple(plan.notes)
    return Subgraph(index, graph, weights, tuple(n.name for n in nodes), inputs, outputs, summary, notes)


def _mask_text(mask) -> str | None:
    if not mask.kind:
        return None
    parts = [p for p in mask.structure if p != "causal"]
    return mask.kind + (f" ({', '.join(parts)})" if parts else "")


def _values(model) -> dict:
    out = {v.name: v for v in model.graph.inputs}
    out.update({name: v for name, v in model.graph.initializers.items()})
    for node in model.graph:
        for o in node.outputs:
            out[o.name] = o
    return out
