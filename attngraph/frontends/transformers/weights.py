"""Weight layouts of Hugging Face attention modules, as attngraph's (in, out) projection weights.

``nn.Linear`` keeps (out, in) matrices, so each is transposed; GPT-2's ``Conv1D`` already keeps (in, out).
The fused layouts, by name (``LayerSpec.layout``):

* ``separate``: one projection per Q, K, V, O (Llama, Mistral, Qwen, Gemma, GPT-OSS, OPT, BART, Whisper, T5, BERT);
* ``rows``: one fused matrix whose rows are ``[q | k | v]`` (Phi-3, MPT's ``Wqkv``, Falcon multi-query);
* ``per_head``: rows interleaved per head, ``W.view(H, 3, hd, D)`` (GPT-NeoX, Bloom, Falcon without multi-query);
* ``grouped``: rows grouped per kv head, ``W.view(Hkv, H/Hkv + 2, hd, D)`` = ``[q_0 .. q_{G-1}, k, v]`` (Falcon
  ``new_decoder_architecture``);
* ``conv1d``: GPT-2's ``c_attn`` (D, 3D) with columns ``[q | k | v]``; ``conv1d_cross``: ``q_attn`` and ``c_attn``
  (D, 2D) with columns ``[k | v]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attngraph.errors import UnsupportedConfig
from attngraph.frontends.transformers.spec import LayerSpec

LAYOUTS = ("separate", "rows", "per_head", "grouped", "conv1d", "conv1d_cross")


def projections(module: Any, spec: LayerSpec) -> dict[str, tuple[Any, Any]]:
    """``{"q"|"k"|"v"|"o": (weight as (in, out), bias or None)}`` as torch tensors; "o" is left out for a
    module without an output projection (BERT's self-attention)."""
    if spec.layout not in LAYOUTS:
        raise UnsupportedConfig(f"weight layout {spec.layout!r} is unknown; known: {LAYOUTS}")
    names = spec.projections
    out_name = names[-1]
    if spec.layout == "separate":
        found = {tag: _linear(getattr(module, n)) for tag, n in zip("qkv", names[:3], strict=True)}
    elif spec.layout.startswith("conv1d"):
        found = _conv1d(module, spec)
    else:
        w, b = _linear_raw(getattr(module, names[0]))
        found = {tag: (wt.T, bt) for tag, (wt, bt) in _split_rows(w, b, spec).items()}
    if out_name is not None:
        out = getattr(module, out_name)
        found["o"] = (out.weight, out.bias) if spec.layout.startswith("conv1d") else _linear(out)
    return found


def bias_letters(found: dict[str, tuple[Any, Any]]) -> str:
    """The projections that have a bias, as ``AttentionConfig.bias`` letters ("qkvo", "qvo", ...)."""
    return "".join(tag for tag in "qkvo" if tag in found and found[tag][1] is not None)


def to_arrays(module: Any, spec: LayerSpec, dtype: np.dtype, rel_table: Any = None) -> dict[str, np.ndarray]:
    """Every param of the graph ``spec`` builds, as NumPy arrays of ``dtype``."""
    found = projections(module, spec)
    arrays = {}
    for tag, (w, b) in found.items():
        arrays[f"w_{tag}"] = _array(w, dtype)
        if b is not None:
            arrays[f"b_{tag}"] = _array(b, dtype)
    if spec.context_only:  # the module returns the context: an exact identity output projection (no bias)
        arrays["w_o"] = np.eye(spec.num_heads * spec.head_dim, dtype=dtype)
    if spec.qk_norm:
        arrays["q_norm"] = _array(module.q_norm.weight, dtype)
        arrays["k_norm"] = _array(module.k_norm.weight, dtype)
    if spec.sinks:
        arrays["sinks"] = _array(module.sinks, dtype)
    if spec.rel_bias:
        arrays["rel_table"] = _array(rel_table, dtype)  # (num_buckets, heads), as T5's Embedding stores it
    return arrays


def _linear_raw(lin: Any) -> tuple[Any, Any]:
    return lin.weight, getattr(lin, "bias", None)


def _linear(lin: Any) -> tuple[Any, Any]:
    w, b = _linear_raw(lin)
    return w.T, b


def _split_rows(w: Any, b: Any, spec: LayerSpec) -> dict[str, tuple[Any, Any]]:
    """A fused (out, in) matrix and its bias split into Q, K and V rows, per the layout."""
    h, hkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    d_in = w.shape[1]
    if spec.layout == "rows":
        sizes = (h * hd, hkv * hd, hkv * hd)
        ws = w.split(sizes, dim=0)
        bs = b.split(sizes, dim=0) if b is not None else (None,) * 3
        return dict(zip("qkv", zip(ws, bs, strict=True), strict=True))
    if spec.layout == "per_head":
        wv = w.reshape(h, 3, hd, d_in)
        bv = b.reshape(h, 3, hd) if b is not None else None
        return {tag: (wv[:, i].reshape(h * hd, d_in), None if bv is None else bv[:, i].reshape(h * hd))
                for i, tag in enumerate("qkv")}
    g = h // hkv  # grouped: per kv head, its G query heads then its key and its value
    wv = w.reshape(hkv, g + 2, hd, d_in)
    bv = b.reshape(hkv, g + 2, hd) if b is not None else None
    parts = {"q": (slice(0, g), h), "k": (slice(g, g + 1), hkv), "v": (slice(g + 1, g + 2), hkv)}
    return {tag: (wv[:, s].reshape(n * hd, d_in), None if bv is None else bv[:, s].reshape(n * hd))
            for tag, (s, n) in parts.items()}


def _conv1d(module: Any, spec: LayerSpec) -> dict[str, tuple[Any, Any]]:
    """GPT-2's Conv1D projections, already (in, out): split by columns."""
    d = spec.num_heads * spec.head_dim
    c_attn = module.c_attn
    if spec.layout == "conv1d":
        return {tag: (c_attn.weight[:, i * d:(i + 1) * d], c_attn.bias[i * d:(i + 1) * d])
                for i, tag in enumerate("qkv")}
    q = module.q_attn
    return {"q": (q.weight, q.bias), "k": (c_attn.weight[:, :d], c_attn.bias[:d]),
            "v": (c_attn.weight[:, d:], c_attn.bias[d:])}


def _array(t: Any, dtype: np.dtype) -> np.ndarray:
    """A tensor (or array) as a contiguous NumPy array of ``dtype`` (bfloat16 goes through float32)."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        t = t.float() if str(t.dtype) == "torch.bfloat16" else t
        t = t.numpy()
    return np.ascontiguousarray(np.asarray(t).astype(dtype))
