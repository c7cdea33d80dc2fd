"""Every op runs on every backend: it has a rule there, or a default decomposition into ops that do.
And each decomposition emits only the ops it declares (``USES``), checked on real expansions."""

from __future__ import annotations

import pytest
from conftest import BACKENDS, REQUIRED
from one_node_cases import ONE_NODE

import attngraph as ag
from attngraph.ir.op import PRIMITIVES, Op
from attngraph.passes.decompose import covered_ops, decompose
from attngraph.passes.decompositions import DECOMPOSITIONS, USES


def test_every_op_is_a_primitive_or_decomposes():
    assert set(DECOMPOSITIONS) == set(USES)
    homeless = sorted(op.value for op in Op if op not in PRIMITIVES and op not in DECOMPOSITIONS)
    assert not homeless, f"ops that are neither primitives nor decomposable: {homeless}"
    assert covered_ops(PRIMITIVES) == frozenset(Op), "the primitives alone must run every op"


def test_every_op_has_a_one_node_case():
    assert set(ONE_NODE) == set(Op), sorted(o.value for o in set(Op) - set(ONE_NODE))


@pytest.mark.parametrize("name", BACKENDS)
def test_every_op_runs_on_every_builtin_backend(name):
    try:
        backend = ag.get_backend(name)
    except ag.BackendUnavailable as e:
        if name in REQUIRED:
            raise
        pytest.skip(str(e))
    missing = [op.value for op in Op if op not in backend.covered()]
    assert not missing, f"backend {name!r} has neither a rule nor a decomposition for {missing}"
    assert PRIMITIVES <= set(backend.rules), f"{name} lacks primitive rules {sorted(PRIMITIVES - set(backend.rules))}"


@pytest.mark.parametrize("op", sorted(DECOMPOSITIONS, key=lambda o: o.value), ids=lambda o: o.value)
def test_a_decomposition_emits_only_what_it_declares(op):
    graph, _ = ONE_NODE[op]()
    one_level = decompose(graph, keep=frozenset(Op) - {op})
    emitted = {n.op for n in one_level.nodes}
    assert emitted <= USES[op], f"{op.value} emitted {sorted(o.value for o in emitted - USES[op])} undeclared"
    full = decompose(graph, keep=PRIMITIVES)
    assert {n.op for n in full.nodes} <= PRIMITIVES
    assert [v.name for v in full.outputs] == [v.name for v in graph.outputs], "outputs keep their names"
