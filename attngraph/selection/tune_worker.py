"""``python -m attngraph.selection.tune_worker DIR BACKEND``: time one backend in a fresh process.

Autotune measures each backend in its own process: a runtime loaded earlier in the same process
(OpenBLAS threads spinning after a NumPy call, torch's or onnxruntime's pools) slows the next one
by up to 1.6x on a 2-core machine, which would make the measurement, not the backend, decide.
DIR holds ``graph.json``, ``weights.npz`` and ``spec.json`` (sizes, repeats, seed).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from attngraph.selection.autotune import TAG


def main(folder: str, backend: str) -> None:
    import numpy as np

    from attngraph.ir.serialize import load_graph
    from attngraph.lowering.compile import compile as compile_graph
    from attngraph.lowering.weights import Weights
    from attngraph.testing.random_inputs import random_inputs

    d = Path(folder)
    spec = json.loads((d / "spec.json").read_text(encoding="utf-8"))
    graph = load_graph(d / "graph.json")
    weights = Weights.load(d / "weights.npz")
    inputs = random_inputs(graph, spec["sizes"], seed=spec["seed"])
    run = compile_graph(graph, backend, weights=weights)
    run(inputs)  # first call: JIT, session, warm caches
    t0 = time.perf_counter()
    run(inputs)
    once = time.perf_counter() - t0
    # short calls are noisy: take more of them, about 0.5 s worth (at least ``repeats``, at most 100)
    count = max(spec["repeats"], min(100, int(0.5 / max(once, 1e-6))))
    samples = [once]
    for _ in range(count - 1):
        t0 = time.perf_counter()
        run(inputs)
        samples.append(time.perf_counter() - t0)
        if samples[-1] * 1e3 > spec.get("cutoff_ms", float("inf")):
            break  # already far slower than the best so far: one sample says enough
    print(TAG + json.dumps({"ms": float(np.median(samples) * 1e3)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
