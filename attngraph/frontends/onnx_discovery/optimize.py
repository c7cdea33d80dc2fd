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

This module is the entry point; the work is done in ``splice`` (``rewrite_model``: putting each export in
place of the model's nodes), ``check`` (the onnxruntime comparison: ``random_inputs``, ``compare_outputs``)
and ``graph_edit`` (generic ONNX graph helpers), and reported with the types of ``report``. Their public names
are importable from here too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from attngraph.errors import AttnGraphError, ConfigError
from attngraph.frontends.onnx_discovery.check import (
    DEFAULT_SIZES,
    Checker,
    checker_only,
    compare_outputs,
    dims_from_subgraphs,
    random_inputs,
)
from attngraph.frontends.onnx_discovery.graph_edit import default_opset, model_copy, name_nodes, upgrade_problem
from attngraph.frontends.onnx_discovery.model_io import load_untrusted, save_model
from attngraph.frontends.onnx_discovery.report import CheckFailed, Left, OptimizeReport, Rewritten
from attngraph.frontends.onnx_discovery.splice import STYLES, rewrite_model

__all__ = [
    "CONTRIB_CHOICES",
    "DEFAULT_SIZES",
    "STYLES",
    "CheckFailed",
    "Left",
    "OptimizeReport",
    "Rewritten",
    "compare_outputs",
    "default_opset",
    "dims_from_subgraphs",
    "model_copy",
    "name_nodes",
    "optimize_onnx",
    "random_inputs",
    "rewrite_model",
    "upgrade_problem",
]


CONTRIB_CHOICES = ("keep", "rewrite")


def optimize_onnx(src, dst, *, style: str = "attention", opset: int | None = None, check: bool = True,
                  seed: int = 0, sizes: Mapping[str, int] | None = None, guards: bool = True,
                  contrib: str = "keep", progress: Callable[[str], None] | None = None) -> OptimizeReport:
    """Rewrite every attention subgraph of the model at ``src`` in ``style`` and write the result to ``dst``.

    ``style``: "attention" (the ONNX ``Attention`` operator, opset >= 23), "contrib" (onnxruntime's
    ``com.microsoft.MultiHeadAttention`` where it is exact) or "decomposed" (primitive ops, opset >= 17).
    ``opset``: the default-domain opset of the result (default: the model's, raised to the style's minimum).
    ``guards=False``: each rewritten attention does what the runtime's operator does on empty inputs and
    non-finite values (as the original nodes did) instead of attngraph's semantics; faster at small shapes.
    ``check``: run the original and the result under onnxruntime on inputs drawn with ``seed`` (symbolic dims
    sized by ``sizes``, by name, else ``DEFAULT_SIZES``) and compare every output. ``dst`` None: nothing is
    written (the report still says what would be). ``contrib``: what becomes of the attention lifted from
    onnxruntime's ``com.microsoft`` operators (GroupQueryAttention, MultiHeadAttention, Attention,
    RotaryEmbedding): "keep" (the default: left as they are, the fused kernels onnxruntime and
    onnxruntime-genai run them with, a shared KV buffer included) or "rewrite" (moved to ``style`` like every
    other subgraph, checked the same way). Returns an ``OptimizeReport``.
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    if contrib not in CONTRIB_CHOICES:
        raise ConfigError(f"unknown contrib choice {contrib!r}; choose one of {', '.join(CONTRIB_CHOICES)}")
    where = str(src) if isinstance(src, str | os.PathLike) else "the given model"
    say(f"loading {where} ...")
    model, _base = load_untrusted(src)
    name_nodes(model)
    say(f"finding attention subgraphs in {len(model.graph.node)} nodes ...")
    found = _discover(model)
    say(f"found {len(found.found)} attention subgraph(s), {len(found.unrecognised)} not lifted; rewriting in "
        f"style {style} ...")
    form = {"style": style, "opset": opset, "guards": guards}
    chosen, kept = _contrib_choice(found.found, contrib)
    result, rewritten, left = rewrite_model(model, chosen, **form)
    left += kept + [Left(None, tuple(u.nodes), u.reason) for u in found.unrecognised]
    report = OptimizeReport(where, os.fspath(dst) if dst is not None else None, style, default_opset(model),
                            default_opset(result), rewritten, left)
    checker = Checker(model, src, seed, sizes, say, found.found) if check and rewritten else None
    if checker is not None:
        report.check_note = checker.note
    else:
        report.check_note = "the check was switched off" if not check else "nothing was rewritten"
    if checker is not None and rewritten:
        result, rewritten, failed = _checked(model, chosen, result, rewritten, checker, form, say)
        report.rewritten, report.left = rewritten, failed + left
        report.opset_after = default_opset(result)
    if dst is not None:
        say(f"writing {os.fspath(dst)} ...")
        verify = checker.verify if checker is not None else checker_only
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


def _contrib_choice(subgraphs, contrib: str):
    """``(subgraphs to rewrite, Left entries for the contrib ones kept)``."""
    if contrib == "rewrite":
        return list(subgraphs), []
    chosen, kept = [], []
    for sg in subgraphs:
        op = str(sg.summary.get("op", ""))
        if op.startswith("com.microsoft."):
            kept.append(Left(sg.index, tuple(sg.nodes), f"onnxruntime's {op}, kept as it is (contrib='keep', the "
                                                        "default; 'rewrite' (--contrib-ops rewrite) moves it to the "
                                                        "style, checked under onnxruntime)"))
        else:
            chosen.append(sg)
    return chosen, kept


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


def _checked(model, subgraphs, result, rewritten, checker, form, say):
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
        alone, _, _ = rewrite_model(model, [by_index[r.index]], **form)
        try:
            checker.verify_model(alone)
            keep.append(by_index[r.index])
        except CheckFailed as e:
            failed.append(Left(r.index, r.removed, f"rewriting it changes the outputs: {e}"))
    result, rewritten, left = rewrite_model(model, keep, **form)
    return result, rewritten, failed + left
