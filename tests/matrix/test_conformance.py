"""The conformance runner itself: the whole corpus passes on every backend; injected faults are
caught with the right case names; budgets move verdicts; NaN against a number always fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from attngraph_backends.numpy import backend as numpy_backend

import attngraph as ag
from attngraph.conformance import all_cases, compare, installed_backends, run_conformance, select_cases, targets_for
from attngraph.conformance.report import html_page, markdown, terminal, to_json
from attngraph.ir import Op
from attngraph.lowering import Rules


def _faulty(name: str, op: Op, rule) -> type:
    """The NumPy backend, primitive chain only, with one rule replaced by a wrong one."""
    rules = Rules(name)
    rules.update({o: f for o, f in numpy_backend.rules.items() if o is not Op.ATTENTION})
    rules[op] = rule

    class Faulty(numpy_backend.NumpyBackend):
        pass

    Faulty.name, Faulty.rules = name, rules
    return Faulty


def _flipped_mask(ctx, scores, *operands):
    ops = tuple(~o if o.dtype == bool else o for o in operands)
    return numpy_backend.rules[Op.MASK](ctx, scores, *ops)


def _naive_softmax(ctx, x):  # exp(-inf - -inf) = NaN for fully masked rows
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


FAULTS = {
    "fault-flipped-mask": (Op.MASK, _flipped_mask, {"bool_mask_polarity", "mask_rank_q_kv", "fully_masked_row_bool"},
                           {"gqa", "causal_square", "additive_mask"}),
    "fault-nan-rows": (Op.SOFTMAX, _naive_softmax, {"fully_masked_row_bool", "fully_masked_row_neg_inf_bias",
                                                     "key_padding_lengths"}, {"gqa", "bool_mask_polarity"}),
    "fault-unscaled": (Op.SCALE, lambda ctx, x: x, {"scale_override", "gqa", "causal_square"}, set()),
}


@pytest.fixture(scope="module")
def faulty_backends():
    """The faulty backends, registered for this module only (installed_backends() must not see them later)."""
    from attngraph.lowering.registry import unregister_backend

    for name, (op, rule, _, _) in FAULTS.items():
        if name not in ag.available_backends():
            ag.register_backend(name, _faulty(name, op, rule))
    yield list(FAULTS)
    for name in FAULTS:
        unregister_backend(name)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_injected_faults_fail_the_right_cases(fault, faulty_backends):
    _, _, must_fail, must_pass = FAULTS[fault]
    cases = select_cases(all_cases(include_onnx=False), quick=True)
    results = run_conformance(cases, targets_for([fault]), progress=False)
    failed = {r.case for r in results if r.status == "failed"}
    passed = {r.case for r in results if r.status == "passed"}
    assert must_fail <= failed, f"{fault} was not caught on {must_fail - failed}"
    assert must_pass <= passed, f"{fault} failed cases it cannot affect: {must_pass - passed}"
    assert terminal(results).splitlines()[-1] == f"{len(passed)} passed, {len(failed)} failed, 0 skipped"


def test_the_whole_corpus_passes_on_every_backend():
    from attngraph.lowering.registry import BUILTIN

    backends = [b for b in installed_backends() if b in BUILTIN]
    assert set(BUILTIN) <= set(backends) or "ATTNGRAPH_REQUIRE" not in __import__("os").environ
    results = run_conformance(all_cases(), targets_for(backends), progress=False)
    failed = [f"{r.case} on {r.target}: {r.detail}" for r in results if r.status == "failed"]
    assert not failed, "\n".join(failed)
    skipped = [r for r in results if r.status == "skipped"]
    assert len(skipped) <= 0.05 * len(results), "known deviations should be few"
    assert all(r.detail for r in skipped), "every skip carries its reason"


def test_budget_change_moves_the_verdict():
    case = next(c for c in all_cases(include_onnx=False) if c.name == "gqa")
    tight = {k: (1e-15, 1e-15) for k in ("float16", "bfloat16", "float32", "float64")}
    loose = {k: (1.0, 1.0) for k in tight}
    assert run_conformance([case], targets_for(["numba"]), budgets=tight, progress=False)[0].status == "failed"
    assert run_conformance([case], targets_for(["numba"]), budgets=loose, progress=False)[0].status == "passed"


def test_nan_against_a_number_always_fails():
    ref = np.array([[0.0, 1.0]])
    verdict = compare(np.array([[np.nan, 1.0]]), ref, (1.0, 1.0))
    assert not verdict.ok and verdict.ratio == np.inf and "NaN vs number" in verdict.detail
    assert not compare(np.array([[0.0, 1.0]]), np.array([[np.nan, 1.0]]), (1.0, 1.0)).ok
    assert compare(np.array([[np.nan, 1.0]]), np.array([[np.nan, 1.0]]), (1e-12, 1e-12)).ok


def test_reports_render(tmp_path):
    cases = select_cases(all_cases(include_onnx=False), "gqa,mqa,fully_masked*")
    results = run_conformance(cases, targets_for(["numpy", "fault-nan-rows"] if "fault-nan-rows" in
                                                 ag.available_backends() else ["numpy"]), progress=False)
    data = json.loads(to_json(results, {"who": "test"}))
    assert data["summary"]["passed"] + data["summary"]["failed"] == len(results)
    assert "| gqa |" in markdown(results)
    page = html_page(results)
    assert page.startswith("<!doctype html>") and "<table>" in page and "data:image/png;base64," in page


def test_cli_conformance_writes_reports_and_sets_the_exit_code(tmp_path, capsys, faulty_backends):
    from attngraph.cli import main

    args = ["conformance", "--cases", "gqa,fully_masked_row_bool", "--no-progress", "--json", str(tmp_path / "r.json"),
            "--markdown", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html")]
    assert main(args + ["--backends", "numpy,numba"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "4 passed, 0 failed, 0 skipped"
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["passed"] == 4
    assert main(args + ["--backends", "numpy,fault-nan-rows"]) == 1
    assert "fully_masked_row_bool on fault-nan-rows" in capsys.readouterr().out
