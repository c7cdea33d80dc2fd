"""Helpers for users' own tests (``assert_backends_agree``), random inputs for a graph, and the
pytest plugin (``attngraph.testing.pytest_plugin``: ``--attngraph-backends`` and fixtures).

    from attngraph.testing import assert_backends_agree
    assert_backends_agree(graph, weights, inputs, backends=["numpy", "onnx", "torch"])
"""

from attngraph.testing.agree import BackendsDisagree, assert_backends_agree

__all__ = ["BackendsDisagree", "assert_backends_agree"]
