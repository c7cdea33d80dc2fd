"""Backends by name: the built-ins, entry points in group ``attngraph.backends``, and explicit registration.

Nothing is imported until a backend is asked for, so ``import attngraph`` pulls in NumPy only.
Built-in names win over entry points of the same name.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from typing import Any

from attngraph.errors import BackendUnavailable, LoweringError

GROUP = "attngraph.backends"

# The built-in backends, the one table of their names: name -> (module:class, the pip extra that
# installs what it needs). Plug-ins register under the entry-point group GROUP.
BUILTIN: dict[str, tuple[str, str]] = {
    "numpy": ("attngraph_backends.numpy.backend:NumpyBackend", "attngraph"),
    "numba": ("attngraph_backends.numba.backend:NumbaBackend", "numba"),
    "onnx": ("attngraph_backends.onnx.backend:OnnxBackend", "onnx"),
    "torch": ("attngraph_backends.torch.backend:TorchBackend", "torch"),
}

_registered: dict[str, Any] = {}
_loaded: dict[str, Any] = {}


def _entry_points() -> dict[str, str]:
    found = {}
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTIN:
            if ep.value != BUILTIN[ep.name][0]:
                warnings.warn(f"entry point {ep.name!r} -> {ep.value} is shadowed by the built-in backend",
                              stacklevel=3)
            continue
        found[ep.name] = ep.value
    return found


def available_backends() -> list[str]:
    """Every backend name known (built-in, registered, or by entry point); imports nothing."""
    return sorted(set(BUILTIN) | set(_registered) | set(_entry_points()))


def register_backend(name: str, backend: Any) -> None:
    """Register a backend class or instance under ``name`` (for tests and notebooks)."""
    if name in available_backends():
        raise ValueError(f"a backend named {name!r} already exists")
    _registered[name] = backend


def unregister_backend(name: str) -> None:
    """Forget a backend registered with ``register_backend`` (tests and notebooks)."""
    if name not in _registered:
        raise KeyError(f"no backend {name!r} was registered with register_backend")
    del _registered[name]
    _loaded.pop(name, None)


def _load(name: str) -> Any:
    if name in _registered:
        b = _registered[name]
        return b() if isinstance(b, type) else b
    if name in BUILTIN:
        target, extra = BUILTIN[name]
    else:
        target, extra = _entry_points().get(name), name
        if target is None:
            raise KeyError(f"unknown backend {name!r}; known: {available_backends()}")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        missing = e.name or str(e)
        if missing.split(".")[0] in ("attngraph", "attngraph_backends"):  # our own code is broken: say so
            raise LoweringError(f"backend {name!r} failed to import attngraph's own module {missing!r}: {e}") from e
        raise BackendUnavailable(f"backend {name!r} needs the package {missing!r}: "
                                 f"pip install 'attngraph[{extra}]'") from e
    return cls()


def get_backend(name: str) -> Any:
    """The default instance of backend ``name``; raises ``BackendUnavailable`` naming the pip extra."""
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


def backend_status(name: str) -> tuple[bool, str]:
    """``(True, "")`` when ``name`` loads, else ``(False, reason)``."""
    try:
        get_backend(name)
    except Exception as e:  # report any failure: this feeds `attngraph info`
        return False, str(e).splitlines()[0]
    return True, ""
