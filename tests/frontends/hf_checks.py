"""The checks the from_transformers tests share: each family's model built and recorded once per session, and
the comparison of an imported layer's outputs (and cache) with what the module returned."""

from __future__ import annotations

import hf_cases as hc
import numpy as np

TOL = 1e-5
_MODELS: dict[str, tuple] = {}


def recorded(name: str, impl: str = "eager", family: hc.Family | None = None):
    """(model, imports, steps) of a family, built and run once per test session and implementation."""
    key = f"{name}/{impl}/{family.left_pad if family else ''}"
    if key not in _MODELS:
        fam = family or hc.FAMILIES[name]
        base = recorded(name)[0] if impl != "eager" or family else None
        model = hc.build(fam, impl, base=base)
        imports = hc.import_layers(model, fam)
        _MODELS[key] = (model, imports, hc.record(model, fam, imports))
    return _MODELS[key]


def rel(got, ref, rows=None) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if rows is not None:
        got, ref = got[rows], ref[rows]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def check(imported, run, steps, family: hc.Family, what: str) -> list[float]:
    """Run every recorded step; each output (and new cache entry) within TOL of the module's."""
    errors = []
    for i, step in enumerate(steps):
        out = imported.outputs(run(step.feed), residual=step.residual)
        rows = step.rows if family.left_pad else None  # fully masked pad rows: eager gives mean(V), we give 0
        errors.append(rel(out.output, step.output, rows))
        assert errors[-1] < TOL, f"{what} step {i}: relative error {errors[-1]:.2e}"
        if step.present is not None:
            for got, ref in zip(out.present, step.present, strict=True):
                assert got.shape == ref.shape and rel(got, ref) < TOL, f"{what} step {i}: cache differs"
    return errors
