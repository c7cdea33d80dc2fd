"""``attngraph.testing.assert_backends_agree`` and the pytest plugin, as a user's CI would use them."""

from __future__ import annotations

import pytest

import attngraph as ag
from attngraph.testing import BackendsDisagree, assert_backends_agree
from attngraph.testing.random_inputs import random_inputs

pytest_plugins = ["pytester"]


def _graph():
    g = ag.causal_self_attention(16, 4, num_kv_heads=2, key_padding=True)
    return g, ag.Weights.random(g, seed=0), random_inputs(g, {"batch": 2, "q_len": 6}, seed=0)


def test_assert_backends_agree_passes_and_returns_outputs():
    g, w, x = _graph()
    outs = assert_backends_agree(g, w, x, backends=["numpy", "numba"])
    assert set(outs) == {"numpy", "numba"} and outs["numba"]["y"].shape == (2, 6, 16)


def test_assert_backends_agree_names_the_backend_that_is_off():
    g, w, x = _graph()
    with pytest.raises(BackendsDisagree, match=r"numba: y: rel"):
        assert_backends_agree(g, w, x, backends=["numpy", "numba"], budgets={"float32": (1e-12, 1e-12)})


def test_pytest_plugin_runs_a_users_test_on_each_backend(pytester):
    pytester.makepyfile("""
        import attngraph as ag
        from attngraph.testing.random_inputs import random_inputs
        from attngraph.testing import assert_backends_agree

        def test_mine(attngraph_backend):
            g = ag.causal_self_attention(8, 2)
            w = ag.Weights.random(g, seed=0)
            x = random_inputs(g, {"batch": 1, "q_len": 3})
            ag.compile(g, attngraph_backend, weights=w)(x)

        def test_all(attngraph_backends):
            g = ag.self_attention(8, 2)
            assert_backends_agree(g, ag.Weights.random(g, seed=0), random_inputs(g, {"batch": 1, "q_len": 3}),
                                  backends=attngraph_backends)
    """)
    # the plugin loads by its pytest11 entry point, as in a user's project
    result = pytester.runpytest("--attngraph-backends", "numpy,numba", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_mine?numpy? PASSED*", "*test_mine?numba? PASSED*"])
    missing = pytester.runpytest("--attngraph-backends", "nosuch")
    missing.assert_outcomes(failed=1, errors=1)  # an unknown backend fails loudly, never skips
