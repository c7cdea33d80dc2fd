"""Run cases x backends (x ONNX export style, x pass pipeline) against the float64 reference."""

from __future__ import annotations

import fnmatch
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from attngraph.conformance.budgets import BUDGETS, budget_for, compare, known_deviation
from attngraph.conformance.case import Case
from attngraph.conformance.reference import evaluate
from attngraph.errors import AttnGraphError, BackendUnavailable, Unsupported
from attngraph.lowering.compile import compile as compile_graph
from attngraph.lowering.registry import available_backends, get_backend
from attngraph.passes import run_pipeline

ONNX_STYLES = ("attention", "decomposed")


@dataclass(frozen=True)
class Target:
    """One column of the matrix: a backend with its options (e.g. an ONNX export style) and a pipeline."""

    backend: str
    options: dict = field(default_factory=dict)
    pipeline: str = "O1"

    @property
    def label(self) -> str:
        extra = "".join(f":{v}" for v in self.options.values())
        return f"{self.backend}{extra}{'' if self.pipeline == 'O1' else '@' + self.pipeline}"


@dataclass
class Result:
    case: str
    target: str
    status: str              # passed | failed | skipped
    ratio: float | None      # worst error / budget over the outputs (None when not run)
    detail: str
    seconds: float = 0.0
    dtype: str = "float32"
    pins: str = ""


def targets_for(backends: Iterable[str], pipelines: Sequence[str] = ("O1",),
                onnx_styles: Sequence[str] = ONNX_STYLES) -> list[Target]:
    out = []
    for b in backends:
        for p in pipelines:
            if b == "onnx":
                out += [Target(b, {"style": s}, p) for s in onnx_styles]
            else:
                out.append(Target(b, {}, p))
    return out


def installed_backends() -> list[str]:
    """Backends that load here (numpy always)."""
    found = []
    for name in available_backends():
        try:
            get_backend(name)
        except BackendUnavailable:
            continue
        except Exception:  # noqa: BLE001 - a broken backend is reported by `attngraph info`, not here
            continue
        found.append(name)
    return found


def select_cases(cases: Sequence[Case], pattern: str | None = None, dtype: str | None = None,
                 quick: bool = False) -> list[Case]:
    pats = [p.strip() for p in (pattern or "*").split(",") if p.strip()]
    return [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)
            and (dtype is None or c.dtype == dtype) and (not quick or c.quick)]


def run_case(case: Case, targets: Sequence[Target], budgets: dict | None = None) -> list[Result]:
    """One case on every target: build it once, compute the reference once, compare every output."""
    budgets = budgets or BUDGETS
    try:
        graph, weights, inputs = case.build()
    except AttnGraphError as e:
        why = known_deviation(case.name, "*") or f"cannot build: {str(e).splitlines()[0]}"
        status = "skipped" if known_deviation(case.name, "*") else "failed"
        return [Result(case.name, t.label, status, None, why, dtype=case.dtype, pins=case.pins) for t in targets]
    reference = evaluate(graph, weights, inputs)
    out = []
    for t in targets:
        start = time.perf_counter()
        why = known_deviation(case.name, t.label, case.dtype)
        if why:
            out.append(Result(case.name, t.label, "skipped", None, why, dtype=case.dtype, pins=case.pins))
            continue
        try:
            g = run_pipeline(graph, t.pipeline)
            fresh = {name: np.array(a, copy=True) for name, a in inputs.items()}  # a backend may write its cache
            got = compile_graph(g, t.backend, weights=weights, **t.options)(fresh)
        except AttnGraphError as e:  # a refusal by design (Unsupported) is skipped; any other error fails
            out.append(Result(case.name, t.label, "skipped" if isinstance(e, Unsupported) else "failed", None,
                              str(e).splitlines()[0], time.perf_counter() - start, case.dtype, case.pins))
            continue
        except Exception as e:  # noqa: BLE001 - a backend crash is a failed cell, with its message
            out.append(Result(case.name, t.label, "failed", None, f"{type(e).__name__}: {str(e).splitlines()[0]}",
                              time.perf_counter() - start, case.dtype, case.pins))
            continue
        budget = budget_for(t.label, case.dtype, budgets)
        verdicts = [compare(got[name], ref, budget, name) for name, ref in reference.items()]
        worst = max(verdicts, key=lambda v: v.ratio)
        ok = all(v.ok for v in verdicts)
        out.append(Result(case.name, t.label, "passed" if ok else "failed", worst.ratio, worst.detail,
                          time.perf_counter() - start, case.dtype, case.pins))
    return out


def run_conformance(cases: Sequence[Case], targets: Sequence[Target], *, budgets: dict | None = None,
                    progress: bool = True) -> list[Result]:
    """Every case on every target, with a progress bar on stderr when tqdm is installed."""
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(cases), unit="case", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None
    results: list[Result] = []
    for case in cases:
        if bar is not None:
            bar.set_description(case.name[:40])
        with np.errstate(all="ignore"):
            results += run_case(case, targets, budgets)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def summary(results: Sequence[Result]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for r in results:
        counts[r.status] += 1
    return counts


def as_dicts(results: Sequence[Result]) -> list[dict]:
    return [{**asdict(r), "ratio": None if r.ratio is None or not np.isfinite(r.ratio) else r.ratio,
             "ratio_inf": r.ratio is not None and not np.isfinite(r.ratio)} for r in results]
