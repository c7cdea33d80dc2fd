"""``python -m bench``: time every installed implementation on every case, beside the peers.

    python -m bench --quick                 # tiny shapes, about a minute
    python -m bench                         # d_model 512, 8 heads, B 1/8, T 128..4096, full and causal
    python -m bench --json out.json --out bench/results --device cuda
    python -m bench --impls attngraph-numba,torch-sdpa --batches 1 --seqs 32768 --masks causal   # memory
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.cases import DEFAULT, QUICK, BenchCase, grid
from bench.impls import EXPORTERS, all_impls, export_key
from bench.runner import run_worker


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="tiny shapes: a one-minute smoke run")
    p.add_argument("--impls", default="default", help="'default' (the peers and each attngraph backend), 'all', "
                   "or comma-separated name patterns, e.g. 'ort-*,attngraph-onnx-*'")
    p.add_argument("--seqs", type=int, nargs="*", help="override the sequence lengths")
    p.add_argument("--batches", type=int, nargs="*", help="override the batch sizes")
    p.add_argument("--masks", nargs="*", choices=["full", "causal"], help="only these masks (default: both)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch and onnxruntime peers)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (at most)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=15.0, help="seconds of timed calls per measurement")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="skip or kill a worker whose RSS passes this")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a worker running longer than this")
    p.add_argument("--out", default="bench/results", help="folder for bench.json, bench.md and the plots")
    p.add_argument("--json", help="also write the raw figures to this path")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def select_cases(args) -> list[BenchCase]:
    """The default (or quick) grid, with the sequence lengths, batches and masks the user overrides."""
    base = QUICK if args.quick else DEFAULT
    first = base[0]
    seqs = args.seqs or sorted({c.seq for c in base})
    batches = args.batches or sorted({c.batch for c in base})
    causals = tuple(m == "causal" for m in args.masks) if args.masks else (False, True)
    return grid([first.d_model], [first.heads], batches, seqs, causals, (first.dtype,), first.kv_heads)


def select_impls(pattern: str):
    if pattern == "default":
        return [i for i in all_impls().values() if i.default]
    pats = ["*"] if pattern == "all" else [p.strip() for p in pattern.split(",") if p.strip()]
    return [i for n, i in all_impls().items() if any(fnmatch.fnmatch(n, p) for p in pats)]


def _missing(impl) -> list[str]:
    return [m for m in impl.needs if importlib.util.find_spec(m) is None]


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from attngraph.sysinfo import describe_machine

    cases, impls = select_cases(args), select_impls(args.impls)
    limit = int(args.max_rss_gib * 2**30)
    workdir = Path(tempfile.mkdtemp(prefix="attngraph-bench-"))
    ceilings_todo = ["gemm-numpy", "gemm-torch", "gemm-onnxruntime", "copy"]
    kinds = sorted({EXPORTERS[i.name] for i in impls if i.name in EXPORTERS})
    exports = sorted({export_key(c, k): (c, k) for c in cases for k in kinds
                      if not (k == "mha" and c.kv_heads != c.heads)}.items())
    bar = _progress(len(ceilings_todo) + len(exports) + len(cases) * len(impls))
    started = time.time()

    def step(desc: str) -> None:
        if bar is not None:
            bar.set_description(desc[:60])

    def done() -> None:
        if bar is not None:
            bar.update(1)

    ceilings = {}
    for what in ceilings_todo:
        step(f"ceiling {what}")
        ceilings[what] = run_worker({"mode": "ceiling", "what": what}, max_rss_bytes=limit, timeout_s=300)
        done()
    export_results = {}
    for key, (case, kind) in exports:
        step(f"export {key}")
        export_results[key] = run_worker({"mode": "export", "case": case.to_dict(), "kind": kind,
                                          "path": str(workdir / "exports" / f"{key}.onnx")},
                                         max_rss_bytes=limit, timeout_s=600)
        done()
    results = []
    for ci, case in enumerate(cases):
        step(f"reference {case.key}")
        ref_path = workdir / f"ref{ci}.npy"
        made = run_worker({"mode": "reference", "case": case.to_dict(), "seed": args.seed, "path": str(ref_path)},
                          max_rss_bytes=limit, timeout_s=args.timeout)
        if made.get("status") != "ok":
            raise SystemExit(f"the float64 reference for {case.key} failed: {made.get('reason')}")
        for impl in impls:
            step(f"{impl.name} {case.key}")
            row = {"case": case.to_dict(), "case_key": case.key, "impl": impl.name, "family": impl.family,
                   "flops": case.flops(impl.skips_masked), "skips_masked": impl.skips_masked}
            why = impl.supports(case) or (f"needs {', '.join(_missing(impl))}" if _missing(impl) else None)
            need = impl.score_copies * case.batch * case.heads * case.seq**2 * 4
            if why is None and need > limit:
                why = f"would hold ~{need / 2**30:.0f} GiB of scores (limit {args.max_rss_gib:.0f} GiB)"
            exported = export_results.get(export_key(case, EXPORTERS.get(impl.name, "")), {})
            if why is None and impl.name in EXPORTERS and exported.get("status") != "ok":
                why = "torch.onnx.export failed: " + exported.get("reason", "?")
            if why:
                row.update(status="skipped", reason=why)
            else:
                spec = {"mode": "case", "case": case.to_dict(), "impl": impl.name, "seed": args.seed,
                        "device": args.device, "workdir": str(workdir), "ref_path": str(ref_path),
                        "repeats": args.repeats, "min_repeats": args.min_repeats, "budget_s": args.budget}
                row.update(run_worker(spec, max_rss_bytes=limit, timeout_s=args.timeout))
            results.append(row)
            done()
        ref_path.unlink()
    if bar is not None:
        bar.close()
    data = report.assemble(describe_machine(), ceilings, export_results, results, args, time.time() - started)
    out = Path(args.out)
    files = report.write_all(data, out, extra_json=args.json)
    print(report.terminal_table(data))
    print("\nwrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
