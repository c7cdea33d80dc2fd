"""The torch backend's rules: the shared array rules on torch tensors, plus two that are faster in
torch: ``linear`` adds the bias inside the GEMM, and ``attention`` runs SDPA wherever it is exact
(see ``kernels.sdpa_plan``) and the shared chunked attention everywhere else."""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from attngraph_backends.torch import kernels as K

from attngraph.array_math.attention import chunked_attention
from attngraph.array_math.rules import ARRAY_RULES, compute, mask_args, operands_of, out
from attngraph.ir import Op

rules = ARRAY_RULES.extended("torch", without=(Op.LINEAR, Op.ATTENTION))


@rules.register(Op.LINEAR)
def _linear(ctx, x, w, b=None):
    xc, wc = compute(ctx, x), compute(ctx, w, 1)
    if b is None:
        return out(ctx, xc @ wc)
    # addmm adds the bias inside the GEMM: x @ w + b is a second pass over the output (~25% slower)
    y = torch.addmm(compute(ctx, b, 2), xc.reshape(-1, xc.shape[-1]), wc)
    return out(ctx, y.view(*xc.shape[:-1], wc.shape[-1]))


@rules.register(Op.ATTENTION)
def _attention(ctx, q, k, v, *operands):
    named = operands_of(ctx, operands)
    mask = mask_args(ctx, named, q.shape[2])
    scale, softcap, want = float(ctx.attr("scale")), float(ctx.attr("softcap")), bool(ctx.attr("return_weights"))
    plan = K.sdpa_plan(named, softcap=softcap, return_weights=want, **mask) if ctx.state.extra["sdpa"] else "explicit"
    # torch's CPU SDPA returns 0 for a row with a NaN score, and NaN must propagate. A NaN anywhere makes
    # the sum NaN (so does inf - inf: then the explicit path runs needlessly, still exactly); one
    # reduction per tensor is ~6x cheaper than isnan().any() on these strided views
    if plan != "explicit" and any(bool(torch.isnan(x.sum())) for x in (q, k, v)):
        plan = "explicit"
    if plan != "explicit":
        half_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        qc, kc, vc = (x if half_ok else compute(ctx, x, i) for i, x in enumerate((q, k, v)))
        return out(ctx, K.sdpa_attention(qc, kc, vc, named, scale=scale, plan=plan, **mask))
    y, weights = chunked_attention(xp, q, k, v, named, scale=scale, softcap=softcap, return_weights=want,
                                   compute=ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype),
                                   max_bytes=ctx.state.max_scores_bytes, device=q.device, **mask)
    return (out(ctx, y), out(ctx, weights, 1)) if want else out(ctx, y)
