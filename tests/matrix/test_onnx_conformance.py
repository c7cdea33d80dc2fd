"""ONNX's own Attention, RotaryEmbedding and RMSNormalization node cases (built in memory by the installed onnx),
imported with
``from_onnx`` and run on every backend against ONNX's expected outputs.

Cases the IR cannot express yet are the library's known deviations, applied as strict xfails: if one
starts passing, the test suite says so.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUDGETS

import attngraph as ag
from attngraph.conformance.budgets import known_deviation
from attngraph.conformance.onnx_cases import ONNX_OPERATOR_CASES

onnx_loader = pytest.importorskip("onnx.backend.test.loader")

_CASES = {c.name: c for c in onnx_loader.load_model_tests(kind="node") if c.name.startswith(ONNX_OPERATOR_CASES)}


def known_reason(name: str) -> str | None:
    """The library's known-deviation table (``attngraph.conformance.budgets``), for this ONNX case."""
    return known_deviation(f"onnx/{name.removeprefix('test_')}", "*")


def _dtype_name(arr: np.ndarray) -> str:
    return {"float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}.get(str(arr.dtype), "float32")


@pytest.mark.parametrize("name", sorted(_CASES))
def test_onnx_attention_node_case(name, backend, request):
    reason = known_reason(name)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True, raises=ag.SerializationError))
    case = _CASES[name]
    graph = ag.from_onnx(case.model)
    inputs, expected = case.data_sets[0]
    feed = {vi.name: arr for vi, arr in zip(case.model.graph.input, inputs)}
    got = ag.compile(graph, backend)(feed)
    for out, want in zip(case.model.graph.output, expected):
        rel, elem = BUDGETS[_dtype_name(want)]
        tol = max(elem, case.rtol)
        np.testing.assert_allclose(got[out.name].astype(np.float64), np.asarray(want, np.float64),
                                   rtol=tol, atol=max(tol * float(np.nanmax(np.abs(np.where(
                                       np.isinf(want.astype(np.float64)), 0, want.astype(np.float64))))), 1e-6),
                                   equal_nan=True, err_msg=f"output {out.name}")


def test_corpus_is_complete():
    """The installed onnx builds all 186 Attention cases, 16 RotaryEmbedding and 38 RMSNormalization cases
    (with their _expanded twins); fewer would mean a silent loss of coverage."""
    assert len([n for n in _CASES if n.startswith("test_attention_")]) >= 186
    assert len([n for n in _CASES if n.startswith("test_rotary_embedding")]) >= 16
    assert len([n for n in _CASES if n.startswith("test_rms_normalization")]) >= 38
    expressible = [n for n in _CASES if not known_reason(n)]
    assert len(expressible) >= 90, len(expressible)
