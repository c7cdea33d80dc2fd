"""What this machine offers: CPU, memory, CUDA devices (through torch), onnxruntime providers, and
which attngraph backends load. Tests build ``Hardware`` by hand to fake other machines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class CudaDevice:
    name: str
    capability: tuple[int, int]
    memory_gib: float


@dataclass(frozen=True)
class Hardware:
    cpu: str = "unknown"
    cores: int = 1
    cpu_flags: tuple[str, ...] = ()
    memory_gib: float = 8.0
    cuda: tuple[CudaDevice, ...] = ()
    ort_providers: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("numpy",)
    unavailable: dict = field(default_factory=dict)   # backend -> why it does not load

    def fingerprint(self) -> str:
        """Stable id of what decides speed (CPU, cores, GPUs, backends): the autotune cache key."""
        key = {k: v for k, v in asdict(self).items() if k not in ("memory_gib", "unavailable")}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def describe(self) -> str:
        gpus = ", ".join(f"{d.name} (sm {d.capability[0]}{d.capability[1]}, {d.memory_gib:.0f} GiB)"
                         for d in self.cuda) or "no CUDA device"
        return (f"{self.cpu}, {self.cores} cores ({' '.join(self.cpu_flags) or 'no vector flags'}), "
                f"{self.memory_gib:.0f} GiB; {gpus}; backends: {', '.join(self.backends)}")


@lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    """Probe once per process. Importing torch/onnxruntime is what finding their devices costs."""
    import os

    from attngraph.lowering.registry import available_backends, backend_status
    from attngraph.sysinfo import _cpu_flags, _cpu_name, memory_bytes

    backends, unavailable = [], {}
    for name in available_backends():
        ok, why = backend_status(name)
        if ok:
            backends.append(name)
        else:
            unavailable[name] = why
    cuda = ()
    if "torch" in backends:
        import torch

        if torch.cuda.is_available():
            cuda = tuple(CudaDevice(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i),
                                    torch.cuda.get_device_properties(i).total_memory / 2**30)
                         for i in range(torch.cuda.device_count()))
    providers = ()
    if "onnx" in backends:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    mem = memory_bytes()
    return Hardware(_cpu_name(), os.cpu_count() or 1, tuple(_cpu_flags()), mem / 2**30 if mem else 8.0, cuda,
                    providers, tuple(backends), unavailable)


def current_hardware() -> Hardware:
    """``detect_hardware()`` with the backend list brought up to date: a plug-in registered after the
    first probe is seen too (each backend is loaded once; the registry keeps it)."""
    from dataclasses import replace

    from attngraph.lowering.registry import available_backends, backend_status

    hw = detect_hardware()
    names = available_backends()
    if set(names) == set(hw.backends) | set(hw.unavailable):
        return hw
    backends, unavailable = list(hw.backends), dict(hw.unavailable)
    for name in names:
        if name not in backends and name not in unavailable:
            ok, why = backend_status(name)
            (backends.append(name) if ok else unavailable.__setitem__(name, why))
    gone = set(backends) - set(names)  # an unregistered plug-in
    return replace(hw, backends=tuple(b for b in backends if b not in gone),
                   unavailable={k: v for k, v in unavailable.items() if k in names})
