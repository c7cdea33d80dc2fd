"""The installs of ``python -m bench.gpu``, with pip from the package registry into the running Python: the CUDA
build of torch, attngraph with its ``all`` and ``test`` extras, and onnxruntime-gpu in place of onnxruntime.

Every command's outcome goes into the report; a failed install is said and the run goes on with what is there
(a later step then reports what it lacks). Imports nothing outside the standard library: it runs before
anything else is installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

TORCH_VERSION = "2.13.0"  # the README's pin
ROOT = Path(__file__).resolve().parent.parent
_PROBE_TORCH = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
_PROBE_ORT = "import onnxruntime as o; print(o.__version__, ','.join(o.get_available_providers()))"


def driver() -> tuple[str, str | None]:
    """(the GPUs and driver version, the highest CUDA version the driver takes), from nvidia-smi."""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        banner = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"no NVIDIA driver found (nvidia-smi: {e})", None
    found = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return names.replace("\n", "; ") or "nvidia-smi lists no GPU", found.group(1) if found else None


class Installer:
    """Runs the commands within ``budget_s`` and keeps one row per command for the report."""

    def __init__(self, budget_s: float, dry_run: bool = False) -> None:
        self.deadline, self.dry_run, self.rows = time.monotonic() + budget_s, dry_run, []

    def pip(self, *args: str) -> bool:
        return self.run([sys.executable, "-m", "pip", *args], " ".join(("pip", *args)))

    def run(self, cmd: list[str], shown: str) -> bool:
        left = self.deadline - time.monotonic()
        if self.dry_run:
            self.rows.append([f"`{shown}`", "dry run: not run", "0"])
            return True
        if left < 5:
            self.rows.append([f"`{shown}`", "not run: the install budget was spent", "0"])
            return False
        start = time.monotonic()
        print(f"  {shown}", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
            ok, tail = done.returncode == 0, (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        except subprocess.TimeoutExpired:
            ok, tail = False, [f"timed out after {left:.0f} s"]
        why = "ok" if ok else "failed: " + (tail[0][:200] if tail else "no output")
        self.rows.append([f"`{shown}`", why.replace("|", "/"), f"{time.monotonic() - start:.0f}"])
        return ok


def probe(code: str) -> str:
    """What a fresh Python prints for ``code`` (its last error line when it fails)."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "error: timed out"
    lines = (done.stdout if done.returncode == 0 else done.stderr).strip().splitlines()
    return (lines[-1] if lines else "") if done.returncode == 0 else "error: " + (lines[-1] if lines else "?")


def install(budget_s: float, torch_version: str = TORCH_VERSION, torch_index: str | None = None,
            dry_run: bool = False) -> tuple[str, str, str]:
    """(status, summary, Markdown): torch with CUDA, then ``-e .[all,test]``, then onnxruntime-gpu."""
    gpus, cuda = driver()
    inst = Installer(budget_s, dry_run)
    notes = [f"driver: {gpus}; it takes CUDA {cuda or '?'}"]
    notes.append(_torch(inst, torch_version, torch_index, cuda))
    inst.pip("install", "-e", ".[all,test]")
    notes.append(_onnxruntime_gpu(inst))
    from bench.roundrobin import table

    failed = any(row[1].startswith(("failed", "not run")) for row in inst.rows)
    text = "\n".join(f"- {n}" for n in notes) + "\n\n" + table(["command", "result", "seconds"], inst.rows)
    return ("failed" if failed else "ok"), "; ".join(notes[1:]), text


def _torch(inst: Installer, version: str, index: str | None, cuda: str | None) -> str:
    """torch with CUDA: kept when it already sees the GPU, else the registry's CUDA wheel (or ``index``'s)."""
    if inst.dry_run:
        inst.pip("install", f"torch=={version}", *(["--index-url", index] if index else []))
        return "torch: dry run"
    before = probe(_PROBE_TORCH)
    if before.endswith("True"):
        return f"torch kept: {before.split()[0]} sees the GPU (CUDA build {before.split()[1]})"
    if not before.startswith("error"):
        inst.pip("uninstall", "-y", "torch")  # a CPU build (2.13.0+cpu also meets ==2.13.0: pip would keep it)
    inst.pip("install", f"torch=={version}", *(["--index-url", index] if index else []))
    after = probe(_PROBE_TORCH)
    if after.endswith("True"):
        return f"torch {after.split()[0]} sees the GPU (CUDA build {after.split()[1]})"
    built = after.split()[1] if len(after.split()) == 3 else "?"
    return (f"torch does not see the GPU ({after}): its wheel is built for CUDA {built} and the driver takes CUDA "
            f"{cuda or '?'}; pass --torch-index with a pip index of a torch build for CUDA <= {cuda or 'the driver'}")


def _onnxruntime_gpu(inst: Installer) -> str:
    """onnxruntime-gpu over onnxruntime (both install the module ``onnxruntime``: the CPU one is removed
    first); when its wheel does not install, onnxruntime comes back so the onnx backend still loads."""
    inst.pip("uninstall", "-y", "onnxruntime")
    if inst.pip("install", "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.28") and \
            inst.pip("install", "onnxruntime-gpu>=1.28"):
        return "onnxruntime-gpu: dry run" if inst.dry_run else f"onnxruntime-gpu {probe(_PROBE_ORT)}"
    inst.pip("install", "onnxruntime>=1.28")
    return "onnxruntime-gpu did not install; onnxruntime (CPU) is back, and the onnx conformance on CUDA is skipped"
