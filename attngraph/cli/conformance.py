"""``attngraph conformance`` and ``attngraph check``: the conformance matrix from the command line."""

from __future__ import annotations

import argparse
import time


def configure(p: argparse.ArgumentParser) -> None:
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
    from attngraph.sysinfo import describe_machine
    from attngraph.version import __version__

    m = describe_machine()
    return {"attngraph": __version__, "cpu": m["cpu"], "cores": m["cores"],
            "targets": ", ".join(t.label for t in targets), "seconds": round(seconds, 1)}


def run(args: argparse.Namespace) -> int:
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
