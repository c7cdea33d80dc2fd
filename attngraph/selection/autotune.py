"""Autotune: time the eligible backends on the real shapes and cache the winner.

The cache is one JSON file in the user's cache directory (``$ATTNGRAPH_CACHE_DIR`` or
``$XDG_CACHE_HOME/attngraph``), keyed by hardware fingerprint, graph signature, dtype and a shape
bucket (each size rounded up to a power of two). It is written atomically and read as plain data.
The cache is advisory: a corrupt file or a malformed entry is ignored with one warning and replaced on
the next save, and a cache that cannot be written is skipped with one warning; the measurement is
still used.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from attngraph.errors import ConfigError
from attngraph.fileio import atomic_write_text
from attngraph.ir import Graph

VERSION = 1
TAG = "ATTNGRAPH_TUNE "  # marks the line with the result in a tune worker's stdout


def cache_path() -> Path:
    """The cache file: ``$ATTNGRAPH_CACHE_DIR/autotune.json`` or ``$XDG_CACHE_HOME/attngraph/autotune.json``."""
    root = os.environ.get("ATTNGRAPH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME",
                                                                          Path.home() / ".cache")) / "attngraph"
    return Path(root) / "autotune.json"


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def normalize_sizes(graph: Graph, sizes: Mapping[str, int] | None) -> dict[str, int]:
    """The sizes that describe one problem, spelled one way for every caller (``compile(autotune=True)``
    and ``attngraph tune`` share cache entries through it): only the symbols the graph's inputs use,
    ``batch`` 1 and ``q_len`` 512 unless given, ``kv_len`` = ``q_len`` and ``past_len`` = 0 unless given."""
    from attngraph.ir import dims

    given = dict(sizes or {})
    for name, n in given.items():
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ConfigError(f"autotune size {name}={n!r} must be an int >= 0, e.g. sizes={{'batch': 2, "
                              f"'q_len': 128}}")
    full = {"batch": 1, "q_len": 512, **{k: int(n) for k, n in given.items()}}
    full.setdefault("kv_len", full["q_len"])
    full.setdefault("past_len", 0)
    used = {s for v in graph.inputs for d in v.type.shape for s in dims.symbols(d)}
    return {k: full[k] for k in sorted(used) if k in full}


def cache_key(fingerprint: str, graph: Graph, sizes: Mapping[str, int]) -> str:
    """The cache key of ``graph`` at ``sizes`` (normalised here, so any spelling of the sizes gives one key)."""
    from attngraph.ir.serialize import to_json

    signature = hashlib.sha256(to_json(graph).encode()).hexdigest()[:16]
    dtype = graph.inputs[0].type.dtype.value if graph.inputs else "?"
    bucket = ",".join(f"{k}={_bucket(v)}" for k, v in normalize_sizes(graph, sizes).items())
    return f"{fingerprint}|{signature}|{dtype}|{bucket}"


def _valid_entry(entry: object) -> bool:
    """An entry is ``{"times_ms": {backend: finite ms >= 0, ...}, ...}`` with at least one backend."""
    times = entry.get("times_ms") if isinstance(entry, dict) else None
    return isinstance(times, dict) and bool(times) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < float("inf")
        for k, v in times.items())


def _read_entries() -> tuple[dict, str | None]:
    """(the valid entries, what was wrong with the file or why entries were dropped, or None).

    No file, or a folder where the file should be, is no cache (saving then says why it fails)."""
    path = cache_path()
    try:
        if not path.is_file():
            return {}, None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        return {}, f"ignoring the unreadable autotune cache {path} ({e}); it will be rewritten"
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
        return {}, (f"ignoring the unreadable autotune cache {path} (expected {{'version': {VERSION}, 'entries': "
                    f"{{...}}}}); it will be rewritten")
    entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
    bad = len(data["entries"]) - len(entries)
    if bad:
        return entries, (f"ignoring {bad} malformed entr{'y' if bad == 1 else 'ies'} in the autotune cache {path} "
                         "(expected {'times_ms': {backend: milliseconds}}); measuring again replaces them")
    return entries, None


def load_cache() -> dict:
    """The valid cache entries by key; a bad file or bad entries are left out with one warning (the
    cache is advisory: it may never stop a compile)."""
    entries, problem = _read_entries()
    if problem:
        warnings.warn(problem, UserWarning, stacklevel=2)
    return entries


def save_entry(key: str, entry: dict) -> bool:
    """Store ``entry`` under ``key`` (dropping malformed entries); True when saved. A cache that cannot be
    written (read-only folder, a folder or a file in the way) is skipped with a warning."""
    entries, _ = _read_entries()  # the caller's load_cache has already warned about this file
    entries[key] = entry
    path = cache_path()
    try:
        atomic_write_text(path, json.dumps({"version": VERSION, "entries": entries}, indent=1))
    except OSError as e:
        warnings.warn(f"autotune: cannot save the measurement to {path} ({e.strerror or e}); it is used but not "
                      "cached: point ATTNGRAPH_CACHE_DIR at a writable folder", UserWarning, stacklevel=3)
        return False
    return True


def clear_cache() -> bool:
    """Delete the cache file; True when there was one."""
    path = cache_path()
    if path.exists():
        path.unlink()
        return True
    return False


def time_backends(graph: Graph, weights, sizes: Mapping[str, int], names: list[str], *, repeats: int = 5,
                  seed: int = 0, timeout_s: float = 300.0) -> dict[str, float]:
    """Median ms of warm calls per backend on random inputs of ``sizes``, each backend in a fresh
    process (see ``tune_worker``). The ones within 1.5x of the best are measured again and keep their
    better median: on a shared machine one burst of other work can spoil a single half-second
    measurement. A backend that fails or times out is left out, with a warning."""
    import tempfile

    from attngraph.ir.serialize import save_graph
    from attngraph.lowering.weights import Weights

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="attngraph-tune-") as tmp:
        folder = Path(tmp)
        save_graph(graph, folder / "graph.json")
        Weights(dict(weights or {})).save(folder / "weights.npz")
        spec = {"sizes": {"past_len": 0, **sizes}, "repeats": repeats, "seed": seed}
        for name in names:  # in ranked order, so a clear loser stops after one timed call
            if times:
                spec["cutoff_ms"] = 3 * min(times.values())
            ms = _time_in_subprocess(folder, spec, name, timeout_s)
            if ms is not None:
                times[name] = ms
        close = [n for n in times if times[n] <= 1.5 * min(times.values())] if times else []
        if len(close) > 1:
            spec.pop("cutoff_ms", None)
            for name in close:
                ms = _time_in_subprocess(folder, spec, name, timeout_s)
                if ms is not None:
                    times[name] = min(times[name], ms)
    return times


def _time_in_subprocess(folder: Path, spec: dict, name: str, timeout_s: float) -> float | None:
    import subprocess
    import sys

    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, "-m", "attngraph.selection.tune_worker", str(folder), name],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        warnings.warn(f"autotune: {name} ran past {timeout_s:.0f} s; skipping it", stacklevel=3)
        return None
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)), None)
    if proc.returncode != 0 or line is None:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        warnings.warn(f"autotune: {name} failed on this graph ({why}); skipping it", stacklevel=3)
        return None
    return json.loads(line[len(TAG):])["ms"]


def tuned_order(graph: Graph, weights, sizes: Mapping[str, int], selection, *, repeats: int = 3,
                refresh: bool = False) -> tuple[list[str], dict[str, float]]:
    """The eligible backends fastest first, from the cache or measured now (and cached). ``sizes`` in any
    spelling: ``normalize_sizes`` makes the cache key and the measured shapes."""
    sizes = normalize_sizes(graph, sizes)  # the same defaults as select_backend's problem_of
    key = cache_key(selection.hardware.fingerprint(), graph, sizes)
    entry = None if refresh else load_cache().get(key)
    if entry is None or set(entry["times_ms"]) - set(selection.order):
        times = time_backends(graph, weights, sizes, selection.order, repeats=repeats)
        entry = {"times_ms": times, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if times:
            save_entry(key, entry)
    times = entry["times_ms"]
    order = sorted(times, key=times.get) + [n for n in selection.order if n not in times]
    return order, times
