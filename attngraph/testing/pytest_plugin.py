"""pytest plugin (registered by the ``pytest11`` entry point): ``--attngraph-backends`` and fixtures.

    def test_my_attention(attngraph_backend):             # runs once per selected backend
        run = attngraph.compile(graph, attngraph_backend, weights=w)
        ...

    def test_all_agree(attngraph_backends):               # the selected names, as a list
        attngraph.testing.assert_backends_agree(graph, w, inputs, backends=attngraph_backends)

``pytest --attngraph-backends numpy,onnx`` picks backends (default: every installed one); a named
backend that is not installed fails the run instead of being skipped silently.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("attngraph")
    group.addoption("--attngraph-backends", default=None,
                    help="comma-separated attngraph backends for the attngraph_backend fixture "
                         "(default: every installed backend)")


def _selected(config) -> list[str]:
    from attngraph.conformance.runner import installed_backends

    given = config.getoption("--attngraph-backends")
    return [b.strip() for b in given.split(",") if b.strip()] if given else installed_backends()


def pytest_generate_tests(metafunc):
    if "attngraph_backend" in metafunc.fixturenames:
        metafunc.parametrize("attngraph_backend", _selected(metafunc.config), indirect=True)


@pytest.fixture
def attngraph_backend(request):
    """One backend name per test instance; fails (not skips) when a named backend cannot load."""
    from attngraph.lowering.registry import get_backend

    get_backend(request.param)  # raises BackendUnavailable with the pip extra to install
    return request.param


@pytest.fixture
def attngraph_backends(request) -> list[str]:
    """Every selected backend name."""
    return _selected(request.config)
