"""Benchmark cases (self-attention with projections) and their honest FLOP counts."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchCase:
    """One problem: ``x (batch, seq, d_model)`` through multi-head self-attention."""

    d_model: int = 512
    heads: int = 8
    kv_heads: int = 8
    batch: int = 1
    seq: int = 128
    causal: bool = False
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def key(self) -> str:
        gqa = f"/kv{self.kv_heads}" if self.kv_heads != self.heads else ""
        return (f"d{self.d_model}h{self.heads}{gqa} B{self.batch} T{self.seq} "
                f"{'causal' if self.causal else 'full'} {self.dtype}")

    def flops(self, skips_masked: bool) -> float:
        """Multiply-adds x 2 actually needed; causal halves the attention part only for kernels that skip it."""
        b, t, d, hd = self.batch, self.seq, self.d_model, self.head_dim
        proj = 2 * b * t * d * (self.heads * hd * 2 + self.kv_heads * hd * 2)  # q, o and k, v
        attn = 2 * 2 * b * self.heads * t * t * hd                             # q k^T and p v
        if self.causal and skips_masked:
            attn *= (t + 1) / (2 * t)
        return float(proj + attn)

    def to_dict(self) -> dict:
        return asdict(self)


def grid(d_models, heads, batches, seqs, causals=(False, True), dtypes=("float32",), kv_heads=None):
    """Every combination, as BenchCases."""
    out = []
    for d, h, b, t, c, dt in itertools.product(d_models, heads, batches, seqs, causals, dtypes):
        out.append(BenchCase(d, h, kv_heads or h, b, t, c, dt))
    return out


DEFAULT = grid([512], [8], [1, 8], [128, 512, 1024, 2048, 4096])
QUICK = grid([64], [4], [2], [32, 64])
