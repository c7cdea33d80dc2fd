"""``bench/gpu_check.sh --dry-run``: the GPU run's every step on the CPU at small sizes, so the script cannot rot
before a GPU machine runs it; and a step that overruns its budget is killed while the next one still runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["install", "environment", "conformance-torch", "conformance-onnx", "hbm", "prefill", "decode"]


def _section(report: str, step: str) -> str:
    return report.split(f"## {step}\n", 1)[1].split("\n## ", 1)[0]


def test_dry_run_writes_one_report_with_every_step(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# attngraph GPU check: CPU (dry run)")
    statuses = dict(re.findall(r"^\| ([a-z-]+) \| (\w+) \| [\d.]+ \| \d+ \|", report, re.M))
    assert statuses == dict.fromkeys(STEPS, "ok"), statuses
    assert "| `pip install -e .[all,test]` | dry run: not run |" in _section(report, "install")
    assert "| torch on cpu | 6 | 0 | 0 |" in _section(report, "conformance-torch")
    assert "| onnx:attention on CPUExecutionProvider | 6 | 0 | 0 |" in _section(report, "conformance-onnx")
    assert re.search(r"copy of 16 MiB: [\d.]+ ms median .* [\d.]+ GB/s", _section(report, "hbm"))
    for step, contenders in (("prefill", ["attngraph-torch", "SDPA flash", "SDPA efficient"]),
                             ("decode", ["floor: copy the cache", "attngraph-torch", "SDPA flash", "SDPA efficient"])):
        text = _section(report, step)
        assert all(f"| {name} |" in text for name in contenders), text
        # float32 against the float64 reference: attngraph's torch backend and SDPA give the same numbers
        for table in text.split("### float32")[1:]:
            errors = {row[0]: float(row[6 if step == "decode" else 5]) for row in _rows(table)
                      if row[0] in ("attngraph-torch", "SDPA flash")}
            assert len(errors) == 2 and max(errors.values()) < 1e-5, (step, errors)
    assert "not available" in _section(report, "prefill")  # the efficient kernel has no CPU build: said, not fatal
    assert proc.stderr.splitlines()[-1].endswith(f"wrote {out}")


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| contender")]


def test_a_step_past_its_budget_is_killed_and_the_next_one_runs(monkeypatch):
    import time

    import bench.gpu as gpu

    monkeypatch.setattr(gpu, "GRACE_S", 0.2)
    settings = gpu.settings_of(gpu.parse_args(["--dry-run", "--budgets", '{"environment": 0}']))
    said = []
    results = gpu.run_steps(["environment", "hbm"], settings, said.append, time.monotonic() + 120)
    assert results["environment"]["status"] == "failed"
    assert results["environment"]["summary"] == "killed: ran past its 0 s budget (+0.2 s)"
    assert results["hbm"]["status"] == "ok" and "GB/s" in results["hbm"]["summary"]
    assert said[0] == "environment (budget 0 s) ..."


def test_help_shows_the_defaults():
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "(default: 475)" in text and "(default: [1024, 4096, 8192])" in text and "'conformance-onnx': 90" in text
