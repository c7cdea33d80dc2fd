"""A description of this machine and the installed packages, without importing any framework."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("numpy", "scipy", "numba", "torch", "onnx", "onnxruntime", "onnxscript", "ml_dtypes")


def package_versions() -> dict[str, str | None]:
    """Installed version of each package attngraph can use (None when absent); imports nothing."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                            if f in flags]
    except OSError:
        pass
    return []


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def describe_machine() -> dict:
    """Python, OS, CPU (name, cores, vector extensions), memory and package versions."""
    mem = memory_bytes()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu": _cpu_name(),
        "cores": os.cpu_count(), "cpu_flags": _cpu_flags(),
        "memory_gib": round(mem / 2**30, 1) if mem else None, "packages": package_versions(),
    }
