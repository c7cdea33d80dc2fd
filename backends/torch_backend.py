"""The torch backend: every op in torch, on CUDA when present (else CPU) or the device you name.

The fused ``attention`` op runs ``torch.nn.functional.scaled_dot_product_attention`` whenever SDPA
is exact for the node (see ``torch_kernels.sdpa_plan``) and the explicit math otherwise (softcap,
attention weights, masks SDPA's ``is_causal`` would misalign). Inputs may be NumPy arrays or torch
tensors; a tensor already on the device with the right dtype is used as is. Calls run under
``torch.inference_mode``.

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

import numpy as np
import torch

from attngraph.dtypes import to_numpy
from attngraph.ir import DType, Graph, Op
from attngraph.lowering import Backend, Executable, NodeCtx, Rules
from backends import numpy_backend
from backends import torch_kernels as K

rules = Rules("torch")

TORCH_DTYPES = {DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16, DType.FLOAT32: torch.float32,
                DType.FLOAT64: torch.float64, DType.BOOL: torch.bool, DType.INT32: torch.int32,
                DType.INT64: torch.int64}


def _compute(ctx: NodeCtx, x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _out(ctx: NodeCtx, x: torch.Tensor, index: int = 0) -> torch.Tensor:
    return x.to(TORCH_DTYPES[ctx.node.outputs[index].type.dtype])


def _mask_kwargs(ctx: NodeCtx, operands: dict, q_len: int) -> dict:
    """The NumPy backend's mask arguments; per-row offsets need the key lengths on the host."""
    host = {"lengths": operands["lengths"].cpu().numpy()} if "lengths" in operands else {}
    return numpy_backend.mask_kwargs(ctx, host, q_len)


@rules.register(Op.LINEAR)
def _linear(ctx, x, w, b=None):
    xc, wc = _compute(ctx, x), _compute(ctx, w)
    if b is None:
        return _out(ctx, xc @ wc)
    # addmm adds the bias inside the GEMM: x @ w + b is a second pass over the output (~25% slower)
    y = torch.addmm(_compute(ctx, b), xc.reshape(-1, xc.shape[-1]), wc)
    return _out(ctx, y.view(*xc.shape[:-1], wc.shape[-1]))


@rules.register(Op.SPLIT_HEADS)
def _split_heads(ctx, x):
    batch, seq, hidden = x.shape
    heads = ctx.attr("heads")
    return x.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)


@rules.register(Op.CONCAT)
def _concat(ctx, *xs):
    return torch.cat(xs, dim=ctx.attr("axis"))


@rules.register(Op.SPLIT)
def _split(ctx, x):
    return tuple(torch.split(x, list(ctx.attr("sizes")), dim=ctx.attr("axis")))


@rules.register(Op.MATMUL)
def _matmul(ctx, a, b):
    return _out(ctx, K.grouped_matmul(_compute(ctx, a), _compute(ctx, b), ctx.attr("transpose_b")))


@rules.register(Op.SCALE)
def _scale(ctx, x):
    return _out(ctx, _compute(ctx, x) * ctx.attr("value"))


@rules.register(Op.SOFTCAP)
def _softcap(ctx, x):
    cap = ctx.attr("cap")
    return _out(ctx, cap * torch.tanh(_compute(ctx, x) / cap))


@rules.register(Op.MASK)
def _mask(ctx, scores, *operands):
    named = dict(zip(ctx.attr("operands"), operands, strict=True))
    return _out(ctx, K.apply_mask(_compute(ctx, scores), 0, named, **_mask_kwargs(ctx, named, scores.shape[2])))


@rules.register(Op.SOFTMAX)
def _softmax(ctx, x):
    return _out(ctx, K.safe_softmax(_compute(ctx, x)))


@rules.register(Op.WEIGHTED_SUM)
def _weighted_sum(ctx, p, v):
    return _out(ctx, K.grouped_matmul(_compute(ctx, p), _compute(ctx, v), False))


@rules.register(Op.MERGE_HEADS)
def _merge_heads(ctx, x):
    batch, heads, seq, size = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * size)


@rules.register(Op.ATTENTION)
def _attention(ctx, q, k, v, *operands):
    named = dict(zip(ctx.attr("operands"), operands, strict=True))
    mask = _mask_kwargs(ctx, named, q.shape[2])
    scale, softcap, want = float(ctx.attr("scale")), float(ctx.attr("softcap")), bool(ctx.attr("return_weights"))
    plan = K.sdpa_plan(named, softcap=softcap, return_weights=want, **mask) if ctx.state["sdpa"] else "explicit"
    # torch's CPU SDPA returns 0 for a row with a NaN score, and NaN must propagate. A NaN anywhere makes
    # the sum NaN (so does inf - inf: then the explicit path runs needlessly, still exactly); one
    # reduction per tensor is ~6x cheaper than isnan().any() on these strided views
    if plan != "explicit" and any(bool(torch.isnan(x.sum())) for x in (q, k, v)):
        plan = "explicit"
    if plan != "explicit":
        half_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        qc, kc, vc = (x if half_ok else _compute(ctx, x) for x in (q, k, v))
        return _out(ctx, K.sdpa_attention(qc, kc, vc, named, scale=scale, plan=plan, **mask))
    y, weights = K.explicit_attention(_compute(ctx, q), _compute(ctx, k), _compute(ctx, v), named, scale=scale,
                                      softcap=softcap, return_weights=want, max_bytes=ctx.state["max_scores_bytes"],
                                      **mask)
    return (_out(ctx, y), _out(ctx, weights, 1)) if want else _out(ctx, y)


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use device='cpu'")
    return device


def to_tensor(array: Any, device: torch.device) -> torch.Tensor:
    """A NumPy array (ml_dtypes' bfloat16 included) or tensor, as a tensor on ``device``; no copy if it is there."""
    if isinstance(array, torch.Tensor):
        return array.to(device)
    a = np.asarray(array)
    if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16: reinterpret the bits
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16).to(device)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(device)


def to_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array (bfloat16 as ml_dtypes' bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.cpu().view(torch.uint16).numpy().view(to_numpy(DType.BFLOAT16))
    return t.cpu().numpy()


class TorchBackend(Backend):
    """PyTorch, on CUDA when available. Options: ``device``, ``outputs``, ``torch_compile``, ``sdpa``,
    ``max_scores_bytes``, ``fuse``."""

    name = "torch"
    rules = rules
    options = {**Backend.options, "device": "auto", "outputs": "numpy", "torch_compile": False, "sdpa": True,
               "max_scores_bytes": 256 << 20}

    def resolve_options(self, given):
        opts = super().resolve_options(given)
        if opts["outputs"] not in ("numpy", "torch"):
            raise ValueError(f"option outputs must be 'numpy' or 'torch', got {opts['outputs']!r}")
        opts["device"] = resolve_device(str(opts["device"]))
        return opts

    def to_backend(self, array, options):
        return to_tensor(array, options["device"])

    def make_state(self, graph: Graph, options: dict) -> dict:
        return {"sdpa": bool(options["sdpa"]), "max_scores_bytes": int(options["max_scores_bytes"])}

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
