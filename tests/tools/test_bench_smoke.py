"""The benchmark harness in --quick mode on tiny shapes: JSON structure, and a time and an error
figure from every installed implementation. (Timings themselves are never asserted.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quick_report(tmp_path, module: str, *args: str) -> str:
    """Run ``python -m module *args --out REPORT`` from the repository root; its Markdown report."""
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out.read_text()


def test_quick_bench_produces_every_figure(tmp_path):
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "bench", "--quick", "--impls", "all", "--seqs", "32", "--repeats", "2", "--min-repeats", "1",
           "--budget", "0.5", "--out", str(out), "--json", str(tmp_path / "raw.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "raw.json").read_text())
    assert data["schema"] == "attngraph.bench/1"
    assert {"python", "cpu", "cores", "packages"} <= set(data["machine"])
    assert data["gemm_ceiling_gflops"] > 0 and data["ceilings"]["copy"]["GB/s"] > 0
    from bench.impls import all_impls

    installed = {n for n, i in all_impls().items() if all(__import__("importlib").util.find_spec(m) for m in i.needs)}
    measured = {r["impl"] for r in data["results"] if r["status"] == "ok"}
    assert installed <= measured, f"no figures for {installed - measured}: " + str(
        [r for r in data["results"] if r["status"] != "ok"])
    for r in data["results"]:
        assert r["median_s"] > 0 and r["peak_rss_mib"] > 0 and r["gflops"] > 0
        assert r["rel_err"] < 1e-5 and r["agrees"], f"{r['impl']} disagrees with the float64 reference"
        assert r["vs_best_peer"] is not None
    for name in ("bench.json", "bench.md", "time_vs_seq.png", "memory_vs_seq.png"):
        assert (out / name).stat().st_size > 0
    assert "vs best peer" in proc.stdout and "measured" in proc.stdout.splitlines()[-1]


def test_generate_bench_quick_runs_every_contender(tmp_path):
    """``python -m bench.generate --quick``: a row per contender (each backend, sdpa, eager), greedy tokens equal to
    eager's, and the attention share of prefill and decode for each."""
    text = _quick_report(tmp_path, "bench.generate", "--quick", "--rounds", "1")
    names = ["attngraph-numba", "attngraph-torch", "attngraph-onnx", "attngraph-numpy", "sdpa", "eager"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in names]
    assert len(rows) == 2 * len(names), text  # the speed table and the attention split
    assert all(r.rstrip(" |").endswith("yes") for r in rows[:len(names) - 1]), text  # tokens = eager
    assert "Where the time goes" in text and "%" in rows[-1]


def test_latent_bench_quick_runs_every_contender(tmp_path):
    """``python -m bench.latent --quick``: the MLA core step on every backend beside the hand-written torch core,
    the layer step beside transformers' DeepseekV3Attention, each with its error against the float64 reference
    (the core) or eager (the layer) and its ratio to the bandwidth floor."""
    text = _quick_report(tmp_path, "bench.latent", "--quick", "--rounds", "1")
    core = [f"attngraph-{b}" for b in ("numba", "numpy", "torch", "onnx")] + ["torch absorbed core by hand"]
    layer = ["transformers DeepseekV3Attention sdpa", "attngraph-numba absorbed", "attngraph-numba naive"]
    for name in core + layer:
        row = next((line for line in text.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"no row for {name}:\n{text}"
        err = float(row.rstrip(" |").split("|")[-1])
        assert err < 1e-5, row
    assert "x the floor" in text and "bytes read by the step" in text


def test_varlen_bench_quick_runs_every_contender(tmp_path):
    """``python -m bench.varlen --quick``: the packed varlen prefill and the padded batch, attngraph's and torch SDPA's,
    a time and an error against the float64 per-sequence reference for each, and the load recorded."""
    text = _quick_report(tmp_path, "bench.varlen", "--quick", "--rounds", "1")
    names = ["attngraph-numba varlen", "attngraph-numba padded", "attngraph-torch varlen", "attngraph-numpy varlen",
             "attngraph-onnx varlen", "torch SDPA block-diagonal", "torch SDPA padded"]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")}
    assert set(names) <= set(rows), text
    for name in names:
        assert float(rows[name][0]) > 0 and float(rows[name][-1]) < 1e-5, (name, rows[name])
    assert "Load before" in text


def test_quant_bench_quick_runs_every_contender(tmp_path):
    """``python -m bench.quant --quick``: the fp32 baseline and every quantized contender, each with its error."""
    text = _quick_report(tmp_path, "bench.quant", "--quick", "--rounds", "1", "--budget", "1")
    for name in ("numba fp32 (baseline)", "numba int8 per token+head", "numba int8 per head", "onnx int8 per token+head"):
        row = next((line for line in text.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"no row for {name}:\n{text}"
        assert float(row.rstrip(" |").split("|")[-1]) < 0.1, row  # within the int8 step, far from garbage
    assert "x the fp32 step" in text


def test_serving_bench_quick_runs_every_paged_row(tmp_path):
    """``python -m bench.serving --quick``: each backend's contiguous static-cache step and its paged rows (block
    size 16 and 128, NHD and HND), a time, a ratio to the contiguous step and an error against float64 each."""
    text = _quick_report(tmp_path, "bench.serving", "--quick", "--rounds", "1")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")}
    for backend in ("numpy", "numba", "torch", "onnx"):
        for row in ("contiguous (static cache)", "paged bs16 NHD", "paged bs128 NHD", "paged bs16 HND"):
            cells = rows[f"{backend} {row}"]
            assert float(cells[0]) > 0 and float(cells[2]) > 0 and float(cells[-1]) < 1e-5, (backend, row, cells)
    assert "Load before" in text
