"""Timing helpers for benchmarks whose contenders run in one process: round-robin rounds, so a burst of
other work on a shared machine hits every contender alike, and medians with their spread."""

from __future__ import annotations

import os
import subprocess
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Contenders share one process, so their thread pools must not spin while another one runs: torch's
# OpenMP pool spins after each op by default, and next to numba's pool that measured a Llama decode
# step at 117 ms for torch (7.7 ms alone) and 34 ms for numba (6.6 ms alone). Set before torch loads
# (every bench module imports this one first); an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class Timing:
    name: str
    samples: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def spread(self) -> str:
        lo, hi = min(self.samples) * 1e3, max(self.samples) * 1e3
        return f"{lo:.2f}-{hi:.2f}"


def round_robin(runs: Mapping[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 1,
                budget_s: float = 30.0, inner: int = 1, pause_s: float = 0.0) -> dict[str, Timing]:
    """Call every run in turn, for ``rounds`` rounds (fewer when ``budget_s`` runs out after at least 3);
    returns each run's samples. ``warmup`` untimed calls each first (compiles, caches).

    ``inner`` calls back to back make one sample (their median), and ``pause_s`` of sleep comes before
    each contender's turn: thread pools that spin after a call (onnxruntime's, OpenMP's) then stop
    before the next contender starts, instead of stealing its cores."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    start = time.perf_counter()
    for r in range(rounds):
        for name, run in runs.items():
            if pause_s:
                time.sleep(pause_s)
            calls = []
            for _ in range(inner):
                t0 = time.perf_counter()
                run()
                calls.append(time.perf_counter() - t0)
            samples[name].append(statistics.median(calls))
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: Timing(name, s) for name, s in samples.items()}


def load_line() -> str:
    """``uptime``'s line (the machine's load, for a report), or the load averages where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return f"load average: {os.getloadavg()}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def publish(lines: list[str], out: str | None) -> None:
    """Print the report and, with ``out``, write it there as Markdown."""
    report = "\n".join(lines)
    print(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report + "\n")
