"""Backend lookup: built-ins, explicit registration, entry points, and the missing-package message."""

from __future__ import annotations

import importlib
import os

import pytest

import attngraph as ag
from attngraph.lowering import registry


def test_builtins_listed_without_importing():
    assert "numpy" in ag.available_backends()


def test_register_backend_and_refuse_duplicates():
    class Fake(ag.Backend):
        name = "fake"
        rules = ag.Rules("fake")

    ag.register_backend("fake_for_test", Fake)
    try:
        assert isinstance(ag.get_backend("fake_for_test"), Fake)
        with pytest.raises(ValueError, match="already exists"):
            ag.register_backend("fake_for_test", Fake)
        with pytest.raises(ag.LoweringError, match="backend 'fake' has no lowering for matmul"):
            ag.compile(ag.core_attention(1, 2), "fake_for_test", fuse=False)(
                q=__import__("numpy").zeros((1, 1, 1, 2), "float32"), k=__import__("numpy").zeros((1, 1, 1, 2), "float32"),
                v=__import__("numpy").zeros((1, 1, 1, 2), "float32"))
    finally:
        registry._registered.pop("fake_for_test", None)
        registry._loaded.pop("fake_for_test", None)


def test_missing_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "ghost", ("attngraph_no_such_module:Backend", "ghost"))
    with pytest.raises(ag.BackendUnavailable, match=r"backend 'ghost' needs the package 'attngraph_no_such_module': "
                                                     r"pip install 'attngraph\[ghost\]'"):
        ag.get_backend("ghost")


def test_entry_point_backends_are_found(monkeypatch):
    class EP:
        name, value = "plugin", "attngraph_backends.numpy.backend:NumpyBackend"

    monkeypatch.setattr(registry, "entry_points", lambda group: [EP()] if group == registry.GROUP else [])
    assert "plugin" in ag.available_backends()
    try:
        assert ag.get_backend("plugin").name == "numpy"
    finally:
        registry._loaded.pop("plugin", None)


@pytest.mark.skipif(os.environ.get("ATTNGRAPH_REQUIRE") != "all", reason="CI sets ATTNGRAPH_REQUIRE=all")
@pytest.mark.parametrize("package", ["numba", "scipy", "torch", "onnx", "onnxruntime"])
def test_ci_has_every_backend_package(package):
    """In CI a missing backend package must fail the run, never skip a backend silently."""
    importlib.import_module(package)
