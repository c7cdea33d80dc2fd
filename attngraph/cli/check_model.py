"""``attngraph check-model``: every attention layer of an ONNX model, on every backend, on the model's own values.

    attngraph check-model model.onnx                      # one row per layer; exit 1 when one fails
    attngraph check-model model.onnx --html report.html   # the same rows as the conformance HTML report
    attngraph check-model genai.onnx --size past=5 --size seq=1 --backends numba,onnx   # a decode step

Discovery lifts each attention layer (``attngraph inspect`` lists them); onnxruntime runs the model once on seeded
inputs and a copy of it returns each layer's inputs and outputs; each lifted layer runs on every backend against
the float64 reference, and onnxruntime's own value at the layer is held to the same reference. A row passes when
all are within the budget of the layer's dtype. Parts discovery did not lift are listed after the table and fail
the check unless ``--allow-unlifted``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    from attngraph.cli.graph_args import name_list, nonnegative_int
    from attngraph.cli.optimize import _size_arg
    from attngraph.lowering.registry import available_backends

    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to check (external data beside it)")
    p.add_argument("--backends", type=name_list(available_backends, "backend(s)"),
                   help="comma-separated backends (default: every installed one; see `attngraph info`)")
    p.add_argument("--size", type=_size_arg, action="append", default=[], metavar="DIM=N",
                   help="size of a symbolic dim of the random inputs (repeatable; default batch 2, past 3, others 6; "
                        "a GroupQueryAttention model runs a prompt, past 0)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random inputs")
    p.add_argument("--allow-unlifted", action="store_true",
                   help="pass even when discovery left parts of the model's attention unlifted")
    p.add_argument("--html", metavar="PATH", help="also write the rows as a self-contained HTML report")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from attngraph.conformance.model_check import check_model
    from attngraph.conformance.report import write

    def progress(msg: str) -> None:
        if not args.no_progress:
            print(f"attngraph check-model: {msg}", file=sys.stderr, flush=True)

    report = check_model(args.model, backends=args.backends, sizes=dict(args.size), seed=args.seed,
                         progress=progress)
    inputs = ", ".join(f"{k}{list(v)}" for k, v in report.feeds.items())
    print(f"{report.source}: {len(report.rows)} attention layer(s) checked on {inputs}")
    if report.rows:
        print(report.table())
        print("cells: max |error| against the float64 reference (! past the budget of the layer's dtype); "
              f"{report.targets[-1]}: the model's own value at the layer")
    for r in report.rows:
        for target, (err, ratio, detail) in r.cells.items():
            if err is None or ratio is None or ratio > 1.0:
                print(f"  #{r.index} on {target}: {detail}")
    if report.unlifted:
        print("not lifted:")
        for u in report.unlifted:
            print(f"  {', '.join(u.nodes[:3])}{' ...' if len(u.nodes) > 3 else ''}: {u.reason}")
    meta = {"model": report.source, "inputs": inputs, "seconds": round(report.seconds, 1),
            "not lifted": len(report.unlifted)}
    for path in write(report.results(), json_path=args.json, html_path=args.html, meta=meta):
        print(f"wrote {path}")
    ok = report.passed and (args.allow_unlifted or not report.unlifted)
    verdict = "passed" if ok else ("failed" if report.rows else "failed: no attention layer was lifted")
    print(f"{sum(r.passed for r in report.rows)} of {len(report.rows)} layer(s) passed; {verdict} "
          f"({report.seconds:.1f} s)")
    return 0 if ok else 1
