"""The steps of ``python -m bench.gpu``, run in a worker process (``python -m bench.gpu_steps SPEC``) so that a
step that hangs or crashes the process can be killed and reported while the others go on.

Each step returns a ``StepResult`` (status, one-line summary, Markdown section) and keeps to its time budget
itself where it can (the conformance steps stop between cases, the benches between shapes and rounds); the worker
prints each result as one JSON line after ``RESULT_TAG`` as soon as the step ends. Only the standard library is
imported at the top: ``bench.gpu`` reads this module before anything is installed.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

import bench.roundrobin  # noqa: F401 - sets OMP_WAIT_POLICY before torch loads

RESULT_TAG = "@@gpu-step@@"


@dataclass
class Settings:
    """What every step reads: the device, the dry-run switch, each step's budget and the bench shapes."""

    device: str = "cuda"
    dry_run: bool = False
    budgets: dict[str, float] = field(default_factory=dict)
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    seqs: list[int] = field(default_factory=lambda: [1024, 4096, 8192])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    caches: list[int] = field(default_factory=lambda: [4096, 16384])
    dtypes: list[str] = field(default_factory=lambda: ["bfloat16", "float32"])
    rounds: int = 9
    hbm_mib: int = 2048
    max_cases: int | None = None   # the first N cases of the corpus only (a dry run's small size)


@dataclass
class StepResult:
    status: str       # ok | partial (the budget ran out first) | failed | skipped
    summary: str
    markdown: str = ""


def environment(s: Settings) -> StepResult:
    """Versions, the device, and onnxruntime's providers."""
    import torch

    from attngraph.sysinfo import describe_machine

    m = describe_machine()
    rows = [("python", m["python"]), ("CPU", f"{m['cpu']}, {m['cores']} cores"),
            ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda})"), ("onnxruntime", _onnxruntime())]
    rows += [(k, v) for k, v in m["packages"].items() if v and k not in ("torch", "onnxruntime")]
    if s.device.startswith("cuda"):
        if not torch.cuda.is_available():
            return StepResult("failed", f"torch {torch.__version__} sees no CUDA device (CUDA build "
                                        f"{torch.version.cuda}); every CUDA step will fail", _kv_table(rows))
        props = torch.cuda.get_device_properties(0)
        rows.insert(0, ("device", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                                  f"{props.major}.{props.minor}"))
    summary = rows[0][1] if s.device.startswith("cuda") else "CPU (dry run)"
    return StepResult("ok", summary, _kv_table(rows))


def _onnxruntime() -> str:
    try:
        import onnxruntime as ort
    except ImportError as e:  # the onnx conformance step then says so too
        return f"not importable: {e}"
    return f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"


def _kv_table(rows) -> str:
    from bench.roundrobin import table

    return table(["what", "version / value"], [[k, str(v)] for k, v in rows])


def conformance_torch(s: Settings) -> StepResult:
    from attngraph.conformance import Target

    return _conformance([Target("torch", {"device": s.device})], [f"torch on {s.device}"], s,
                        s.budgets.get("conformance-torch", 60))


def conformance_onnx(s: Settings) -> StepResult:
    import onnxruntime as ort

    from attngraph.conformance import Target

    cuda = s.device.startswith("cuda")
    if cuda and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # onnxruntime-gpu finds the CUDA and cuDNN libraries that the torch wheel brought
        except Exception as e:  # noqa: BLE001 - then the provider check below says what is missing
            print(f"onnxruntime.preload_dlls: {e}", file=sys.stderr)
    have = ort.get_available_providers()
    if cuda and "CUDAExecutionProvider" not in have:
        return StepResult("skipped", f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has "
                                     f"{', '.join(have)}): onnxruntime-gpu is not installed")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    styles = ("attention", "decomposed")
    result = _conformance([Target("onnx", {"style": st, "providers": providers}) for st in styles],
                          [f"onnx:{st} on {providers[0]}" for st in styles], s, s.budgets.get("conformance-onnx", 90))
    if cuda:  # which nodes onnxruntime leaves to the CPU provider, silently, in a mixed session
        from bench.roundrobin import table

        coverage = [[st, what, _runs_on(st, graph)] for st in styles for what, graph in _probe_graphs()]
        result.markdown += ("\n\nWhere each export style runs (a CUDA-only session, no CPU fallback allowed):\n\n"
                            + table(["style", "graph", "on CUDAExecutionProvider"], coverage))
    return result


def _probe_graphs():
    import attngraph as ag

    return [("causal GQA layer", ag.causal_self_attention(64, 4, num_kv_heads=2)),
            ("static-cache step", ag.causal_self_attention(64, 4, num_kv_heads=2, kv_cache="static", max_len=64))]


def _runs_on(style: str, graph) -> str:
    import onnxruntime as ort

    import attngraph as ag
    from attngraph.lowering.registry import get_backend

    model = get_backend("onnx").to_model(graph, ag.Weights.random(graph, seed=0), style=style)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])
        return "every node"
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        return "some nodes fall back to the CPU: " + str(e).splitlines()[0][:140].replace("|", "/")


def _conformance(targets, labels, s: Settings, budget_s: float) -> StepResult:
    """The corpus (the quick cases in a dry run) on ``targets``, case by case until ``budget_s`` is spent."""
    import numpy as np

    from attngraph.conformance import all_cases, run_case, select_cases
    from bench.roundrobin import table

    cases = select_cases(all_cases(), quick=s.dry_run)[:s.max_cases]
    deadline, results, done = time.monotonic() + budget_s, [], 0
    for case in cases:
        if time.monotonic() > deadline:
            break
        with np.errstate(all="ignore"):
            results += run_case(case, targets)
        done += 1
    names = dict(zip((t.label for t in targets), labels, strict=True))
    counts = {label: {"passed": 0, "failed": 0, "skipped": 0} for label in labels}
    for r in results:
        counts[names[r.target]][r.status] += 1
    failed = [r for r in results if r.status == "failed"]
    rows = [[label, *(str(c[k]) for k in ("passed", "failed", "skipped"))] for label, c in counts.items()]
    text = table(["target", "passed", "failed", "skipped"], rows)
    if failed:
        text += "\n\nFailures (first 40):\n\n" + table(
            ["case", "target", "detail"], [[r.case, names[r.target], r.detail[:160].replace("|", "/")]
                                           for r in failed[:40]])
    cut = f"; stopped at the {budget_s:.0f} s budget after {done} of {len(cases)} cases" if done < len(cases) else ""
    summary = "; ".join(f"{label}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
                        for label, c in counts.items()) + cut
    status = "failed" if failed else "partial" if cut else "ok"
    return StepResult(status, summary, f"{len(cases)} cases{cut}.\n\n{text}")


def hbm(s: Settings) -> StepResult:
    """A device-to-device copy of ``hbm_mib`` MiB: the memory bandwidth every decode row is held against."""
    import torch

    from bench.gpu_contenders import waiting
    from bench.roundrobin import round_robin

    device = torch.device(s.device)
    src = torch.empty(s.hbm_mib << 20, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    timing = round_robin({"copy": waiting(lambda: dst.copy_(src), device)}, rounds=s.rounds, warmup=2,
                         budget_s=s.budgets.get("hbm", 15) / 2)["copy"]
    rate = 2 * src.numel() / (timing.median_ms / 1e3) / 1e9
    line = (f"device-to-device copy of {s.hbm_mib} MiB: {timing.median_ms:.3f} ms median ({timing.spread} ms), "
            f"{rate:.0f} GB/s (bytes read + written)")
    return StepResult("ok", f"{rate:.0f} GB/s", line)


def prefill(s: Settings) -> StepResult:
    from bench.gpu_bench import prefill_tables

    return StepResult(*prefill_tables(s))


def decode(s: Settings) -> StepResult:
    from bench.gpu_bench import decode_tables

    return StepResult(*decode_tables(s))


STEPS = {"environment": environment, "conformance-torch": conformance_torch, "conformance-onnx": conformance_onnx,
         "hbm": hbm, "prefill": prefill, "decode": decode}


def main(argv=None) -> int:
    """``python -m bench.gpu_steps '{"steps": [...], "settings": {...}}'``: run the steps in order."""
    spec = json.loads((argv or sys.argv[1:])[0])
    settings = Settings(**spec["settings"])
    for name in spec["steps"]:
        start = time.perf_counter()
        try:
            result = STEPS[name](settings)
        except Exception as e:  # noqa: BLE001 - one step's failure is reported; the next step still runs
            tail = "".join(traceback.format_exception(e)[-6:])
            result = StepResult("failed", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                                f"```\n{tail}\n```")
        print(RESULT_TAG + json.dumps({"step": name, "seconds": time.perf_counter() - start, **asdict(result)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
