"""Generic edits and reads of an ONNX model, for splicing exports into it (``splice``) and checking the result.

* names: ``name_nodes`` (unique node names), ``all_names`` / ``all_names_of`` (every name in use);
* what reads what: ``walk`` (nodes, subgraphs included), ``node_reads`` / ``graph_reads`` (outer-scope values),
  ``given_names`` (graph inputs and initializers);
* order and clean-up: ``toposort``, ``drop_dead_feeders``, ``drop_unread_initializers``,
  ``drop_stale_value_info``;
* the model: ``model_copy``, ``model_skeleton`` (no tensor data), ``value_types`` (declared or inferred),
  ``set_prop`` (metadata);
* opsets: ``default_opset`` / ``set_default_opset``, ``upgrade_problem`` (whether raising it is safe).

``onnx`` is imported where it is needed, never at import time.
"""

from __future__ import annotations

import collections
import heapq

from attngraph.errors import LoweringError, SerializationError

# ---- names --------------------------------------------------------------------------------------------

def name_nodes(model) -> int:
    """Give every node of the main graph a unique, non-empty name (kept where it already is one): how
    ``Subgraph.nodes`` names them (discovery's loader, ``prepare``, names them so too). Returns how many
    nodes it named or renamed."""
    seen: set[str] = set()
    renamed = 0
    names = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in seen or (name != node.name and name in names):
            name, k = f"{base}__{k}", k + 1
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def all_names(model) -> set[str]:
    names = set()
    g = model.graph
    names |= given_names(g) | {o.name for o in g.output} | {vi.name for vi in g.value_info}
    for n in walk(g.node):
        names |= set(n.input) | set(n.output) | {n.name}
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= {vi.name for vi in list(sub.input) + list(sub.output)} | {t.name for t in sub.initializer}
    return names - {""}


def all_names_of(nodes, inits) -> set[str]:
    names = {t.name for t in inits}
    for n in walk(nodes):
        names |= set(n.input) | set(n.output) | {n.name}
    return names - {""}


# ---- what reads what ----------------------------------------------------------------------------------

def walk(nodes):
    for n in nodes:
        yield n
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from walk(sub.node)


def node_reads(node) -> set[str]:
    """The outer-scope values a node reads: its inputs and what its subgraphs read from outside them."""
    names = {x for x in node.input if x}
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names |= graph_reads(sub)
    return names


def graph_reads(graph) -> set[str]:
    inner = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    inner |= {s.values.name for s in graph.sparse_initializer}
    reads = set()
    for n in graph.node:
        reads |= node_reads(n) - inner
        inner |= set(n.output)
    reads |= {o.name for o in graph.output} - inner
    return reads


def given_names(graph) -> set[str]:
    return ({vi.name for vi in graph.input} | {t.name for t in graph.initializer}
            | {s.values.name for s in graph.sparse_initializer})


# ---- order and clean-up -------------------------------------------------------------------------------

def toposort(nodes: list, available: set[str]) -> list:
    """``nodes`` in an order where each comes after what it reads, as close to the given order as that allows."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in node_reads(n) if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i, w in enumerate(waiting) if w][:3]
        raise LoweringError(f"the rewritten graph has a cycle through nodes {stuck}; this is a bug in optimize "
                            "(please report it with the model)")
    _ = available
    return order


def drop_dead_feeders(graph, fed: set[str]) -> set[str]:
    """Remove the nodes that only fed the replaced ones (e.g. a shape computation or a mask conversion the
    export does itself): a node whose outputs nothing reads any more, reached from ``fed``. Returns what the
    removed nodes read (candidates for dropping in turn)."""
    reads = collections.Counter(o.name for o in graph.output)
    for n in graph.node:
        reads.update(node_reads(n))
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    dead: set[int] = set()
    work, read_by_dead = list(fed), set()
    while work:
        name = work.pop()
        i = producer.get(name)
        if i is None or i in dead or any(reads[o] for o in graph.node[i].output if o):
            continue
        dead.add(i)
        for x in node_reads(graph.node[i]):
            reads[x] -= 1
            read_by_dead.add(x)
            work.append(x)
    if dead:
        keep = [n for i, n in enumerate(graph.node) if i not in dead]
        del graph.node[:]
        graph.node.extend(keep)
    return read_by_dead


def drop_unread_initializers(graph, candidates: set[str]) -> None:
    """Remove the initializers only the replaced nodes read (never a graph input or output)."""
    read = {o.name for o in graph.output} | {vi.name for vi in graph.input}
    for n in graph.node:
        read |= node_reads(n)
    keep = [t for t in graph.initializer if t.name not in candidates or t.name in read]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def drop_stale_value_info(graph) -> None:
    """Remove value_info of values nothing makes any more (the replaced nodes' intermediates)."""
    defined = given_names(graph) | {o for n in graph.node for o in n.output}
    keep = [vi for vi in graph.value_info if vi.name in defined]
    if len(keep) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)


# ---- the model ----------------------------------------------------------------------------------------

def model_copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def model_skeleton(model):
    """The model without its tensor data: initializers become typed graph inputs (for shape inference and the
    version converter, which need not read weights and must not copy gigabytes)."""
    import onnx
    from onnx import helper

    g = model.graph
    graph = helper.make_graph(list(g.node), g.name or "g", list(g.input), list(g.output),
                              value_info=list(g.value_info))
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name not in declared:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for s in g.sparse_initializer:
        if s.values.name not in declared:
            graph.input.append(helper.make_tensor_value_info(s.values.name, s.values.data_type, list(s.dims)))
    skeleton = helper.make_model(graph, opset_imports=list(model.opset_import))
    skeleton.ir_version = model.ir_version
    skeleton.functions.extend(model.functions)
    if skeleton.ByteSize() > 2**31 - 1:  # protobuf's own limit (large Constant nodes)
        raise SerializationError("the model's nodes alone (Constant values) pass protobuf's 2 GiB limit; store "
                                 "large constants as initializers with external data")
    _ = onnx  # imported for helper
    return skeleton


def value_types(model) -> dict[str, tuple[int, int | None]]:
    """Value name -> (ONNX element type, rank or None) where the model declares or onnx infers it."""
    import onnx

    skeleton = model_skeleton(model)
    try:
        g = onnx.shape_inference.infer_shapes(skeleton).graph
    except Exception:  # noqa: BLE001 - inference is a help here, never a gate
        g = skeleton.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.elem_type:
            types[vi.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
    return types


def set_prop(model, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


# ---- opsets -------------------------------------------------------------------------------------------

def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def set_default_opset(model, version: int) -> None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version


def upgrade_problem(model, target: int) -> str | None:
    """Why raising the model's default-domain opset to ``target`` could change what some node computes, or
    None when it is safe: onnx's version converter must move every node unchanged (each op's versions in
    between differ only in the types they take; an op whose meaning or inputs changed is rewritten by the
    converter, so the model would have to change beyond its opset number). onnxruntime's own default-domain
    ops (one version for every opset) are set aside."""
    import onnx
    from onnx import version_converter

    from attngraph.frontends.onnx_discovery.model_checks import for_onnx_checker

    # onnxruntime's own default-domain ops (SimplifiedLayerNormalization) have one version for every opset: the
    # converter, which does not know them, moves the rest around them
    skeleton = for_onnx_checker(model_skeleton(model))
    try:
        moved = version_converter.convert_version(skeleton, target)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError and ConvertError from C++
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"onnx's version converter cannot move it from opset {default_opset(model)} to {target} ({first})"
    diff = _first_difference(skeleton.graph.node, moved.graph.node)
    if diff:
        node, op = diff
        since = [onnx.defs.get_schema(op, v, "").since_version for v in (default_opset(model), target)
                 if onnx.defs.has(op, v, "")]
        return (f"op {op} (node {node!r}) changes between opset {default_opset(model)} and {target}"
                + (f" (versions {since[0]} -> {since[-1]})" if len(since) == 2 else ""))
    return None


def _signature(node) -> tuple:
    return node.op_type, node.domain, list(node.input), list(node.output), len(node.attribute)


def _first_difference(a_nodes, b_nodes) -> tuple[str, str] | None:
    """The first node (name, op) whose op, inputs, outputs or attributes differ (or that the converter added
    or removed), subgraphs included (their value_info, which the converter fills in, does not count)."""
    for a, b in zip(a_nodes, b_nodes):
        if _signature(a) != _signature(b):
            return a.name or a.op_type, a.op_type
        for x, y in zip(a.attribute, b.attribute):
            if x.HasField("g") or x.graphs:
                for gx, gy in zip([x.g] if x.HasField("g") else x.graphs, [y.g] if y.HasField("g") else y.graphs):
                    inner = _first_difference(gx.node, gy.node)
                    if inner:
                        return inner
            elif x != y:
                return a.name or a.op_type, a.op_type
    if len(a_nodes) != len(b_nodes):
        extra = (list(b_nodes) + list(a_nodes))[min(len(a_nodes), len(b_nodes))]
        return extra.name or extra.op_type, extra.op_type
    return None
