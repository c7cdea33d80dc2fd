"""The Numba backend: the fused ``attention`` op runs a streaming (flash-style) CPU kernel.

Every other op uses the NumPy backend's rules (they are BLAS calls or layout changes already).
Options: ``threads`` (default: NUMBA_NUM_THREADS / all cores), ``block_q`` and ``block_k`` (tile
sizes; ``block_k=0`` picks it from the head dim, see ``auto_block_k``), ``fuse`` (default True).
Kernels compile once and are cached on disk; when the package folder is read-only the cache goes
to ``~/.cache/attngraph/numba`` (or ``$NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _cache_dir() -> None:
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).parent, os.W_OK):
        return
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attngraph" / "numba"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)


_cache_dir()  # before numba is imported: it reads NUMBA_CACHE_DIR once

import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import ThreadpoolController  # noqa: E402

from attngraph.dtypes import compute_dtype, to_numpy  # noqa: E402
from attngraph.ir import Op  # noqa: E402
from attngraph.lowering import Backend, NodeCtx, Rules  # noqa: E402
from backends import numpy_backend  # noqa: E402
from backends.numba_kernels import flash_attention  # noqa: E402
from backends.numpy_kernels import as_rank4  # noqa: E402

# Threading layer: numba's default (OpenMP) leaves its workers spinning after each kernel, and on a
# few cores they then starve the BLAS threads of the projections that follow (measured: the output
# projection after the kernel went from 0.4 to 4 ms at B1 T128). The workqueue layer does not spin;
# it must not be entered from two Python threads at once, so calls take _KERNEL_LOCK. A
# NUMBA_THREADING_LAYER set by the user wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
_KERNEL_LOCK = threading.Lock()

rules = Rules("numba")
_BLAS = ThreadpoolController()  # found once: a fresh threadpool_limits() rescans the loaded libraries (~0.4 ms)
rules.update({op: fn for op, fn in numpy_backend.rules.items() if op is not Op.ATTENTION})


# OpenBLAS runs a product through its lock-free small-matrix kernel only while M*N*K <= 1e6; above
# that, BLAS calls from the kernel's threads serialise on a lock (measured: 2.4x slower with two
# threads at 128x64x128 than at 64x64x128). Tiles are sized to stay under it.
SMALL_GEMM_LIMIT = 1_000_000


def auto_block_k(block_q: int, head_dim: int) -> int:
    """The largest power-of-two key block (16..128) keeping block_q x block_k x head_dim in BLAS's small path."""
    block_k = 128
    while block_k > 16 and block_q * block_k * head_dim > SMALL_GEMM_LIMIT:
        block_k //= 2
    return block_k


@rules.register(Op.ATTENTION)
def _attention(ctx: NodeCtx, q, k, v, *ops):
    a = ctx.node.attr_dict
    named = dict(zip(a["operands"], ops, strict=True))
    cd = compute_dtype(ctx.node.inputs[0].type.dtype)
    st = ctx.state
    qc, kc, vc = (np.ascontiguousarray(x, dtype=cd) for x in (q, k, v))
    batch, hq, sq, _ = qc.shape
    skv, dv = kc.shape[2], vc.shape[3]
    block_k = int(st["block_k"]) or auto_block_k(int(st["block_q"]), max(kc.shape[3], dv))
    full = (batch, hq, sq, skv)
    bias = np.broadcast_to(as_rank4(np.asarray(named["bias"]).astype(cd, copy=False)), full) \
        if "bias" in named else np.zeros((1, 1, 1, 1), cd)
    keep = np.broadcast_to(as_rank4(np.asarray(named["bool"], dtype=bool)), full) \
        if "bool" in named else np.ones((1, 1, 1, 1), bool)
    lengths = np.asarray(named["lengths"], dtype=np.int64) if "lengths" in named else np.full(batch, skv, np.int64)
    offset = numpy_backend.mask_kwargs(ctx, named, sq)["offset"]
    offsets = np.broadcast_to(np.asarray(offset, np.int64), (batch,)).copy()
    out = np.empty((batch, hq, sq, dv), cd)
    want = bool(a["return_weights"])
    weights = np.zeros(full if want else (1, 1, 1, 1), cd)
    if st["threads"]:
        numba.set_num_threads(int(st["threads"]))
    # the kernel's prange threads call BLAS per tile: a multi-threaded BLAS inside them oversubscribes
    # the cores (and OpenBLAS warns it may hang), so BLAS runs single-threaded for the call
    with _KERNEL_LOCK, _BLAS.limit(limits=1, user_api="blas"):
        flash_attention(qc, kc, vc, bias, keep, "bias" in named, "bool" in named, offsets, lengths,
                        cd.type(a["scale"]), cd.type(a["softcap"]), bool(a["causal"]), int(a["window_left"]),
                        int(a["window_right"]), int(st["block_q"]), block_k, out, weights, want)
    y = out.astype(to_numpy(ctx.node.outputs[0].type.dtype), copy=False)
    return (y, weights.astype(to_numpy(ctx.node.outputs[1].type.dtype), copy=False)) if want else y


class NumbaBackend(Backend):
    """Streaming attention on the CPU. Options: ``threads``, ``block_q``, ``block_k``, ``fuse``."""

    name = "numba"
    rules = rules
    options = {**Backend.options, "threads": 0, "block_q": 64, "block_k": 0}

    def make_state(self, graph, options: dict) -> dict:
        for key, least in (("block_q", 1), ("block_k", 0)):
            if int(options[key]) < least:
                raise ValueError(f"{key} must be >= {least}, got {options[key]}")
        return {k: options[k] for k in ("threads", "block_q", "block_k")}
