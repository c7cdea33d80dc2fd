"""Whole-model checks: every attention layer of an ONNX model, run on every backend on the model's own values.

    report = check_model("model.onnx")          # discover, read each layer's inputs off onnxruntime, compare
    print(report.table())                        # one row per layer; report.passed

Each attention subgraph discovery lifts (``onnx_discovery.discover``) is a layer. The model runs once under
onnxruntime on seeded inputs (``onnx_discovery.check.random_inputs``: token ids within the embedding table,
padding masks with real padding, symbolic dims at small sizes, a GroupQueryAttention model at a prompt); a copy
of the model returns every value a layer reads or makes. Each lifted graph then runs on those inputs on every
installed backend, and against the float64 reference (``attngraph.conformance.reference``); onnxruntime's own
value at the layer's outputs is held to the same reference. A layer passes when every backend and onnxruntime
are within the budget of its dtype (``attngraph.conformance.budgets``); positions an operator leaves unspecified
(``Subgraph.unspecified``) are not compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from attngraph.conformance.budgets import budget_for, compare
from attngraph.errors import LoweringError
from attngraph.frontends.onnx_discovery.found import source_op

ORT = "onnxruntime"  # the column of onnxruntime's own value at each layer's outputs


@dataclass
class LayerRow:
    """One layer: ``cells[target] = (max |error|, error / budget, detail)`` for each backend and onnxruntime
    (error None: it did not run, detail says why)."""

    index: int
    nodes: tuple[str, ...]
    op: str
    computes: str
    shapes: str
    dtype: str
    cells: dict[str, tuple[float | None, float | None, str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(ratio is not None and ratio <= 1.0 for _, ratio, _ in self.cells.values())


@dataclass
class ModelCheck:
    """The rows of a whole-model check, what discovery did not lift, and how the check was run."""

    source: str
    rows: list[LayerRow]
    unlifted: list = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    feeds: dict[str, tuple] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def table(self, width: int = 40) -> str:
        """The rows as a text table (cells: max |error| against the float64 reference, ``!`` past the budget)."""
        head = ("#", "nodes", "op", "shapes", *self.targets, "verdict")
        body = [(str(r.index), _short(r.nodes[0], width) + (f" (+{len(r.nodes) - 1})" if len(r.nodes) > 1 else ""),
                 r.op, r.shapes, *(_cell(r.cells.get(t)) for t in self.targets), "pass" if r.passed else "FAIL")
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        return "\n".join(lines)

    def results(self):
        """The rows as conformance ``Result``s (case = layer, target = backend or onnxruntime), for the reports."""
        from attngraph.conformance.runner import Result

        out = []
        for r in self.rows:
            case = f"#{r.index} {r.op} {_short(r.nodes[0], 40)}"
            for target in self.targets:
                err, ratio, detail = r.cells.get(target, (None, None, "not run"))
                status = "passed" if ratio is not None and ratio <= 1.0 else "failed"
                text = detail if err is None else f"max |error| {err:.2e}; {detail}"
                out.append(Result(case, target, status, ratio, text, dtype=r.dtype, pins=f"{r.computes} [{r.shapes}]"))
        return out


def _cell(cell) -> str:
    if cell is None:
        return "-"
    err, ratio, _ = cell
    if err is None:
        return "error"
    return f"{err:.1e}" + ("" if ratio is not None and ratio <= 1.0 else " !")


def _short(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters, keeping its end (a node name's layer and op)."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def check_model(source, *, backends: Sequence[str] | None = None, sizes: Mapping[str, int] | None = None,
                seed: int = 0, progress: Callable[[str], None] | None = None) -> ModelCheck:
    """Check every attention layer of the model at ``source`` (a path or ModelProto): see the module docstring.
    ``backends``: the backends to run (default: every installed one); ``sizes``: symbolic dims of the random
    inputs by name (as ``attngraph optimize --size``)."""
    from attngraph.conformance.runner import installed_backends
    from attngraph.frontends.onnx_discovery import discover
    from attngraph.frontends.onnx_discovery.check import dims_from_subgraphs, random_inputs
    from attngraph.frontends.onnx_discovery.model_io import load_untrusted

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    where = source if isinstance(source, str) else "the given model"
    say(f"loading {where} and finding its attention layers ...")
    model, _base = load_untrusted(source)
    found = discover(model)
    subs = list(found.found)
    targets = list(backends or installed_backends()) + [ORT]
    feeds = random_inputs(model, seed=seed, sizes={**dims_from_subgraphs(model, subs), **(sizes or {})})
    say(f"found {len(subs)} layer(s), {len(found.unrecognised)} part(s) not lifted; running the model under "
        f"onnxruntime ({', '.join(f'{k}{list(v.shape)}' for k, v in feeds.items())}) ...")
    try:
        values = layer_values(model, subs, feeds)
    except LoweringError as e:
        raise LoweringError(f"onnxruntime cannot run {where} on the check's inputs "
                            f"({', '.join(f'{k}{list(v.shape)}' for k, v in feeds.items())}): {e}; give other sizes "
                            "(sizes=, --size DIM=N)") from None
    rows = []
    for n, sub in enumerate(subs, 1):
        say(f"layer {n}/{len(subs)}: {source_op(sub)} at {sub.nodes[0]!r} ...")
        rows.append(_check_layer(sub, values, targets[:-1]))
    return ModelCheck(where, rows, list(found.unrecognised), targets, {k: tuple(v.shape) for k, v in feeds.items()},
                      time.perf_counter() - start)


# ---- the model's values ---------------------------------------------------------------------------------

def layer_values(model, subgraphs, feeds: dict) -> dict[str, np.ndarray]:
    """Every model value a subgraph reads or makes, from onnxruntime running a copy of the model that returns
    them (graph inputs from ``feeds``, initializers from the model)."""
    import onnx
    from onnx import helper, numpy_helper

    from attngraph.frontends.onnx_discovery.check import run_with_outputs
    from attngraph.lowering.onnx_facts import ONNX_TYPES

    inits = {t.name: t for t in model.graph.initializer}
    given = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    extra = {}
    for sub in subgraphs:
        types = {v.name: v.type.dtype for v in sub.graph.inputs + sub.graph.outputs}
        for ir, name in list(sub.inputs.items()) + list(sub.outputs.items()):
            if name not in given and name not in inits and ir in types:
                extra[name] = helper.make_tensor_value_info(name, ONNX_TYPES[types[ir]], None)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(extra.values())
    values = dict(feeds)
    values.update(run_with_outputs(copy, feeds))
    wanted = {n for s in subgraphs for n in list(s.inputs.values()) + list(s.outputs.values())}
    values.update({n: numpy_helper.to_array(inits[n]) for n in wanted if n in inits})
    return values


# ---- one layer ------------------------------------------------------------------------------------------

def _check_layer(sub, values: dict, backends: Sequence[str]) -> LayerRow:
    from attngraph.conformance.reference import evaluate

    inputs = {ir: np.asarray(values[m]) for ir, m in sub.inputs.items()}
    dtype = sub.graph.outputs[0].type.dtype.value
    row = LayerRow(sub.index, tuple(sub.nodes), source_op(sub), str(sub.summary.get("computes", "")), _shapes(inputs),
                   dtype)
    with np.errstate(all="ignore"):
        reference = evaluate(sub.graph, sub.weights, {k: np.array(v, copy=True) for k, v in inputs.items()})
    model_out = {ir: np.asarray(values[m]) for ir, m in sub.outputs.items()}
    row.cells[ORT] = _verdict(model_out, reference, sub, inputs, budget_for("onnxruntime", dtype))
    for backend in backends:
        try:
            run = _compiled(sub, backend)
            with np.errstate(all="ignore"):
                got = run({k: np.array(v, copy=True) for k, v in inputs.items()})
        except Exception as e:  # noqa: BLE001 - a backend's failure is its cell, with the message
            row.cells[backend] = (None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        row.cells[backend] = _verdict(got, reference, sub, inputs, budget_for(backend, dtype))
    return row


_COMPILED: dict = {}  # (graph text, backend) -> executable, for layers without weights; kept across checks
_MAX_COMPILED = 64


def _compiled(sub, backend: str):
    """The compiled layer; layers of one form without weights (GroupQueryAttention's) share one compile, in this
    check and the next ones of the process (a model's prompt and decode checks, several models of one family)."""
    from attngraph.lowering.compile import compile as compile_graph

    key = (str(sub.graph.replace(name="layer")), backend) if not sub.weights else None
    if key is not None and key in _COMPILED:
        return _COMPILED[key]
    run = compile_graph(sub.graph, backend, weights=dict(sub.weights))
    if key is not None:
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = run
    return run


def _verdict(got: dict, reference: dict, sub, inputs: dict, budget) -> tuple[float | None, float | None, str]:
    worst, errs, details = 0.0, [], []
    for name, ref in reference.items():
        if name not in got:
            return None, None, f"no output {name!r}"
        have, want = specified(sub, inputs, name, np.asarray(got[name]), np.asarray(ref))
        v = compare(have, want, budget, name)
        fin = np.isfinite(want) & np.isfinite(have) if have.shape == want.shape else None
        errs.append(float(np.max(np.abs(have[fin].astype(np.float64) - want[fin]), initial=0.0))
                    if fin is not None else math.inf)
        if v.ratio >= worst:
            worst = v.ratio
            details = [v.detail]
    return max(errs, default=0.0), worst, "; ".join(details)


def specified(sub, inputs: dict, name: str, got: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``got`` and ``ref`` with the positions the operator leaves unspecified (``Subgraph.unspecified``) set to
    0 in both: positions j on axis 2 at or past ``inputs[counts][b] + k``."""
    from attngraph.frontends.onnx_discovery.check import mask_tail

    rule = sub.unspecified.get(name)
    if rule is None or got.shape != ref.shape or got.ndim < 3:
        return got, ref
    counts, k = rule
    return mask_tail(got, inputs[counts], k), mask_tail(ref, inputs[counts], k)


def _shapes(inputs: dict) -> str:
    """The layer's tensor inputs' shapes, compactly: ``qkv 2x6x128, past_key_in 2x2x0x16``."""
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in inputs.items() if v.ndim >= 3)
