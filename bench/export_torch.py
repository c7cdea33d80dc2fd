"""The torch module users would export: explicit projections + SDPA, exported with dynamic batch/seq."""

from __future__ import annotations

from pathlib import Path

from bench.cases import BenchCase
from bench.workload import make_weights


def sdpa_module(case: BenchCase, seed: int = 0):
    import torch
    import torch.nn.functional as F

    w = make_weights(case, seed)

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("q", "k", "v", "o"):
                lin = torch.nn.Linear(*w[f"w_{name}"].shape)
                lin.weight.data = torch.from_numpy(w[f"w_{name}"].T.copy())
                lin.bias.data = torch.from_numpy(w[f"b_{name}"].copy())
                setattr(self, name, lin)

        def forward(self, x):
            b, t, _ = x.shape
            h, hkv, hd = case.heads, case.kv_heads, case.head_dim
            q = self.q(x).view(b, t, h, hd).transpose(1, 2)
            k = self.k(x).view(b, t, hkv, hd).transpose(1, 2)
            v = self.v(x).view(b, t, hkv, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=hkv != h)
            return self.o(y.transpose(1, 2).reshape(b, t, h * hd))

    return SelfAttention().eval()


def mha_module(case: BenchCase, seed: int = 0):
    """nn.MultiheadAttention with the case's weights; causal via a mask built from the input's length."""
    import numpy as np
    import torch

    w = make_weights(case, seed)
    mha = torch.nn.MultiheadAttention(case.d_model, case.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([w["w_q"].T, w["w_k"].T, w["w_v"].T])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([w["b_q"], w["b_k"], w["b_v"]])))
        mha.out_proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(w["w_o"].T)))
        mha.out_proj.bias.copy_(torch.from_numpy(w["b_o"]))

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            mask = None
            if case.causal:  # True = ignore, nn.MultiheadAttention's polarity
                t = x.shape[1]
                mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]

    return Wrapped().eval()


def export_module(case: BenchCase, path: Path, kind: str = "sdpa") -> None:
    """torch.onnx.export (the default dynamo exporter, opset 18) with dynamic batch and sequence axes."""
    import torch

    module = sdpa_module(case) if kind == "sdpa" else mha_module(case)
    x = torch.zeros(2, 16, case.d_model, dtype=getattr(torch, case.dtype))
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=dims, opset_version=18)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    program.save(str(tmp))
    tmp.replace(path)
