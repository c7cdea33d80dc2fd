"""``Weights``: the named arrays bound to a graph's params, with a seeded initializer and checks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from attngraph.errors import WeightError
from attngraph.ir import Graph
from attngraph.ir.dtypes import to_numpy


class Weights(Mapping[str, np.ndarray]):
    """A read-only mapping from param name to array, holding its own read-only copies.

    The copies are what every backend binds at compile: changing the caller's arrays afterwards never
    changes a compiled graph, on any backend, with or without passes. ``Weights.random(graph, seed=0)``
    makes reproducible weights; ``weights.check(graph)`` raises ``WeightError`` naming any missing,
    unexpected or mis-shaped weight.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        if isinstance(arrays, Weights):  # already private, read-only copies
            self._arrays = dict(arrays._arrays)
            return
        self._arrays = {str(k): _frozen_copy(v) for k, v in (arrays or {}).items()}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"no weight named {name!r}; have: {sorted(self._arrays)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._arrays.items())
        return f"Weights({parts})"

    @classmethod
    def random(cls, graph: Graph, seed: int = 0) -> Weights:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights (torch's Linear init), biases included."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for p in graph.params:
            shape = tuple(int(d) for d in p.type.shape)
            fan_in = shape[0] if len(shape) == 2 else max(shape[0], 1)
            bound = 1.0 / math.sqrt(fan_in)
            arrays[p.name] = rng.uniform(-bound, bound, size=shape).astype(to_numpy(p.type.dtype))
        return cls(arrays)

    def check(self, graph: Graph) -> Weights:
        """Raise ``WeightError`` unless every param has an array of its exact shape and dtype."""
        wanted = {p.name: p for p in graph.params}
        missing = [n for n in wanted if n not in self._arrays]
        if missing:
            raise WeightError(f"graph {graph.name} needs weight(s) {missing} that were not given; "
                              f"have {sorted(self._arrays)}. Use Weights.random(graph) for test weights")
        extra = sorted(set(self._arrays) - set(wanted))
        if extra:
            raise WeightError(f"weight(s) {extra} are not params of graph {graph.name}; "
                              f"its params are {list(wanted)}")
        for name, p in wanted.items():
            arr, want_dtype = self._arrays[name], to_numpy(p.type.dtype)
            if tuple(arr.shape) != tuple(p.type.shape):
                raise WeightError(f"weight {name!r} has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(p.type.shape)} ({p.type}); linear weights are stored (in, out)")
            if arr.dtype != want_dtype:
                raise WeightError(f"weight {name!r} has dtype {arr.dtype}, expected {want_dtype}; "
                                  f"convert with .astype('{want_dtype}')")
        return self

    def save(self, path) -> None:
        """Write an ``.npz`` file atomically (no pickle)."""
        import io

        from attngraph.fileio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **self._arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> Weights:
        """Read an ``.npz`` file written by ``save``; object arrays are refused (no pickle). Any problem (no
        such file, not an npz, a member that is not a plain array) is one ``WeightError`` naming the file."""
        import zipfile

        fix = "save weights with attngraph.Weights({...}).save('w.npz')"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except FileNotFoundError:
            raise WeightError(f"weights file {str(path)!r}: no such file; {fix}") from None
        except OSError as e:
            raise WeightError(f"weights file {str(path)!r} cannot be read ({e.strerror or e}); {fix}") from None
        if not zipfile.is_zipfile(path):  # an .npz is a zip; numpy would call any other file 'pickled data'
            raise WeightError(f"weights file {str(path)!r} is not an .npz file: expected a zip archive of named "
                              f"arrays, got a file starting with {head!r}; {fix}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        # np.load's errors for a zip that is not an npz of plain arrays: object arrays (ValueError), a member
        # that is not an .npy (ValueError, EOFError), a truncated member (BadZipFile, OSError)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise WeightError(f"weights file {str(path)!r} is not an .npz of named arrays ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); {fix}") from None
        odd = {k: a.dtype.str for k, a in arrays.items() if isinstance(a, np.ndarray) and a.dtype.kind not in "biuf"}
        if odd or not all(isinstance(a, np.ndarray) for a in arrays.values()):
            raise WeightError(f"weights file {str(path)!r} holds members that are not numeric arrays "
                              f"({odd or 'not .npy'}); {fix}")
        return cls(arrays)


def _frozen_copy(value) -> np.ndarray:
    """A private copy in native byte order that nobody can write to."""
    array = np.array(value, copy=True)
    if array.dtype.byteorder not in ("=", "|") and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array.flags.writeable = False
    return array
