"""Run worker processes: one at a time, each watched for its peak memory and a time limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.worker import RESULT_TAG

ROOT = Path(__file__).resolve().parent.parent


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_worker(spec: dict, *, max_rss_bytes: int, timeout_s: float) -> dict:
    """Run ``python -m bench.worker spec``; kill it past ``max_rss_bytes`` or ``timeout_s``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "bench.worker", json.dumps(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, killed = time.monotonic(), None
    while proc.poll() is None:
        if _rss_bytes(proc.pid) > max_rss_bytes:
            killed = f"killed: RSS passed the {max_rss_bytes / 2**30:.0f} GiB limit"
        elif time.monotonic() - start > timeout_s:
            killed = f"killed: ran past {timeout_s:.0f} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    if killed:
        return {"status": "killed", "reason": killed}
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "reason": tail[:300]}
