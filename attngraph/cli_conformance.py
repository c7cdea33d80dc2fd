"""``attngraph conformance`` and ``attngraph check``: the conformance matrix from the command line."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def conformance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", help="comma-separated backends (default: every installed one)")
    p.add_argument("--cases", help="case name pattern(s), comma-separated, e.g. 'causal*,onnx/*'")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32", "float64"], help="only cases of this dtype")
    p.add_argument("--quick", action="store_true", help="only the quick cases (what `attngraph check` runs)")
    p.add_argument("--pipelines", default="O1", help="comma-separated pass pipelines (O0, O1)")
    p.add_argument("--styles", default="attention,decomposed", help="ONNX export styles to run")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--markdown", help="write the matrix as Markdown")
    p.add_argument("--html", help="write a self-contained HTML report with a heatmap")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(args):
    from attngraph.conformance import installed_backends, targets_for

    backends = [b.strip() for b in args.backends.split(",")] if args.backends else installed_backends()
    return targets_for(backends, [p.strip() for p in args.pipelines.split(",")],
                       [s.strip() for s in args.styles.split(",")])


def _meta(targets, seconds: float) -> dict:
    import attngraph
    from attngraph.sysinfo import describe_machine

    m = describe_machine()
    return {"attngraph": attngraph.__version__, "cpu": m["cpu"], "cores": m["cores"],
            "targets": ", ".join(t.label for t in targets), "seconds": round(seconds, 1)}


def conformance(args: argparse.Namespace) -> int:
    from attngraph.conformance import all_cases, run_conformance, select_cases
    from attngraph.conformance.report import terminal, write

    cases = select_cases(all_cases(), args.cases, args.dtype, args.quick)
    if not cases:
        print(f"no case matches --cases {args.cases!r} --dtype {args.dtype}")
        return 2
    targets = _targets(args)
    start = time.perf_counter()
    results = run_conformance(cases, targets, progress=not args.no_progress)
    meta = _meta(targets, time.perf_counter() - start)
    for path in write(results, json_path=args.json, markdown_path=args.markdown, html_path=args.html, meta=meta):
        print(f"wrote {path}")
    print(terminal(results))
    return 1 if any(r.status == "failed" for r in results) else 0


def check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--onnx", help="where to write the exported model (default: a temporary file)")
    p.add_argument("--html", help="also write the conformance HTML report")
    p.add_argument("--no-progress", action="store_true")


def check(args: argparse.Namespace) -> int:
    """The newcomer's first command: choice of backend, quick conformance, ONNX export verified."""
    import attngraph as ag
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
    from attngraph.random_inputs import random_inputs

    start = time.perf_counter()
    graph = ag.causal_self_attention(args.d_model, args.heads)
    print(f"graph: causal self-attention, d_model {args.d_model}, {args.heads} heads (float32)")
    sizes = {"batch": 2, "q_len": 512}
    choice = ag.select_backend(graph, sizes=sizes)
    print(choice.explain())
    backends = installed_backends()
    print(f"\nquick conformance on {', '.join(backends)}:")
    results = run_conformance(select_cases(all_cases(include_onnx=False), quick=True), targets_for(backends),
                              progress=not args.no_progress)
    print(terminal(results))
    if args.html:
        write(results, html_path=args.html)
    failed = any(r.status == "failed" for r in results)
    if "onnx" in backends:
        weights = ag.Weights.random(graph, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(args.onnx or Path(tmp) / "causal_mha.onnx")
            ag.export_onnx(graph, path, weights=weights)
            x = random_inputs(graph, {"batch": 2, "q_len": 33}, seed=1)
            got = ag.compile(str(path), "onnx")(x)["y"]
            verdict = compare(got, evaluate(graph, weights, x)["y"], BUDGETS["float32"])
            print(f"\nONNX export: {path if args.onnx else path.name} ({path.stat().st_size / 1024:.0f} KiB), "
                  f"rerun by onnxruntime: {'ok' if verdict.ok else 'FAILED'} ({verdict.detail})")
            failed |= not verdict.ok
    else:
        print("\nONNX export: skipped (pip install 'attngraph[onnx]')")
    print(f"\nattngraph check: {'FAILED' if failed else 'all good'} in {time.perf_counter() - start:.0f} s")
    print(counts_line(results))
    return 1 if failed else 0
