"""The torch backend's rules: the shared array rules on torch tensors, plus two that are faster in
torch: ``linear`` adds the bias inside the GEMM, and ``attention`` runs SDPA wherever it is exact
(see ``kernels.sdpa_plan``) and the shared chunked attention everywhere else."""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from attngraph_backends.torch import kernels as K
from attngraph_backends.torch import plans as P

from attngraph.array_math.attention import chunked_attention, trim_keys
from attngraph.array_math.positions import PositionBiases
from attngraph.array_math.rules import ARRAY_RULES, compute, mask_args, operands_of, out
from attngraph.ir import Op

rules = ARRAY_RULES.extended("torch", without=(Op.LINEAR, Op.ATTENTION, Op.VARLEN_ATTENTION))

# Steps with at most this many queries (decode, short chunks) skip SDPA: see ``_attention``.
EXPLICIT_MAX_QUERIES = 16


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
    if not ctx.attr("return_weights"):  # a static cache's tail past every row's length is never read
        k, v, named = trim_keys(xp, k, v, named)
    scale, softcap, want = float(ctx.attr("scale")), float(ctx.attr("softcap")), bool(ctx.attr("return_weights"))
    biases = PositionBiases.of(ctx.node.attr_dict)
    plan = K.sdpa_plan(named, softcap=softcap, return_weights=want, **mask) if ctx.state.extra["sdpa"] else "explicit"
    if "sinks" in named:  # SDPA has no sinks
        plan = "explicit"
    if biases and plan != "explicit":  # ALiBi / T5 bias: SDPA with the bias as its float mask, chunk by chunk
        plan = "position_bias"
    lean = _decode_plan(q, k, named, mask, softcap, want, biases)
    if lean is not None:  # a plain decode step: the valid keys as a slice, no mask, no copy (plans.py)
        plan_name, lengths = lean
        if plan_name == "sdpa_valid" and not ctx.state.extra["sdpa"]:  # sdpa=False: no SDPA call at all
            plan_name = "lean"
        half_ok = plan_name == "sdpa_valid" and q.dtype in (torch.float16, torch.bfloat16)
        qc, kc, vc = (x if half_ok else compute(ctx, x, i) for i, x in enumerate((q, k, v)))
        return out(ctx, P.run_decode_plan(plan_name, qc, kc, vc, lengths, scale=scale))
    if q.shape[2] <= EXPLICIT_MAX_QUERIES:
        # a decode step: the explicit chunk reads K and V once each and checks only its small output,
        # where SDPA would first need a finiteness pass over the whole cache (below) -- 3x the bytes
        plan = "explicit"
    # SDPA is exact for finite inputs only: torch's CPU SDPA returns 0 for a row with a NaN score (NaN
    # must propagate), and a NaN or inf in a *masked* key reaches the output through the mask's -inf
    # (it must take no part). A non-finite value anywhere makes the sum non-finite; one reduction per
    # tensor is ~6x cheaper than isfinite().all() on these strided views. Empty inputs go explicit too.
    if plan != "explicit" and (0 in (q.shape[0], q.shape[2], k.shape[2])
                               or not all(bool(torch.isfinite(x.sum())) for x in (q, k, v, *_tables(named)))):
        plan = "explicit"
    if plan != "explicit":
        half_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        qc, kc, vc = (x if half_ok else compute(ctx, x, i) for i, x in enumerate((q, k, v)))
        if plan == "position_bias":
            return out(ctx, K.sdpa_position_bias(qc, kc, vc, named, biases, scale=scale,
                                                 max_bytes=ctx.state.max_scores_bytes, **mask))
        return out(ctx, K.sdpa_attention(qc, kc, vc, named, scale=scale, plan=plan, **mask))
    y, weights = chunked_attention(xp, q, k, v, named, scale=scale, softcap=softcap, return_weights=want,
                                   compute=ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype),
                                   max_bytes=ctx.state.max_scores_bytes, device=q.device, biases=biases, **mask)
    return (out(ctx, y), out(ctx, weights, 1)) if want else out(ctx, y)


def _decode_plan(q, k, named, mask, softcap, want, biases):
    """(plan, host lengths) when ``plans.decode_plan`` takes this step, else None."""
    batch, _, q_len, _ = q.shape
    if q_len > P.DECODE_MAX_QUERIES or batch == 0 or softcap or want or biases or set(named) - {"lengths"}:
        return None  # decided before any host sync
    lengths = P.host_ints(named["lengths"], batch) if "lengths" in named else [k.shape[2]] * batch
    offsets = P.host_ints(mask["offset"], batch)
    plan = P.decode_plan(q.device.type, q_len, k.shape[2], lengths, offsets, operands=named, softcap=softcap,
                         return_weights=want, has_biases=bool(biases), causal=mask["causal"],
                         window_left=mask["window_left"], window_right=mask["window_right"])
    return None if plan is None else (plan, lengths)


def _tables(named: dict) -> tuple:
    """T5's bias table, when present: it enters SDPA's mask, so it must be finite too."""
    return (named["rel_table"],) if "rel_table" in named else ()


@rules.register(Op.VARLEN_ATTENTION)
def _varlen_attention(ctx, q, k, v, cu_q, cu_k):
    """Each packed sequence on its own slices (``array_math.varlen``), through SDPA when every value is finite
    (SDPA is exact then; see ``_attention``), else the shared chunked attention."""
    from attngraph.array_math.varlen import varlen_attention

    cd = ctx.state.compute_dtype(ctx.node.inputs[0].type.dtype)
    scale = float(ctx.attr("scale"))
    qc, kc, vc = (compute(ctx, x, i) for i, x in enumerate((q, k, v)))
    exact = ctx.state.extra["sdpa"] and all(bool(torch.isfinite(x.sum())) for x in (qc, kc, vc))

    softcap = float(ctx.attr("softcap"))

    def attend(qs, ks, vs, mask):
        plan = K.sdpa_plan({}, softcap=softcap, return_weights=False, **mask)
        if not exact or plan == "explicit":  # SDPA has no softcap: the shared chunked attention
            return None
        return K.sdpa_attention(qs, ks, vs, {}, scale=scale, plan=plan, **mask)

    y = varlen_attention(xp, qc, kc, vc, cu_q, cu_k, scale=scale, causal=bool(ctx.attr("causal")),
                         bottom_right=ctx.attr("align") == "bottom_right", compute=cd,
                         max_bytes=ctx.state.max_scores_bytes, device=q.device, attend=attend,
                         window_left=int(ctx.attr("window_left")), window_right=int(ctx.attr("window_right")),
                         softcap=softcap)
    return out(ctx, y)
