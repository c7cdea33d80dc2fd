"""Putting the attngraph export of each lifted subgraph in place of the model's nodes: ``rewrite_model``.

Each subgraph is validated against the model first (``_subgraph_problem``: never believed, always checked),
exported in the style (``STYLES``) at the target opset (``_target_opset``: the model's, raised only where that is
safe), renamed into the model (``_spliced``: the export's inputs and outputs to the model's values, everything
else under a unique prefix) and put where its first node stood; then the graph is re-sorted and what only the
replaced nodes used is dropped (``graph_edit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from attngraph.errors import AttnGraphError, ConfigError, Unsupported
from attngraph.frontends.onnx_discovery.graph_edit import (
    all_names,
    all_names_of,
    default_opset,
    drop_dead_feeders,
    drop_stale_value_info,
    drop_unread_initializers,
    given_names,
    model_copy,
    node_reads,
    set_default_opset,
    set_prop,
    toposort,
    upgrade_problem,
    value_types,
    walk,
)
from attngraph.frontends.onnx_discovery.report import Left, Rewritten, one_line

STYLES = ("attention", "contrib", "decomposed")


def rewrite_model(model, subgraphs: Iterable, *, style: str = "attention", opset: int | None = None,
                  guards: bool = True):
    """``(new model, rewritten, left)``: a copy of ``model`` with each subgraph of ``subgraphs``
    (``Subgraph``: graph, weights, nodes, inputs, outputs) replaced by the export of its graph in ``style``.
    ``model``'s nodes must have unique names (``name_nodes``). Each subgraph is validated against the model
    first (its nodes exist and are not another's, its inputs come from outside it, every value it makes that
    the rest of the model reads is one of its outputs, types agree); one that fails, or that the style cannot
    export exactly, is left with the reason."""
    import onnx

    from attngraph.lowering.registry import get_backend

    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    subgraphs = list(subgraphs)
    out = model_copy(model)
    before = default_opset(out)
    target, why_not = _target_opset(out, style, opset, bool(subgraphs))
    if why_not:
        return out, [], [Left(sg.index, tuple(sg.nodes), why_not) for sg in subgraphs]
    backend = get_backend("onnx")
    index = {n.name: i for i, n in enumerate(out.graph.node)}
    types = value_types(out) if subgraphs else {}
    taken = all_names(out)
    claimed: set[str] = set()
    removed_nodes: set[int] = set()
    inserted: dict[int, list] = {}  # position of a subgraph's first node -> its new nodes
    new_inits, new_infos = [], []
    rewritten, left = [], []
    used_domains: set[str] = set()
    for sg in subgraphs:
        problem = _subgraph_problem(out, sg, index, claimed, types)
        if problem:
            left.append(Left(sg.index, tuple(sg.nodes), problem))
            continue
        graph = _only_mapped_outputs(sg.graph, sg.outputs)
        try:
            export = backend.to_model(graph, sg.weights, style=style, opset=target, guards=guards)
        except Unsupported as e:
            why = one_line(e)
            if "cannot express" not in why:
                why = f"style {style!r} cannot express it exactly: {why}"
            left.append(Left(sg.index, tuple(sg.nodes), why))
            continue
        except AttnGraphError as e:
            left.append(Left(sg.index, tuple(sg.nodes), f"its export in style {style!r} failed: {one_line(e)}"))
            continue
        prefix = _prefix(f"attngraph{sg.index}_", taken)
        nodes, inits, infos = _spliced(export, sg, prefix)
        taken |= all_names_of(nodes, inits)
        positions = sorted(index[name] for name in sg.nodes)
        removed_nodes.update(positions)
        claimed.update(sg.nodes)
        inserted[positions[0]] = nodes
        new_inits += inits
        new_infos += infos
        used_domains |= {n.domain for n in walk(nodes)}
        rewritten.append(Rewritten(sg.index, tuple(out.graph.node[i].name for i in positions), len(nodes),
                                   tuple(sorted({_op(n) for n in walk(nodes)} - _PLUMBING)) or ("-",),
                                   dict(sg.summary)))
    if not rewritten:
        return out, rewritten, left
    old_nodes = list(out.graph.node)
    gone_inputs = {name for i in removed_nodes for name in node_reads(old_nodes[i])}
    order = []
    for i, node in enumerate(old_nodes):
        order += inserted.get(i, [])
        if i not in removed_nodes:
            order.append(node)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(toposort(order, given_names(graph)))
    gone_inputs |= drop_dead_feeders(graph, gone_inputs)
    graph.initializer.extend(new_inits)
    drop_unread_initializers(graph, gone_inputs)
    drop_stale_value_info(graph)
    graph.value_info.extend(new_infos)
    if target != before:
        set_default_opset(out, target)
    for domain in used_domains - {"", "ai.onnx"}:
        if domain not in {o.domain for o in out.opset_import}:
            out.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    from attngraph.lowering.onnx_facts import IR_VERSION

    out.ir_version = max(out.ir_version, IR_VERSION)
    from attngraph.version import __version__

    set_prop(out, "attngraph.optimize", f"attngraph {__version__}: {len(rewritten)} attention subgraph(s) "
                                         f"rewritten in style {style}")
    return out, rewritten, left


_PLUMBING = {"Identity", "Shape", "Concat", "ReduceMin", "ReduceMax", "Equal", "If", "IsNaN", "IsInf", "Or", "Cast",
             "Greater", "Reshape", "Transpose", "Not", "Where", "And", "Add", "MatMul", "Mul"}


def _op(node) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _target_opset(model, style: str, opset: int | None, needed: bool) -> tuple[int, str | None]:
    """The default-domain opset of the result, and why the model cannot be moved there (or None)."""
    import onnx

    from attngraph.lowering.onnx_facts import MIN_OPSET

    have = default_opset(model) or 0
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET[style] <= opset <= newest:
        raise ConfigError(f"opset {opset} is outside what style {style!r} supports here ({MIN_OPSET[style]} to "
                          f"{newest}): leave --opset out for the model's own opset, raised where the style needs it")
    if opset is not None and opset < have:
        raise ConfigError(f"opset {opset} is below the model's opset {have}; optimize never lowers a model's opset: "
                          "leave --opset out (or give one >= the model's)")
    target = max(have, opset or MIN_OPSET[style])
    if target == have or not needed:
        return target, None
    problem = upgrade_problem(model, target)
    if problem:
        return have, (f"style {style!r} needs opset {target}, but the model is at opset {have} and raising it is not "
                      f"safe: {problem}; use style 'decomposed'" + (" (opset >= 17)" if have < 17 else ""))
    return target, None


def _subgraph_problem(model, sg, index: dict[str, int], claimed: set[str], types: dict) -> str | None:
    """Why ``sg`` cannot replace its nodes in ``model`` (None when it can): never believed, always checked."""
    from attngraph.lowering.onnx_facts import ONNX_TYPES

    g = model.graph
    if not sg.nodes:
        return "it names no model nodes to replace"
    missing = [n for n in sg.nodes if n not in index]
    if missing:
        return f"discovery named node(s) {missing[:3]} that the model's main graph does not have"
    taken = [n for n in sg.nodes if n in claimed]
    if taken or len(set(sg.nodes)) != len(sg.nodes):
        return f"its nodes {taken[:3] or list(sg.nodes)[:3]} are named twice (or by another subgraph)"
    ir_inputs = {v.name: v for v in sg.graph.inputs}
    ir_outputs = {v.name: v for v in sg.graph.outputs}
    if set(sg.inputs) != set(ir_inputs):
        return (f"its input map names {sorted(sg.inputs)}, but its graph's inputs are {sorted(ir_inputs)}: every "
                "graph input needs the model value that feeds it")
    unknown = sorted(set(sg.outputs) - set(ir_outputs))
    if unknown or not sg.outputs:
        return f"its output map names {sorted(sg.outputs)}, but its graph's outputs are {sorted(ir_outputs)}"
    mine = [g.node[index[n]] for n in sg.nodes]
    made = {o for n in mine for o in n.output if o}
    defined = given_names(g) | {o for n in g.node for o in n.output}
    for ir, value in sg.inputs.items():
        if value in made:
            return f"its input {ir!r} is fed by {value!r}, which its own nodes make"
        if value not in defined:
            return f"its input {ir!r} is fed by {value!r}, which nothing in the model defines"
    for ir, value in sg.outputs.items():
        if value not in made:
            return f"its output {ir!r} is mapped to {value!r}, which its nodes do not make"
    if len(set(sg.outputs.values())) != len(sg.outputs):
        return "two of its outputs map to one model value"
    mine_names = set(sg.nodes)
    outside = {name for n in g.node if n.name not in mine_names for name in node_reads(n)}
    outside |= {o.name for o in g.output}
    leaked = sorted((made & outside) - set(sg.outputs.values()))
    if leaked:
        return (f"the rest of the model reads {leaked[:3]}, made inside it but not among its outputs: the "
                "replacement would leave them undefined")
    for ir, value in list(sg.inputs.items()) + list(sg.outputs.items()):
        v = ir_inputs.get(ir) or ir_outputs[ir]
        have = types.get(value)
        if have is None:
            continue
        elem, rank = have
        if elem != ONNX_TYPES[v.type.dtype]:
            import onnx

            return (f"graph value {ir!r} is {v.type.dtype.value} but model value {value!r} is "
                    f"{onnx.TensorProto.DataType.Name(elem).lower()}")
        if rank is not None and rank != v.type.rank:
            return f"graph value {ir!r} has rank {v.type.rank} but model value {value!r} has rank {rank}"
    return None


def _only_mapped_outputs(graph, outputs: Mapping[str, str]):
    """The graph returning only the outputs the model reads (the export then computes nothing else)."""
    keep = tuple(v for v in graph.outputs if v.name in outputs)
    if len(keep) == len(graph.outputs):
        return graph
    from attngraph.ir.verify import verify_graph

    return verify_graph(graph.replace(outputs=keep))


def _prefix(base: str, taken: set[str]) -> str:
    prefix, k = base, 1
    while any(name.startswith(prefix) for name in taken):
        prefix, k = f"{base[:-1]}x{k}_", k + 1
    return prefix


def _spliced(export, sg, prefix: str):
    """The export's nodes, initializers and value_info, renamed: its inputs and outputs to the model's values,
    everything else (values, node names, in subgraphs too) under ``prefix``."""
    from onnx import helper

    mapping = dict(sg.inputs)
    mapping.update(sg.outputs)

    def rename(name: str) -> str:
        return "" if not name else mapping.get(name) or prefix + name

    def fix_graph(graph) -> None:
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            vi.name = rename(vi.name)
        for t in graph.initializer:
            t.name = rename(t.name)
        for s in graph.sparse_initializer:
            s.values.name = rename(s.values.name)
            s.indices.name = rename(s.indices.name)
        for n in graph.node:
            fix_node(n)

    def fix_node(n) -> None:
        n.name = prefix + (n.name or n.op_type)
        n.input[:] = [rename(x) for x in n.input]
        n.output[:] = [rename(x) for x in n.output]
        for a in n.attribute:
            if a.HasField("g"):
                fix_graph(a.g)
            for sub in a.graphs:
                fix_graph(sub)

    g = export.graph
    nodes = list(g.node)
    made = {o for n in nodes for o in n.output}
    for n in nodes:
        fix_node(n)
    for t in g.initializer:
        t.name = rename(t.name)
    infos = []
    for vi in g.value_info:
        if vi.name not in mapping:  # the model declares its own values
            vi.name = rename(vi.name)
            infos.append(vi)
    # an output that no node makes (an input or a constant passed through) still needs a node to make it
    for o in g.output:
        if o.name not in made:
            nodes.append(helper.make_node("Identity", [rename(o.name)], [mapping[o.name]],
                                          name=f"{prefix}passthrough_{o.name}"))
    return nodes, list(g.initializer), infos
