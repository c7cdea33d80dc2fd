"""``python -m bench.gpu``: the first run on a GPU machine, one command, under 8 minutes on one H100: install
what it needs, run the conformance corpus on the torch backend on CUDA and on the onnx backend with onnxruntime's
CUDA provider, the prefill and decode benches against torch SDPA (flash and efficient kernels) beside the HBM
copy floor, and write one Markdown report.

    python -m bench.gpu                          # installs, then every step; bench/reports/gpu-<device>.md
    python -m bench.gpu --no-install --out r.md  # with what is installed already
    python -m bench.gpu --dry-run                # the same steps on the CPU at small sizes, no installs (CI)

Each step has a time budget (``--help`` lists them) and runs in a worker process: a step that fails, hangs past
its budget or kills its process is reported as such, and the next step runs in a fresh worker.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench.gpu_install import ROOT, TORCH_VERSION, install
from bench.gpu_steps import RESULT_TAG, STEPS, Settings
from bench.roundrobin import table

BUDGETS = {"install": 200, "environment": 15, "conformance-torch": 50, "conformance-onnx": 90, "hbm": 10,
           "prefill": 45, "decode": 45}  # seconds: 455 in all
TOTAL_S = 475  # the whole run, workers' start-up included: whatever is left then is skipped (8 minutes = 480 s)
DRY_BUDGETS = {"install": 5, "environment": 15, "conformance-torch": 20, "conformance-onnx": 20, "hbm": 5,
               "prefill": 10, "decode": 10}
DRY = {"heads": 4, "kv_heads": 2, "head_dim": 32, "seqs": [64], "batches": [1, 2], "caches": [128], "rounds": 3,
       "hbm_mib": 16, "max_cases": 6}
GRACE_S = 20  # past a step's budget before its worker is killed (the steps keep to their budgets themselves)


def parse_args(argv=None) -> argparse.Namespace:
    gpu = Settings()
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at small sizes (conformance: "
                   f"the first {DRY['max_cases']} quick cases), CPU providers, no installs")
    p.add_argument("--out", help="the report's path; None: bench/reports/gpu-<device>.md")
    p.add_argument("--no-install", action="store_true", help="skip the installs; use what is installed")
    p.add_argument("--torch-version", default=TORCH_VERSION, help="torch to install when none sees the GPU")
    p.add_argument("--torch-index", help="a pip index URL with a torch build for this driver's CUDA; None: the "
                   "package registry's own torch wheel")
    p.add_argument("--steps", default=",".join(["install", *STEPS]), help="comma-separated steps to run")
    p.add_argument("--seqs", type=int, nargs="+", default=gpu.seqs, help=f"prefill lengths (dry run: {DRY['seqs']})")
    p.add_argument("--batches", type=int, nargs="+", default=gpu.batches,
                   help=f"decode batch sizes (dry run: {DRY['batches']})")
    p.add_argument("--caches", type=int, nargs="+", default=gpu.caches,
                   help=f"decode cache lengths (dry run: {DRY['caches']})")
    p.add_argument("--dtypes", nargs="+", default=gpu.dtypes, choices=["bfloat16", "float16", "float32"],
                   help="bench dtypes")
    p.add_argument("--budgets", type=json.loads, default=BUDGETS,
                   help=f"seconds per step, as JSON, merged with these (dry run: {DRY_BUDGETS})")
    p.add_argument("--total", type=float, default=TOTAL_S, help="seconds for the whole run; steps left then are "
                   "skipped")
    args = p.parse_args(argv)
    unknown = sorted(set(args.steps.split(",")) - {"install", *STEPS})
    if unknown:
        p.error(f"unknown step(s) {unknown}; the steps are install, {', '.join(STEPS)}")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    """The workers' settings: the GPU shapes, or the dry run's small ones where the user did not give others."""
    given = {"seqs": args.seqs, "batches": args.batches, "caches": args.caches, "dtypes": args.dtypes}
    base = Settings(device="cuda", budgets={**BUDGETS, **args.budgets}, **given)
    if not args.dry_run:
        return base
    defaults = Settings()
    small = {k: v for k, v in DRY.items() if k not in given or given[k] == getattr(defaults, k)}
    budgets = {**DRY_BUDGETS, **(args.budgets if args.budgets is not BUDGETS else {})}
    return replace(base, device="cpu", dry_run=True, budgets=budgets, **small)


def run_steps(steps: list[str], settings: Settings, say, deadline: float) -> dict[str, dict]:
    """Every step in a worker, in order; a worker that hangs past a step's budget or dies is replaced. Steps
    not started by ``deadline`` (a ``time.monotonic()``) are skipped."""
    results: dict[str, dict] = {}
    pending = list(steps)
    while pending and time.monotonic() < deadline:
        results.update(_one_worker(pending, settings, say, deadline))
    for name in pending:
        results[name] = {"step": name, "status": "skipped", "seconds": 0.0, "summary": "no time left of the run"}
    return results


def _one_worker(pending: list[str], settings: Settings, say, deadline: float) -> dict[str, dict]:
    """Run ``pending`` in one worker until they are done, one fails it or ``deadline`` passes; pops what it ran."""
    spec = json.dumps({"steps": pending, "settings": asdict(settings)})
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_steps", spec], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, None, errors), daemon=True).start()
    got: dict[str, dict] = {}
    started = time.monotonic()
    while pending and started < deadline:
        name, budget = pending[0], settings.budgets.get(pending[0], 60)
        say(f"{name} (budget {budget:.0f} s) ...")
        try:
            line = lines.get(timeout=max(min(started + budget + GRACE_S, deadline) - time.monotonic(), 0.05))
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            why = (f"killed: ran past its {budget:.0f} s budget (+{GRACE_S} s)" if time.monotonic() < deadline
                   else "killed: the run's time was up")
            got[pending.pop(0)] = _failed(name, time.monotonic() - started, why, errors)
            say(f"  {why}")
            break
        if line is None:
            code = proc.wait()
            got[pending.pop(0)] = _failed(name, time.monotonic() - started, f"the worker died (exit code {code})",
                                          errors)
            say(f"  the worker died (exit code {code})")
            break
        data = json.loads(line[len(RESULT_TAG):])
        got[data["step"]] = data
        pending.remove(data["step"])
        say(f"  {data['status']} in {data['seconds']:.1f} s: {data['summary'][:150]}")
        started = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return got


def _pump(stream, lines: queue.Queue | None, keep: list[str] | None = None) -> None:
    """Copy the worker's result lines into ``lines`` (None at its end), or keep the last stderr lines."""
    for line in stream:
        if lines is not None and line.startswith(RESULT_TAG):
            lines.put(line.strip())
        elif keep is not None:
            keep.append(line.rstrip())
            del keep[:-8]
    if lines is not None:
        lines.put(None)


def _failed(name: str, seconds: float, why: str, errors: list[str]) -> dict:
    tail = "\n".join(errors[-8:])
    return {"step": name, "status": "failed", "seconds": seconds, "summary": why,
            "markdown": f"{why}; the worker's last stderr lines:\n\n```\n{tail}\n```" if tail else why}


def report(results: dict[str, dict], steps: list[str], settings: Settings, argv: list[str], wall_s: float) -> str:
    """One Markdown report: the steps' table, then each step's section."""
    env = results.get("environment", {})
    title = env.get("summary", "") if env.get("status") == "ok" else settings.device
    total = sum(settings.budgets.get(s, 0) for s in steps)
    lines = [f"# attngraph GPU check: {title}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, `python -m bench.gpu {' '.join(argv)}`: {wall_s:.0f} s wall "
             f"(the steps' budgets add up to {total:.0f} s)." + (" **Dry run**: the CPU, small sizes, no installs."
                                                                  if settings.dry_run else ""), ""]
    rows = [[s, results[s]["status"], f"{results[s]['seconds']:.1f}", f"{settings.budgets.get(s, 0):.0f}",
             results[s]["summary"].replace("|", "/")] for s in steps]
    lines += [table(["step", "status", "seconds", "budget s", "summary"], rows), ""]
    for s in steps:
        lines += [f"## {s}", "", results[s].get("markdown") or results[s]["summary"], ""]
    return "\n".join(lines)


def default_out(results: dict[str, dict], settings: Settings) -> Path:
    env = results.get("environment", {})
    name = env["summary"].split(",")[0] if env.get("status") == "ok" and not settings.dry_run else settings.device
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ("-dry-run" if settings.dry_run else "")
    return ROOT / "bench" / "reports" / f"gpu-{slug}.md"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings = settings_of(args)
    steps = [s for s in ["install", *STEPS] if s in args.steps.split(",")]
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:5.0f} s] {text}", file=sys.stderr, flush=True)

    results = {}
    if "install" in steps:
        say(f"install (budget {settings.budgets['install']:.0f} s) ...")
        t0 = time.monotonic()
        if args.no_install:
            status, summary, text = "skipped", "--no-install: what is installed is used", ""
        else:  # a dry run lists the commands it would run
            status, summary, text = install(settings.budgets["install"], args.torch_version, args.torch_index,
                                            dry_run=args.dry_run)
        results["install"] = {"status": status, "seconds": time.monotonic() - t0, "summary": summary,
                              "markdown": text}
        say(f"  {status}: {summary[:150]}")
    results.update(run_steps([s for s in steps if s != "install"], settings, say, start + args.total))
    out = Path(args.out) if args.out else default_out(results, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, steps, settings, argv, time.monotonic() - start))
    say(f"wrote {out}")
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
