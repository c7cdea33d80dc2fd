"""One measurement in its own process: ``python -m bench.worker '<json spec>'``.

Modes: ``case`` (time one implementation on one case), ``ceiling`` (GEMM GFLOP/s or copy
bandwidth of one library), ``export`` (torch.onnx.export of the SDPA module for a case).
The result is printed as one JSON line after ``RESULT_TAG``.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

RESULT_TAG = "@@bench-result@@"


def _maxrss_mib() -> float:
    """This process's peak RSS. VmHWM resets at exec; ru_maxrss would carry the parent's peak over."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(spec: dict) -> dict:
    from bench.cases import BenchCase
    from bench.impls import all_impls
    from bench.workload import errors, make_input, make_weights

    case, impl = BenchCase(**spec["case"]), all_impls()[spec["impl"]]
    weights, x = make_weights(case, spec["seed"]), make_input(case, spec["seed"])
    base = _maxrss_mib()
    t0 = time.perf_counter()
    run, fetch = impl.setup(case, weights, x, spec["device"], spec["workdir"])
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run()
    first_s = time.perf_counter() - t0
    times: list[float] = []
    deadline = time.perf_counter() + spec["budget_s"]
    least = spec["min_repeats"] if first_s < 5.0 else min(2, spec["min_repeats"])  # slow calls: 2 are enough
    while len(times) < spec["repeats"] and (len(times) < least or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    peak = _maxrss_mib()
    got = fetch(out)
    return {"status": "ok", "note": getattr(run, "note", ""), "setup_s": setup_s, "first_call_s": first_s,
            "times_s": times,
            "median_s": float(np.median(times)), "base_rss_mib": base, "peak_rss_mib": peak,
            **errors(got, np.load(spec["ref_path"]))}


def _best_time(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_ceiling(spec: dict) -> dict:
    n, what = spec.get("n", 2048), spec["what"]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    if what == "copy":
        src = np.ones(64 << 20, np.float32)  # 256 MiB
        dst = np.empty_like(src)
        return {"GB/s": 2 * src.nbytes / _best_time(lambda: np.copyto(dst, src)) / 1e9}
    if what == "gemm-numpy":
        t = _best_time(lambda: a @ b)
    elif what == "gemm-torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t = _best_time(lambda: torch.mm(ta, tb))
    elif what == "gemm-onnxruntime":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info(i, TensorProto.FLOAT, [n, n]) for i in "ab"],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 rejects
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        t = _best_time(lambda: sess.run(None, {"a": a, "b": b}))
    else:
        raise ValueError(f"unknown ceiling {what!r}")
    return {"GFLOP/s": 2 * n**3 / t / 1e9}


def run_export(spec: dict) -> dict:
    import warnings
    from pathlib import Path

    from bench.cases import BenchCase
    from bench.export_torch import export_module

    warnings.filterwarnings("ignore")
    case = BenchCase(**spec["case"])
    t0 = time.perf_counter()
    export_module(case, Path(spec["path"]), spec.get("kind", "sdpa"))
    return {"status": "ok", "export_s": time.perf_counter() - t0}


def run_reference(spec: dict) -> dict:
    """The float64 reference for a case, saved as .npy (kept out of the parent to keep it small)."""
    from bench.cases import BenchCase
    from bench.workload import reference

    t0 = time.perf_counter()
    np.save(spec["path"], reference(BenchCase(**spec["case"]), spec["seed"]))
    return {"status": "ok", "seconds": time.perf_counter() - t0}


MODES = {"case": run_case, "ceiling": run_ceiling, "export": run_export, "reference": run_reference}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = MODES[spec["mode"]](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
