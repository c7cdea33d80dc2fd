"""Implementations the harness times: the peers, and every installed attngraph backend.

Each one has ``setup(case, weights, x, device, workdir) -> (run, fetch)``: ``run()`` does one
forward pass on inputs prepared in setup (so only the call is timed), ``fetch(out)`` turns its
result into a NumPy array. Frameworks are imported inside ``setup``, in the worker process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.cases import BenchCase


@dataclass(frozen=True)
class Impl:
    name: str
    family: str                                   # "peer" or "attngraph"
    setup: Callable[..., tuple[Callable[[], Any], Callable[[Any], np.ndarray]]]
    skips_masked: bool = False                    # does causal skip the masked half of the work?
    needs: tuple[str, ...] = ()                   # packages it imports
    supports: Callable[[BenchCase], str | None] = lambda case: None   # reason it cannot run, or None
    score_copies: float = 0.0                     # full (B,H,T,T) fp32 score tensors it holds at once
    default: bool = True                          # in the default run (others need --impls)


def _torch_weights(w, device):
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v.T) if k.startswith("w") else v).to(device) for k, v in w.items()}


def _sync(device):
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _setup_torch_sdpa(case, w, x, device, workdir):
    import torch
    import torch.nn.functional as F

    t_w = _torch_weights(w, device)
    xt = torch.from_numpy(x).to(device)
    b, t, _ = x.shape
    h, hkv, hd = case.heads, case.kv_heads, case.head_dim

    def run():
        with torch.inference_mode():
            q = F.linear(xt, t_w["w_q"], t_w["b_q"]).view(b, t, h, hd).transpose(1, 2)
            k = F.linear(xt, t_w["w_k"], t_w["b_k"]).view(b, t, hkv, hd).transpose(1, 2)
            v = F.linear(xt, t_w["w_v"], t_w["b_v"]).view(b, t, hkv, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=hkv != h)
            out = F.linear(y.transpose(1, 2).reshape(b, t, h * hd), t_w["w_o"], t_w["b_o"])
        _sync(device)
        return out

    return run, lambda out: out.cpu().numpy()


def _setup_torch_mha(case, w, x, device, workdir):
    import torch

    mha = torch.nn.MultiheadAttention(case.d_model, case.heads, batch_first=True).to(device).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([w["w_q"].T, w["w_k"].T, w["w_v"].T])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([w["b_q"], w["b_k"], w["b_v"]])))
        mha.out_proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(w["w_o"].T)))
        mha.out_proj.bias.copy_(torch.from_numpy(w["b_o"]))
    xt = torch.from_numpy(x).to(device)
    t = x.shape[1]
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=device), 1) if case.causal else None  # True = ignore

    def run():
        with torch.inference_mode():
            out = mha(xt, xt, xt, attn_mask=mask, is_causal=case.causal, need_weights=False)[0]
        _sync(device)
        return out

    return run, lambda out: out.cpu().numpy()


def _ort_session(path, device):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else \
        ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), providers=[p for p in providers if p in ort.get_available_providers()])


def _setup_ort_export(case, w, x, device, workdir, kind="sdpa"):
    path = Path(workdir) / "exports" / f"{export_key(case, kind)}.onnx"
    sess = _ort_session(path, device)
    name = sess.get_inputs()[0].name
    return (lambda: sess.run(None, {name: x})[0]), np.asarray


def _setup_ort_mha_export(case, w, x, device, workdir):
    return _setup_ort_export(case, w, x, device, workdir, kind="mha")


def _setup_numpy_plain(case, w, x, device, workdir):
    b, t, _ = x.shape
    h, hkv, hd = case.heads, case.kv_heads, case.head_dim
    causal = np.triu(np.ones((t, t), bool), 1)

    def run():
        q = (x @ w["w_q"] + w["b_q"]).reshape(b, t, h, hd).transpose(0, 2, 1, 3)
        k = np.repeat((x @ w["w_k"] + w["b_k"]).reshape(b, t, hkv, hd).transpose(0, 2, 1, 3), h // hkv, axis=1)
        v = np.repeat((x @ w["w_v"] + w["b_v"]).reshape(b, t, hkv, hd).transpose(0, 2, 1, 3), h // hkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) * np.float32(1 / np.sqrt(hd))
        if case.causal:
            s[..., causal] = -np.inf
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return (s @ v).transpose(0, 2, 1, 3).reshape(b, t, h * hd) @ w["w_o"] + w["b_o"]

    return run, np.asarray


def _attngraph_setup(backend: str, **extra):
    def setup(case, w, x, device, workdir):
        import attngraph as ag

        make = ag.causal_self_attention if case.causal else ag.self_attention
        graph = ag.run_pipeline(make(case.d_model, case.heads, num_kv_heads=case.kv_heads, dtype=case.dtype), "O1")
        if backend == "auto":  # sizes for the choice (and for autotune, timed in this setup)
            os.environ.setdefault("ATTNGRAPH_CACHE_DIR", str(Path(workdir) / "autotune"))
            options = {"sizes": {"batch": case.batch, "q_len": case.seq}}
        else:
            options = {"device": device} if "device" in ag.get_backend(backend).options else {}
        options.update(extra)
        exe = ag.compile(graph, backend, weights=w, **options)
        inputs = {"x": x}

        def run():
            return exe(inputs)["y"]
        run.note = exe.backend  # e.g. "auto:torch": what auto picked, in the results
        return run, np.asarray

    return setup


def export_key(case: BenchCase, kind: str = "sdpa") -> str:
    return f"{kind}-d{case.d_model}h{case.heads}kv{case.kv_heads}{'c' if case.causal else 'f'}{case.dtype}"


EXPORTERS = {"ort-torch-export": "sdpa", "ort-torch-mha-export": "mha"}  # impl -> torch module it exports


def _no_gqa(case: BenchCase) -> str | None:
    return "nn.MultiheadAttention has no GQA" if case.kv_heads != case.heads else None


PEERS = [
    Impl("torch-sdpa", "peer", _setup_torch_sdpa, skips_masked=True, needs=("torch",)),
    Impl("torch-mha", "peer", _setup_torch_mha, needs=("torch",), supports=_no_gqa, score_copies=1.0),
    Impl("ort-torch-export", "peer", _setup_ort_export, needs=("torch", "onnx", "onnxruntime", "onnxscript"),
         score_copies=4.0),  # decomposed graph: scores, scaled, masked, softmax live at once,
    Impl("ort-torch-mha-export", "peer", _setup_ort_mha_export, needs=("torch", "onnx", "onnxruntime", "onnxscript"),
         supports=_no_gqa, score_copies=4.0, default=False),
    Impl("numpy-plain", "peer", _setup_numpy_plain, score_copies=3.2),  # measured: 3284 MiB at B8 T2048
]


def attngraph_impls() -> list[Impl]:
    """One Impl per built-in attngraph backend; each backend says whether causal skips work."""
    from attngraph.lowering.registry import BUILTIN

    out = []
    for name in sorted(BUILTIN):
        if name == "onnx":  # one per export style
            needs = ("onnx", "onnxruntime")
            out += [Impl("attngraph-onnx", "attngraph", _attngraph_setup("onnx"), needs=needs),
                    Impl("attngraph-onnx-attention", "attngraph", _attngraph_setup("onnx", style="attention"),
                         needs=needs, default=False),
                    Impl("attngraph-onnx-decomposed", "attngraph", _attngraph_setup("onnx", style="decomposed"),
                         needs=needs, score_copies=4.0, default=False),
                    Impl("attngraph-onnx-contrib", "attngraph", _attngraph_setup("onnx", style="contrib"),
                         needs=needs, supports=lambda c: "contrib MHA has no GQA" if c.kv_heads != c.heads else None,
                         default=False)]
            continue
        out.append(Impl(f"attngraph-{name}", "attngraph", _attngraph_setup(name),
                        skips_masked=name in SKIPS_MASKED, needs=()))
    out += [Impl("attngraph-auto", "attngraph", _attngraph_setup("auto"), needs=()),
            Impl("attngraph-auto-tuned", "attngraph", _attngraph_setup("auto", autotune=True), needs=())]
    return out


SKIPS_MASKED: set[str] = {"numba", "torch"}  # attngraph backends whose causal kernel skips blocks above the diagonal


def all_impls() -> dict[str, Impl]:
    return {i.name: i for i in PEERS + attngraph_impls()}
