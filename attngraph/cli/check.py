"""``attngraph check``: the newcomer's first command: the backend choice for this machine, the quick
conformance corpus on every installed backend, and an ONNX export rerun by onnxruntime."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# what a backend does on its first call in a fresh environment, said while it happens (not a hang)
FIRST_RUN = {"numba": "compiling kernels on first run, ~30-60 s; cached after that"}


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import positive_int

    p.add_argument("--d-model", type=positive_int, default=256, help="model width of the checked graph")
    p.add_argument("--heads", type=positive_int, default=8, help="number of heads of the checked graph")
    p.add_argument("--onnx", help="where to write the exported model (default: a temporary file)")
    p.add_argument("--html", help="also write the conformance HTML report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """The newcomer's first command: choice of backend, quick conformance, ONNX export verified."""
    from attngraph.conformance import (
        all_cases,
        evaluate,
        installed_backends,
        run_conformance,
        select_cases,
        targets_for,
    )
    from attngraph.conformance.budgets import BUDGETS, compare
    from attngraph.conformance.report import counts_line, terminal, write
    from attngraph.frontends.constructors import causal_self_attention
    from attngraph.lowering.compile import compile as compile_graph
    from attngraph.lowering.export import export_onnx
    from attngraph.lowering.weights import Weights
    from attngraph.selection import select_backend
    from attngraph.testing.random_inputs import random_inputs

    start = time.perf_counter()
    graph = causal_self_attention(args.d_model, args.heads)
    print(f"graph: causal self-attention, d_model {args.d_model}, {args.heads} heads (float32)")
    sizes = {"batch": 2, "q_len": 512}
    choice = select_backend(graph, sizes=sizes)
    print(choice.explain())
    backends = installed_backends()
    warm_up(backends)
    print(f"\nquick conformance on {', '.join(backends)}:")
    results = run_conformance(select_cases(all_cases(include_onnx=False), quick=True), targets_for(backends),
                              progress=not args.no_progress)
    print(terminal(results))
    if args.html:
        write(results, html_path=args.html)
    failed = any(r.status == "failed" for r in results)
    if "onnx" in backends:
        weights = Weights.random(graph, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(args.onnx or Path(tmp) / "causal_mha.onnx")
            export_onnx(graph, path, weights=weights)
            x = random_inputs(graph, {"batch": 2, "q_len": 33}, seed=1)
            got = compile_graph(str(path), "onnx")(x)["y"]
            verdict = compare(got, evaluate(graph, weights, x)["y"], BUDGETS["float32"])
            print(f"\nONNX export: {path if args.onnx else path.name} ({path.stat().st_size / 1024:.0f} KiB), "
                  f"rerun by onnxruntime: {'ok' if verdict.ok else 'FAILED'} ({verdict.detail})")
            failed |= not verdict.ok
    else:
        print("\nONNX export: skipped (pip install 'attngraph[onnx]')")
    print(f"\nattngraph check: {'FAILED' if failed else 'all good'} in {time.perf_counter() - start:.0f} s")
    print(counts_line(results))
    return 1 if failed else 0


def warm_up(backends: list[str], stream=None) -> None:
    """Compile and run tiny graphs on each backend, one line each on stderr ("preparing numba ... done in
    41 s"): numba compiles its kernels on first use, about a minute in a fresh environment with no output,
    which would otherwise look like a hang. A backend that fails here is reported by the conformance run."""
    from attngraph.frontends.constructors import causal_self_attention, self_attention
    from attngraph.lowering.compile import compile as compile_graph
    from attngraph.lowering.weights import Weights
    from attngraph.testing.random_inputs import random_inputs

    stream = stream or sys.stderr
    # numba compiles one kernel per argument layout: no mask, a bool mask (an empty batch's is contiguous),
    # an additive mask, float64: what the quick corpus meets, so the conformance run compiles nothing more
    boolean = self_attention(8, 2, mask="bool")
    runs = [(causal_self_attention(8, 2), 1), (boolean, 1), (boolean, 0), (self_attention(8, 2, mask="additive"), 1),
            (causal_self_attention(8, 2, dtype="float64"), 1)]
    for name in backends:
        note = f" ({FIRST_RUN[name]})" if name in FIRST_RUN else ""
        print(f"preparing {name}{note} ...", end="", file=stream, flush=True)
        start = time.perf_counter()
        try:
            for graph, batch in runs:
                run_graph = compile_graph(graph, name, weights=Weights.random(graph, seed=0))
                run_graph(random_inputs(graph, {"batch": batch, "q_len": 3}))
        except Exception as e:  # noqa: BLE001 - the conformance run reports this backend's failures case by case
            print(f" failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", file=stream)
            continue
        print(f" done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
