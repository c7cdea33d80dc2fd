"""A plug-in backend written against the public API only: ``compile(g, "auto")`` ranks it (or passes
it over with the reason) like a built-in, and it passes the conformance corpus through the shared
array math, with no mask, softmax or GQA code of its own. A second plug-in has rules for the
primitives only and runs every attention op through the default decompositions."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

import attngraph as ag
from attngraph.array_math import ARRAY_RULES, ArrayState, numpy_dtypes
from attngraph.conformance import named_cases, random_cases, run_conformance
from attngraph.conformance.runner import Target
from attngraph.ir.op import PRIMITIVES
from attngraph.lowering.registry import unregister_backend
from attngraph.selection import Hardware, select_backend


class ArrayApiPlugin(ag.Backend):
    """Every rule from the shared array math, on NumPy's array-API namespace."""

    name = "plugin-arrayapi"
    rules = ARRAY_RULES.extended("plugin-arrayapi")
    note = "a plug-in on the shared array math"

    def make_state(self, graph, options):
        return ArrayState(xp, numpy_dtypes())


class PrimitivesOnly(ArrayApiPlugin):
    """Rules for the primitives only: every attention op runs by its default decomposition."""

    name = "plugin-primitives"
    rules = ag.Rules("plugin-primitives")
    rules.update({op: fn for op, fn in ARRAY_RULES.items() if op in PRIMITIVES})
    dtypes = frozenset({ag.DType.FLOAT32, ag.DType.FLOAT64, ag.DType.BOOL, ag.DType.INT32, ag.DType.INT64})


PLUGINS = (ArrayApiPlugin, PrimitivesOnly)


@pytest.fixture(scope="module")
def plugins():
    for cls in PLUGINS:
        ag.register_backend(cls.name, cls)
    yield [cls.name for cls in PLUGINS]
    for cls in PLUGINS:
        unregister_backend(cls.name)


def test_plugins_are_ranked_by_auto(plugins):
    g = ag.causal_self_attention(32, 4, num_kv_heads=2)
    s = select_backend(g, sizes={"batch": 1, "q_len": 16})
    assert set(plugins) <= set(s.order), s.explain()
    assert "plug-in" in s.explain()
    half = select_backend(ag.causal_self_attention(32, 4, dtype="float16"), sizes={"batch": 1, "q_len": 16})
    assert dict(half.rejected)["plugin-primitives"] == "cannot express dtype:float16 exactly"
    assert "plugin-arrayapi" in half.order


def test_auto_falls_to_a_plugin_when_it_is_the_only_backend(plugins):
    only = Hardware(backends=("plugin-primitives",))
    g = ag.self_attention(16, 2)
    assert select_backend(g, hardware=only).choice == "plugin-primitives"


def test_primitives_only_plugin_has_no_attention_code():
    assert set(PrimitivesOnly.rules) == set(PRIMITIVES)
    assert PrimitivesOnly.covered() == frozenset(ag.Op)


@pytest.mark.parametrize("pipeline", ["O0", "O1"])
def test_plugins_pass_the_conformance_corpus(plugins, pipeline):
    cases = [c for c in named_cases() + random_cases() if c.dtype in ("float32", "float64")]
    results = run_conformance(cases, [Target(name, {}, pipeline) for name in plugins], progress=False)
    failed = [f"{r.case} on {r.target}: {r.detail}" for r in results if r.status != "passed"]
    assert not failed, "\n".join(failed)
    assert len(results) == 2 * len(cases)


def test_plugin_output_equals_numpy_bitwise_where_the_math_is_shared(plugins):
    g = ag.causal_self_attention(32, 4, num_kv_heads=2, window=(3, 0))
    w = ag.Weights.random(g, seed=1)
    x = {"x": np.random.default_rng(2).standard_normal((2, 9, 32), dtype=np.float32)}
    a = ag.compile(g, "plugin-arrayapi", weights=w)(x)["y"]
    b = ag.compile(g, "numpy", weights=w)(x)["y"]
    np.testing.assert_array_equal(a, b)
