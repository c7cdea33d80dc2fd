"""Each op alone, on each backend, against the float64 reference: with the backend's own rule, and
expanded to primitives by its default decomposition. A failure names one op on one backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from one_node_cases import ONE_NODE

import attngraph as ag
from attngraph.conformance.reference import evaluate
from attngraph.ir import DType
from attngraph.ir.op import PRIMITIVES, Op
from attngraph.passes.decompose import decompose

OPS = sorted(ONE_NODE, key=lambda o: o.value)


def _check(backend, graph, inputs):
    ref = evaluate(graph, {}, inputs)
    got = ag.compile(graph, backend, fuse=False)(inputs)
    for value in graph.outputs:
        want = ref[value.name]
        if value.type.dtype.is_float:
            assert_close(got[value.name], want, "float32", value.name)
        else:
            np.testing.assert_array_equal(np.asarray(got[value.name]), want, err_msg=value.name)
            assert np.asarray(got[value.name]).dtype == np.dtype(value.type.dtype.value)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.value)
def test_op_alone(backend, op):
    graph, inputs = ONE_NODE[op]()
    _check(backend, graph, inputs)


@pytest.mark.parametrize("op", [o for o in OPS if o not in PRIMITIVES], ids=lambda o: o.value)
def test_op_by_its_decomposition(backend, op):
    graph, inputs = ONE_NODE[op]()
    expanded = decompose(graph, keep=PRIMITIVES)
    assert all(n.op in PRIMITIVES for n in expanded.nodes)
    _check(backend, expanded, inputs)


def test_cast_float_to_int_truncates_toward_zero(backend):
    graph, _ = ONE_NODE[Op.CAST]()
    x = np.array([[-1.7, -0.2, 2.9], [0.0, 1.0, -3.5]], np.float32)
    got = ag.compile(graph, backend)(x=x)["out"]
    np.testing.assert_array_equal(got, np.array([[-1, 0, 2], [0, 1, -3]]))
    assert graph.outputs[0].type.dtype is DType.INT64
