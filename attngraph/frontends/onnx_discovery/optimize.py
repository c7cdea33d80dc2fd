"""``optimize_onnx``: every attention subgraph of a real ONNX model, rewritten in one attngraph export style.

    report = optimize_onnx("model.onnx", "model.opt.onnx", style="attention")
    print(report)            # which subgraphs were rewritten, which were left and why, the check's max error

The model is loaded with ``load_untrusted`` (nothing in it is believed before it is checked), ``discover``
lifts its attention subgraphs into the IR, and each lifted subgraph is replaced in place: its model nodes go,
the nodes of the attngraph export of its graph (``Subgraph.graph`` with ``Subgraph.weights``, in ``style``)
come in, with the export's inputs and outputs renamed to the model's value names and every other name given a
unique prefix. Initializers and opset imports are merged; nothing else in the model changes (initializers only
the replaced nodes read are dropped, and the default-domain opset is raised where the style needs it and
raising it changes no other node's meaning). A subgraph the style cannot express exactly is left as it is,
with the reason.

Then the result is checked: ``onnx.checker`` (``full_check`` where the original passes it) and onnxruntime
runs the original and the rewritten model on the same seeded random inputs (symbolic dims at small sizes,
token ids within the embedding table, padding masks with real padding), every output within the dtype's
budget (``attngraph.conformance.budgets``). Should the rewritten model miss it, each subgraph is tried alone
and those that change the outputs are left, with the error. The file is written atomically; the checks run
on the very file written, before it replaces ``dst``.
"""

from __future__ import annotations

import heapq
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attngraph.errors import AttnGraphError, ConfigError, LoweringError, SerializationError, Unsupported
from attngraph.frontends.onnx_discovery.model_io import (
    PROTOBUF_LIMIT,
    load_untrusted,
    model_nbytes,
    save_model,
)

STYLES = ("attention", "contrib", "decomposed")
DEFAULT_SIZES = {"batch": 2, "past": 3, "seq": 6}  # how symbolic dims are sized for the check (by name)
_MAX_CHECK_INPUT_BYTES = 1 << 30


# ---- the report ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rewritten:
    """A subgraph replaced by the export of its graph: ``removed`` model nodes out, ``added`` nodes in."""

    index: int
    removed: tuple[str, ...]
    added: int
    ops: tuple[str, ...]  # the op types of the inserted nodes, each once, sorted
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Left:
    """A subgraph (``index``; None for what discovery did not lift) left as it is, and why."""

    index: int | None
    nodes: tuple[str, ...]
    reason: str


@dataclass
class OptimizeReport:
    """What ``optimize_onnx`` did. ``max_error``: the largest absolute difference between the original's and
    the rewritten model's outputs under onnxruntime; ``max_ratio``: the worst error as a fraction of its
    dtype budget (<= 1 passes); both None without the check."""

    source: str
    destination: str | None
    style: str
    opset_before: int | None
    opset_after: int | None
    rewritten: list[Rewritten] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    checked: bool = False
    check_note: str = ""
    max_error: float | None = None
    max_ratio: float | None = None
    outputs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "style": self.style,
                "opset_before": self.opset_before, "opset_after": self.opset_after,
                "rewritten": [{"index": r.index, "removed": list(r.removed), "added": r.added, "ops": list(r.ops),
                               "summary": dict(r.summary)} for r in self.rewritten],
                "left": [{"index": x.index, "nodes": list(x.nodes), "reason": x.reason} for x in self.left],
                "checked": self.checked, "check_note": self.check_note, "max_error": self.max_error,
                "max_ratio": self.max_ratio, "outputs": dict(self.outputs), "seconds": self.seconds}

    def __str__(self) -> str:
        opset = (f"opset {self.opset_before}" if self.opset_before == self.opset_after
                 else f"opset {self.opset_before} -> {self.opset_after}")
        lines = [(f"optimize {self.source} -> {self.destination or '(not written)'}: style {self.style}, {opset}, "
                  f"{len(self.rewritten)} attention subgraph(s) rewritten, {len(self.left)} left")]
        for r in self.rewritten:
            what = ", ".join(f"{k}={v}" for k, v in r.summary.items())
            lines.append(f"  rewritten #{r.index}: {len(r.removed)} nodes -> {r.added} ({', '.join(r.ops)})"
                         + (f"; {what}" if what else ""))
        for x in self.left:
            label = f"#{x.index}" if x.index is not None else "(not lifted)"
            nodes = ", ".join(x.nodes[:4]) + (f", ... ({len(x.nodes)} nodes)" if len(x.nodes) > 4 else "")
            lines.append(f"  left {label} [{nodes}]: {x.reason}")
        if self.checked:
            worst = max(self.outputs, key=self.outputs.get) if self.outputs else None
            lines.append(f"  checked under onnxruntime: max |error| {self.max_error:.2e} "
                         f"({self.max_ratio:.2f} of the budget{f', output {worst!r}' if worst else ''})")
            if self.check_note:
                lines.append(f"  note: {self.check_note}")
        elif self.check_note:
            lines.append(f"  not checked: {self.check_note}")
        return "\n".join(lines)


class CheckFailed(AttnGraphError):
    """The rewritten model's outputs differ from the original's beyond the budget (``verdicts`` says where)."""

    def __init__(self, message: str, errors: dict[str, float] | None = None):
        super().__init__(message)
        self.errors = errors or {}


# ---- the entry point ------------------------------------------------------------------------------------

def optimize_onnx(src, dst, *, style: str = "attention", opset: int | None = None, check: bool = True,
                  seed: int = 0, sizes: Mapping[str, int] | None = None,
                  progress: Callable[[str], None] | None = None) -> OptimizeReport:
    """Rewrite every attention subgraph of the model at ``src`` in ``style`` and write the result to ``dst``.

    ``style``: "attention" (the ONNX ``Attention`` operator, opset >= 23), "contrib" (onnxruntime's
    ``com.microsoft.MultiHeadAttention`` where it is exact) or "decomposed" (primitive ops, opset >= 17).
    ``opset``: the default-domain opset of the result (default: the model's, raised to the style's minimum).
    ``check``: run the original and the result under onnxruntime on inputs drawn with ``seed`` (symbolic dims
    sized by ``sizes``, by name, else ``DEFAULT_SIZES``) and compare every output. ``dst`` None: nothing is
    written (the report still says what would be). Returns an ``OptimizeReport``.
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    where = str(src) if isinstance(src, str | os.PathLike) else "the given model"
    say(f"loading {where} ...")
    model, _base = load_untrusted(src)
    name_nodes(model)
    say(f"finding attention subgraphs in {len(model.graph.node)} nodes ...")
    found = _discover(model)
    say(f"found {len(found.found)} attention subgraph(s), {len(found.unrecognised)} not lifted; rewriting in "
        f"style {style} ...")
    result, rewritten, left = rewrite_model(model, found.found, style=style, opset=opset)
    left += [Left(None, tuple(u.nodes), u.reason) for u in found.unrecognised]
    report = OptimizeReport(where, os.fspath(dst) if dst is not None else None, style, default_opset(model),
                            default_opset(result), rewritten, left)
    checker = _Checker(model, src, seed, sizes, say) if check else None
    if checker is not None:
        report.check_note = checker.note
    else:
        report.check_note = "the check was switched off"
    if checker is not None and rewritten:
        result, rewritten, failed = _checked(model, found.found, result, rewritten, checker, style, opset, say)
        report.rewritten, report.left = rewritten, failed + left
        report.opset_after = default_opset(result)
    if dst is not None:
        say(f"writing {os.fspath(dst)} ...")
        verify = checker.verify if checker is not None else _checker_only
        errors = {}

        def hook(path: str) -> None:
            errors.update(verify(path))
        save_model(result, dst, check=hook)
        if checker is not None:
            _fill_errors(report, errors)
    elif checker is not None:
        _fill_errors(report, checker.verify_model(result))
    report.seconds = time.perf_counter() - start
    return report


def _fill_errors(report: OptimizeReport, errors: dict[str, tuple[float, float]]) -> None:
    report.checked = True
    report.outputs = {name: err for name, (err, _ratio) in errors.items()}
    report.max_error = max((e for e, _ in errors.values()), default=0.0)
    report.max_ratio = max((r for _, r in errors.values()), default=0.0)


def _discover(model):
    """``attngraph.frontends.onnx_discovery.discover`` (imported here: tests may stand in for it)."""
    try:
        from attngraph.frontends.onnx_discovery import discover
    except ImportError as e:
        raise AttnGraphError(f"attention discovery is not available in this attngraph ({e}); optimize needs "
                             "attngraph.frontends.onnx_discovery.discover") from None
    return discover(model)


def _checked(model, subgraphs, result, rewritten, checker, style, opset, say):
    """Check ``result``; if it misses the budget, try each rewritten subgraph alone and keep those that pass."""
    say(f"checking the rewritten model under onnxruntime ({len(checker.feeds)} inputs) ...")
    try:
        checker.verify_model(result)
        return result, rewritten, []
    except CheckFailed as e:
        if len(rewritten) == 1:
            r = rewritten[0]
            return model_copy(model), [], [Left(r.index, r.removed, f"rewriting it changes the outputs: {e}")]
        say(f"the rewritten model misses the budget ({e}); trying each of {len(rewritten)} subgraphs alone ...")
    by_index = {sg.index: sg for sg in subgraphs}
    keep, failed = [], []
    for r in rewritten:
        alone, _, _ = rewrite_model(model, [by_index[r.index]], style=style, opset=opset)
        try:
            checker.verify_model(alone)
            keep.append(by_index[r.index])
        except CheckFailed as e:
            failed.append(Left(r.index, r.removed, f"rewriting it changes the outputs: {e}"))
    result, rewritten, left = rewrite_model(model, keep, style=style, opset=opset)
    return result, rewritten, failed + left


# ---- rewriting ----------------------------------------------------------------------------------------

def rewrite_model(model, subgraphs: Iterable, *, style: str = "attention", opset: int | None = None):
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
    types = _value_types(out) if subgraphs else {}
    taken = _all_names(out)
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
            export = backend.to_model(graph, sg.weights, style=style, opset=target)
        except Unsupported as e:
            left.append(Left(sg.index, tuple(sg.nodes), f"style {style!r} cannot express it exactly: {e}"))
            continue
        except AttnGraphError as e:
            left.append(Left(sg.index, tuple(sg.nodes), f"its export in style {style!r} failed: {e}"))
            continue
        prefix = _prefix(f"attngraph{sg.index}_", taken)
        nodes, inits, infos = _spliced(export, sg, prefix)
        taken |= _all_names_of(nodes, inits)
        positions = sorted(index[name] for name in sg.nodes)
        removed_nodes.update(positions)
        claimed.update(sg.nodes)
        inserted[positions[0]] = nodes
        new_inits += inits
        new_infos += infos
        used_domains |= {n.domain for n in _walk(nodes)}
        rewritten.append(Rewritten(sg.index, tuple(out.graph.node[i].name for i in positions), len(nodes),
                                   tuple(sorted({_op(n) for n in _walk(nodes)} - _PLUMBING)) or ("-",),
                                   dict(sg.summary)))
    if not rewritten:
        return out, rewritten, left
    old_nodes = list(out.graph.node)
    gone_inputs = {name for i in removed_nodes for name in _reads(old_nodes[i])}
    order = []
    for i, node in enumerate(old_nodes):
        order += inserted.get(i, [])
        if i not in removed_nodes:
            order.append(node)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(_toposort(order, _available(graph)))
    graph.initializer.extend(new_inits)
    _drop_unread_initializers(graph, gone_inputs)
    _drop_stale_value_info(graph)
    graph.value_info.extend(new_infos)
    if target != before:
        _set_default_opset(out, target)
    for domain in used_domains - {"", "ai.onnx"}:
        if domain not in {o.domain for o in out.opset_import}:
            out.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    from attngraph_backends.onnx.export import IR_VERSION

    out.ir_version = max(out.ir_version, IR_VERSION)
    from attngraph.version import __version__

    _set_prop(out, "attngraph.optimize", f"attngraph {__version__}: {len(rewritten)} attention subgraph(s) "
                                         f"rewritten in style {style}")
    return out, rewritten, left


_PLUMBING = {"Identity", "Shape", "Concat", "ReduceMin", "ReduceMax", "Equal", "If", "IsNaN", "IsInf", "Or", "Cast",
             "Greater", "Reshape", "Transpose", "Not", "Where", "And", "Add", "MatMul", "Mul"}


def _op(node) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def name_nodes(model) -> None:
    """Give every node of the main graph a unique, non-empty name (kept where it already is one): how
    ``Subgraph.nodes`` names them."""
    seen: set[str] = set()
    names = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in seen or (name != node.name and name in names):
            name, k = f"{base}_{k}", k + 1
        node.name = name
        seen.add(name)


def model_copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _set_default_opset(model, version: int) -> None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version


def _set_prop(model, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _target_opset(model, style: str, opset: int | None, needed: bool) -> tuple[int, str | None]:
    """The default-domain opset of the result, and why the model cannot be moved there (or None)."""
    import onnx
    from attngraph_backends.onnx.export import MIN_OPSET

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


def upgrade_problem(model, target: int) -> str | None:
    """Why raising the model's default-domain opset to ``target`` could change what some node computes, or
    None when it is safe: onnx's version converter must move every node unchanged (each op's versions in
    between differ only in the types they take; an op whose meaning or inputs changed is rewritten by the
    converter, so the model would have to change beyond its opset number)."""
    import onnx
    from onnx import version_converter

    skeleton = _skeleton(model)
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


def _first_difference(a_nodes, b_nodes) -> tuple[str, str] | None:
    """The first node (name, op) whose op, inputs, outputs or attributes differ, subgraphs included (their
    value_info, which the converter fills in, does not count)."""
    if len(a_nodes) != len(b_nodes):
        a = a_nodes[min(len(a_nodes), len(b_nodes)) - 1] if a_nodes else None
        return (a.name, a.op_type) if a is not None else ("", "?")
    for a, b in zip(a_nodes, b_nodes):
        if (a.op_type, a.domain, list(a.input), list(a.output)) != (b.op_type, b.domain, list(b.input), list(b.output)) \
                or len(a.attribute) != len(b.attribute):
            return a.name or a.op_type, a.op_type
        for x, y in zip(a.attribute, b.attribute):
            if x.HasField("g") or x.graphs:
                for gx, gy in zip([x.g] if x.HasField("g") else x.graphs, [y.g] if y.HasField("g") else y.graphs):
                    inner = _first_difference(gx.node, gy.node)
                    if inner:
                        return inner
            elif x != y:
                return a.name or a.op_type, a.op_type
    return None


def _skeleton(model):
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


def _value_types(model) -> dict[str, tuple[int, int | None]]:
    """Value name -> (ONNX element type, rank or None) where the model declares or onnx infers it."""
    import onnx

    skeleton = _skeleton(model)
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


def _subgraph_problem(model, sg, index: dict[str, int], claimed: set[str], types: dict) -> str | None:
    """Why ``sg`` cannot replace its nodes in ``model`` (None when it can): never believed, always checked."""
    from attngraph_backends.onnx.emitter import ONNX_TYPES

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
    defined = _available(g) | {o for n in g.node for o in n.output}
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
    outside = {name for n in g.node if n.name not in mine_names for name in _reads(n)}
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
        vi.name = rename(vi.name)
        infos.append(vi)
    # an output that no node makes (an input or a constant passed through) still needs a node to make it
    for o in g.output:
        if o.name not in made:
            nodes.append(helper.make_node("Identity", [rename(o.name)], [mapping[o.name]],
                                          name=f"{prefix}passthrough_{o.name}"))
    return nodes, list(g.initializer), infos


def _walk(nodes):
    for n in nodes:
        yield n
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _walk(sub.node)


def _reads(node) -> set[str]:
    """The outer-scope values a node reads: its inputs and what its subgraphs read from outside them."""
    names = {x for x in node.input if x}
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names |= _graph_reads(sub)
    return names


def _graph_reads(graph) -> set[str]:
    inner = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    inner |= {s.values.name for s in graph.sparse_initializer}
    reads = set()
    for n in graph.node:
        reads |= _reads(n) - inner
        inner |= set(n.output)
    reads |= {o.name for o in graph.output} - inner
    return reads


def _available(graph) -> set[str]:
    return ({vi.name for vi in graph.input} | {t.name for t in graph.initializer}
            | {s.values.name for s in graph.sparse_initializer})


def _all_names(model) -> set[str]:
    names = set()
    g = model.graph
    names |= _available(g) | {o.name for o in g.output} | {vi.name for vi in g.value_info}
    for n in _walk(g.node):
        names |= set(n.input) | set(n.output) | {n.name}
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= {vi.name for vi in list(sub.input) + list(sub.output)} | {t.name for t in sub.initializer}
    return names - {""}


def _all_names_of(nodes, inits) -> set[str]:
    names = {t.name for t in inits}
    for n in _walk(nodes):
        names |= set(n.input) | set(n.output) | {n.name}
    return names - {""}


def _toposort(nodes: list, available: set[str]) -> list:
    """``nodes`` in an order where each comes after what it reads, as close to the given order as that allows."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in _reads(n) if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
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


def _drop_unread_initializers(graph, candidates: set[str]) -> None:
    """Remove the initializers only the replaced nodes read (never a graph input or output)."""
    read = {o.name for o in graph.output} | {vi.name for vi in graph.input}
    for n in graph.node:
        read |= _reads(n)
    keep = [t for t in graph.initializer if t.name not in candidates or t.name in read]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _drop_stale_value_info(graph) -> None:
    """Remove value_info of values nothing makes any more (the replaced nodes' intermediates)."""
    defined = _available(graph) | {o for n in graph.node for o in n.output}
    keep = [vi for vi in graph.value_info if vi.name in defined]
    if len(keep) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)


# ---- the check ----------------------------------------------------------------------------------------

def _checker_only(path: str) -> dict:
    """Without the onnxruntime comparison: onnx's checker on the written file, no more."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises its own and pybind's errors
        try:
            onnx.checker.check_model(path)
        except Exception as e2:  # noqa: BLE001
            raise CheckFailed(f"ONNX's checker refuses the rewritten model: {_line(e2)}") from None
        _ = e
    return {}


def _line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class _Checker:
    """Runs the original model once under onnxruntime on seeded inputs; ``verify(path)`` checks a rewritten
    model file against those outputs (onnx's checker first)."""

    def __init__(self, model, src, seed: int, sizes, say):
        import onnx

        self.note = ""
        self.full = True
        try:
            onnx.checker.check_model(_skeleton_for_check(model), full_check=True)
        except Exception as e:  # noqa: BLE001
            self.full = False
            self.note = f"the original model fails onnx's full check ({_line(e)}); the result gets the basic check"
        try:
            self.feeds = random_inputs(model, seed=seed, sizes=sizes)
        except AttnGraphError as e:
            raise CheckFailed(f"no inputs could be drawn for the check: {e}; pass sizes (--size DIM=N) or skip the "
                              "check (--no-check)") from None
        say(f"running the original model under onnxruntime "
            f"({', '.join(f'{k}{list(v.shape)}' for k, v in self.feeds.items())}) ...")
        try:
            self.reference = _run(_model_source(model, src), self.feeds)
        except LoweringError as e:
            raise CheckFailed(f"onnxruntime cannot run the original model, so nothing can be checked against it: "
                              f"{e}; skip the check (--no-check) to write the result unchecked") from None

    def verify(self, path: str) -> dict[str, tuple[float, float]]:
        import onnx

        try:
            onnx.checker.check_model(path, full_check=self.full)
        except Exception as e:  # noqa: BLE001 - onnx raises its own and pybind's errors
            raise CheckFailed(f"ONNX's checker refuses the rewritten model: {_line(e)}") from None
        try:
            got = _run(path, self.feeds)
        except LoweringError as e:
            raise CheckFailed(f"onnxruntime cannot run the rewritten model: {e}") from None
        return compare_outputs(self.reference, got)

    def verify_model(self, model) -> dict[str, tuple[float, float]]:
        with tempfile.TemporaryDirectory(prefix="attngraph-optimize-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            save_model(model, path)
            return self.verify(path)


def _skeleton_for_check(model):
    """What onnx's full check reads: the model itself when it fits one protobuf, else its skeleton."""
    return model if model.ByteSize() <= PROTOBUF_LIMIT else _skeleton(model)


def _model_source(model, src):
    """What onnxruntime loads for the original: its bytes (just checked), or its path when it is too large for
    one protobuf (onnxruntime then reads the external data load_untrusted has vetted)."""
    if model_nbytes(model) + 64 * 1024 * 1024 < PROTOBUF_LIMIT and model.ByteSize() < PROTOBUF_LIMIT:
        return model.SerializeToString()
    if isinstance(src, str | os.PathLike):
        return os.fspath(src)
    raise LoweringError("the model is larger than 2 GiB and was not given as a path; pass its path")


def _run(source, feeds: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        given = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in given})))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise LoweringError(_line(e)) from None


def compare_outputs(reference: dict, got: dict) -> dict[str, tuple[float, float]]:
    """``{output: (max |error|, error / budget)}``; raises ``CheckFailed`` naming the first output off its budget."""
    from attngraph.conformance.budgets import BUDGETS, compare

    errors, bad = {}, []
    for name, ref in reference.items():
        if name not in got:
            raise CheckFailed(f"the rewritten model has no output {name!r}")
        have = np.asarray(got[name])
        ref = np.asarray(ref)
        if ref.dtype.kind in "fc" and str(ref.dtype) in BUDGETS:
            verdict = compare(have, ref, BUDGETS[str(ref.dtype)], what=name)
            finite = np.isfinite(ref) & np.isfinite(have) if have.shape == ref.shape else None
            err = float(np.max(np.abs(have[finite].astype(np.float64) - ref[finite]), initial=0.0)) \
                if finite is not None else math.inf
            errors[name] = (err, float(verdict.ratio))
            if not verdict.ok:
                bad.append(verdict.detail or f"{name}: error {err:.2e} is {verdict.ratio:.1f}x the "
                                             f"{ref.dtype} budget")
        else:
            same = have.shape == ref.shape and np.array_equal(have, ref)
            errors[name] = (0.0 if same else math.inf, 0.0 if same else math.inf)
            if not same:
                bad.append(f"{name}: {ref.dtype} output differs")
    if bad:
        raise CheckFailed("; ".join(bad[:3]), {k: e for k, (e, _) in errors.items()})
    return errors


def random_inputs(model, *, seed: int = 0, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input that is not an initializer. Symbolic dims: ``sizes[name]``, else
    by name (``DEFAULT_SIZES``: batch 2, past 3, others 6; unnamed 6). Integer inputs: token ids within the
    table they index (a ``Gather`` of an initializer), padding masks (``*mask*``: 1, the last few positions of
    later rows 0, never a whole row), positions (``*position*``: 0, 1, ...), lengths (the full length),
    zeros otherwise. Bool masks hold both values in every row (whichever value means "attend")."""
    import onnx

    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    bounds = {n.input[1]: _gather_bound(n, inits) for n in g.node if n.op_type == "Gather" and len(n.input) > 1}
    feeds = {}
    for vi in g.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise ConfigError(f"graph input {vi.name!r} is not a tensor; the check makes tensors only")
        tt = vi.type.tensor_type
        shape = tuple(_size(d, sizes) for d in tt.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if math.prod(shape) * dtype.itemsize > _MAX_CHECK_INPUT_BYTES:
            raise ConfigError(f"graph input {vi.name!r} would be {shape} ({math.prod(shape) * dtype.itemsize / 2**30:.1f}"
                              " GiB) for the check: give smaller sizes for its dims (sizes=) or skip the check")
        name = vi.name.lower()
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = _bool_mask(shape, rng) if "mask" in name else rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            feeds[vi.name] = _int_input(name, shape, bounds.get(vi.name), rng).astype(dtype)
        else:
            raise ConfigError(f"graph input {vi.name!r} has type {dtype}, which the check cannot draw")
    return feeds


def _size(d, sizes) -> int:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    sizes = dict(sizes or {})
    if d.dim_param in sizes:
        return int(sizes[d.dim_param])
    low = d.dim_param.lower()
    key = next((k for k in DEFAULT_SIZES if k in low), "seq")
    return int(sizes.get(key, DEFAULT_SIZES[key]))


def _gather_bound(node, inits) -> int | None:
    t = inits.get(node.input[0])
    if t is None or not t.dims:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return int(t.dims[axis]) if -len(t.dims) <= axis < len(t.dims) else None


def _int_input(name: str, shape: tuple, bound: int | None, rng) -> np.ndarray:
    if bound:
        return rng.integers(0, bound, size=shape)
    if "mask" in name:
        mask = np.ones(shape, np.int64)
        if len(shape) >= 2 and shape[-1] > 1:
            for b in range(1, shape[0]):
                mask[b, ..., shape[-1] - min(b, shape[-1] - 1):] = 0  # right padding, never a whole row
        return mask
    if "position" in name:
        return np.broadcast_to(np.arange(shape[-1]) if shape else np.int64(0), shape).copy()
    if "len" in name:
        return np.full(shape, max(DEFAULT_SIZES["seq"], 1))
    return np.zeros(shape, np.int64)


def _bool_mask(shape: tuple, rng) -> np.ndarray:
    """Every row holds True and False (a row of one value would be fully masked under one of the conventions)."""
    mask = np.ones(shape, bool)
    if shape and shape[-1] > 1:
        cut = rng.integers(1, shape[-1], size=shape[:-1])
        mask = np.arange(shape[-1]) < cut[..., None]
    return mask
