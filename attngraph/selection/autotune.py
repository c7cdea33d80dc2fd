"""Autotune: time the eligible backends on the real shapes and cache the winner.

The cache is one JSON file in the user's cache directory (``$ATTNGRAPH_CACHE_DIR`` or
``$XDG_CACHE_HOME/attngraph``), keyed by hardware fingerprint, graph signature, dtype and a shape
bucket (each size rounded up to a power of two). It is written atomically and read as plain data;
a corrupt file is ignored with a warning and rewritten on the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from attngraph.fileio import atomic_write_text
from attngraph.ir import Graph

VERSION = 1
TAG = "ATTNGRAPH_TUNE "  # marks the line with the result in a tune worker's stdout


def cache_path() -> Path:
    root = os.environ.get("ATTNGRAPH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME",
                                                                          Path.home() / ".cache")) / "attngraph"
    return Path(root) / "autotune.json"


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cache_key(fingerprint: str, graph: Graph, sizes: Mapping[str, int]) -> str:
    from attngraph.ir.serialize import to_json

    signature = hashlib.sha256(to_json(graph).encode()).hexdigest()[:16]
    dtype = graph.inputs[0].type.dtype.value if graph.inputs else "?"
    bucket = ",".join(f"{k}={_bucket(v)}" for k, v in sorted(sizes.items()))
    return f"{fingerprint}|{signature}|{dtype}|{bucket}"


def load_cache() -> dict:
    path = cache_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
            raise ValueError("unexpected layout")
        return data["entries"]
    except (ValueError, OSError) as e:
        warnings.warn(f"ignoring the unreadable autotune cache {path} ({e}); it will be rewritten", stacklevel=2)
        return {}


def save_entry(key: str, entry: dict) -> None:
    entries = load_cache()
    entries[key] = entry
    atomic_write_text(cache_path(), json.dumps({"version": VERSION, "entries": entries}, indent=1))


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
    """The eligible backends fastest first, from the cache or measured now (and cached)."""
    sizes = {"batch": selection.problem.batch, "q_len": selection.problem.q_len, **sizes}
    key = cache_key(selection.hardware.fingerprint(), graph, sizes)
    entry = None if refresh else load_cache().get(key)
    if entry is None or set(entry.get("times_ms", {})) - set(selection.order):
        times = time_backends(graph, weights, sizes, selection.order, repeats=repeats)
        entry = {"times_ms": times, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if times:
            save_entry(key, entry)
    times = entry["times_ms"]
    order = sorted(times, key=times.get) + [n for n in selection.order if n not in times]
    return order, times
