"""The torch backend: the shared array math on torch, on CUDA when present (else the CPU) or the
device you name, with SDPA for the fused ``attention`` op wherever it is exact (``rules.py``).

Inputs may be NumPy arrays or torch tensors; a tensor already on the device with the right dtype
is used as is. Calls run under ``torch.inference_mode``.

Options: ``device`` ("auto", "cpu", "cuda", "cuda:1", ...), ``outputs`` ("numpy" or "torch": return
tensors on the device, no copy), ``torch_compile`` (False, True or a torch.compile backend name such
as "inductor"), ``sdpa`` (True: allow SDPA; False forces the explicit math), ``max_scores_bytes``
(explicit path's score memory per query chunk), ``fuse``.

Precision: float64 and float32 compute in their own dtype. float16/bfloat16 compute in float32 on
the CPU (where half matmuls are slow and less accurate); on CUDA, SDPA runs in the half dtype itself
(its kernels accumulate in float32) and the explicit math in float32.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch
from attngraph_backends.torch.rules import rules

from attngraph.array_math import ArrayState
from attngraph.errors import ConfigError
from attngraph.ir import DType, Graph
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering import Backend, Executable

TORCH_DTYPES = {DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16, DType.FLOAT32: torch.float32,
                DType.FLOAT64: torch.float64, DType.BOOL: torch.bool, DType.INT32: torch.int32,
                DType.INT64: torch.int64, DType.INT8: torch.int8, DType.FLOAT8_E4M3FN: torch.float8_e4m3fn}


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use device='cpu'")
    return device


def to_tensor(array: Any, device: torch.device) -> torch.Tensor:
    """A NumPy array (ml_dtypes' bfloat16 included) or tensor, as a tensor on ``device``; no copy if it is there."""
    if isinstance(array, torch.Tensor):
        return array.to(device)
    a = np.asarray(array)
    if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: reinterpret the bits
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16).to(device)
    if a.dtype.name == "float8_e4m3fn":  # a quantized cache: the same bits, reinterpreted
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint8).copy()).view(torch.float8_e4m3fn).to(device)
    if not a.flags.writeable or any(stride < 0 for stride in a.strides):  # torch takes neither
        a = a.copy()
    return torch.from_numpy(a).to(device)


def to_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array (bfloat16 as ml_dtypes' bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.cpu().view(torch.uint16).numpy().view(to_numpy(DType.BFLOAT16))
    if t.dtype == torch.float8_e4m3fn:
        return t.cpu().view(torch.uint8).numpy().view(to_numpy(DType.FLOAT8_E4M3FN))
    return t.cpu().numpy()


class TorchBackend(Backend):
    """PyTorch, on CUDA when available. Options: ``device``, ``outputs``, ``torch_compile``, ``sdpa``,
    ``max_scores_bytes``, ``fuse``."""

    name = "torch"
    rules = rules
    options = {**Backend.options, "device": "auto", "outputs": "numpy", "torch_compile": False, "sdpa": True,
               "max_scores_bytes": 256 << 20}
    devices = ("cpu", "cuda")
    note = "SDPA where exact"

    @classmethod
    def working_set(cls, problem) -> int:
        return problem.batch * problem.q_len * problem.kv_len if problem.dense_mask else 0  # SDPA; a dense mask

    def resolve_options(self, given):
        opts = super().resolve_options(given)
        if opts["outputs"] not in ("numpy", "torch"):
            raise ConfigError(f"option outputs must be 'numpy' or 'torch', got {opts['outputs']!r}")
        opts["device"] = resolve_device(str(opts["device"]))
        return opts

    def to_backend(self, array, options):
        return to_tensor(array, options["device"])

    def make_state(self, graph: Graph, options: dict) -> ArrayState:
        return ArrayState(xp, TORCH_DTYPES, options["device"], int(options["max_scores_bytes"]),
                          {"sdpa": bool(options["sdpa"]), "cache_inplace": bool(options["cache_inplace"])})

    def make_executor(self, nodes, state, options):
        execute = super().make_executor(nodes, state, options)
        if not options["torch_compile"]:
            return execute
        backend = options["torch_compile"]
        return torch.compile(execute, backend="inductor" if backend is True else backend)

    def compile(self, graph: Graph, weights=None, **options) -> Executable:
        with torch.inference_mode():
            ex = super().compile(graph, weights, **options)
        run, as_numpy = ex.run, ex.options["outputs"] == "numpy"

        def run_in_inference_mode(given, bound):
            with torch.inference_mode():
                out = run(given, bound)
            return {n: to_array(t) for n, t in out.items()} if as_numpy else out

        ex.run = run_in_inference_mode
        return ex

    def to_numpy(self, value):
        return value  # tensors stay tensors inside ``run``; the wrapper converts them if asked
