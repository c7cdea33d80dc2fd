"""``attngraph conformance`` and ``attngraph check``: the conformance matrix from the command line."""

from __future__ import annotations

import argparse
import time

ONNX_STYLES = ("attention", "contrib", "decomposed")  # what the conformance runner can export per case


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import FLOAT_DTYPES, name_list
    from attngraph.lowering.registry import available_backends
    from attngraph.passes import PIPELINES

    # names are checked while parsing: a typo is a usage error listing the known names, not a run of failures
    p.add_argument("--backends", type=name_list(available_backends, "backend(s)"),
                   help="comma-separated backends (default: every installed one; known: see `attngraph info`)")
    p.add_argument("--cases", help="case name pattern(s), comma-separated, e.g. 'causal*,onnx/*'")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="only cases of this dtype")
    p.add_argument("--quick", action="store_true", help="only the quick cases (what `attngraph check` runs)")
    p.add_argument("--pipelines", default="O1", type=name_list(lambda: PIPELINES, "pipeline(s)"),
                   help=f"comma-separated pass pipelines, of {', '.join(sorted(PIPELINES))}")
    p.add_argument("--styles", default="attention,decomposed", type=name_list(lambda: ONNX_STYLES, "style(s)"),
                   help=f"comma-separated ONNX export styles, of {', '.join(ONNX_STYLES)}")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--markdown", help="write the matrix as Markdown")
    p.add_argument("--html", help="write a self-contained HTML report with a heatmap")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(args):
    from attngraph.conformance import installed_backends, targets_for

    return targets_for(args.backends or installed_backends(), args.pipelines, args.styles)


def _meta(targets, seconds: float) -> dict:
    from attngraph.sysinfo import describe_machine
    from attngraph.version import __version__

    m = describe_machine()
    return {"attngraph": __version__, "cpu": m["cpu"], "cores": m["cores"],
            "targets": ", ".join(t.label for t in targets), "seconds": round(seconds, 1)}


def run(args: argparse.Namespace) -> int:
    from attngraph.conformance import all_cases, run_conformance, select_cases
    from attngraph.conformance.report import terminal, write
    from attngraph.errors import ConfigError

    cases = select_cases(all_cases(), args.cases, args.dtype, args.quick)
    if not cases:  # a usage error: main prints it as one line on stderr and exits 2
        raise ConfigError(f"no case matches --cases {args.cases!r} --dtype {args.dtype}; "
                          "`attngraph conformance --no-progress --json F` lists every case name")
    targets = _targets(args)
    start = time.perf_counter()
    results = run_conformance(cases, targets, progress=not args.no_progress)
    meta = _meta(targets, time.perf_counter() - start)
    for path in write(results, json_path=args.json, markdown_path=args.markdown, html_path=args.html, meta=meta):
        print(f"wrote {path}")
    print(terminal(results))
    return 1 if any(r.status == "failed" for r in results) else 0
