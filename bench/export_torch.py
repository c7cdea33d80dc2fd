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


def export_sdpa_module(case: BenchCase, path: Path) -> None:
    """torch.onnx.export (the default dynamo exporter, opset 18) with dynamic batch and sequence axes."""
    import torch

    module = sdpa_module(case)
    x = torch.zeros(2, 16, case.d_model, dtype=getattr(torch, case.dtype))
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=dims, opset_version=18)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    program.save(str(tmp))
    tmp.replace(path)
