"""``from_torch``: a user's ``torch.nn.MultiheadAttention`` as an attngraph graph plus weights.

    imported = attngraph.from_torch(mha, key_padding_mask="bool", need_weights=True)
    graph, weights = imported                  # the graph and its weights
    inputs = imported.inputs(query, key, value, key_padding_mask=kpm)   # torch-style arguments
    y, attn = imported.outputs(attngraph.compile(graph, "onnx", weights=weights)(inputs))

The graph is always batch-first; ``inputs``/``outputs`` move a ``batch_first=False`` module's
(L, N, E) layout in and out, flip torch's True = ignore bool masks into our True = attend ones
(``attngraph.frontends.torch_masks``) and average the attention weights over heads when torch would.

Fully masked rows (every key masked for a query): torch returns NaN there (its fast path and its
softmax both divide 0 by 0); attngraph returns 0 for the output row and for that row's weights, the
convention of attngraph.ir.semantics and of ONNX ``Attention``, so a padded query never poisons what follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends import torch_masks
from attngraph.frontends.constructors import AttentionConfig, build_attention
from attngraph.ir import Graph
from attngraph.lowering.weights import Weights

_DTYPES = {"torch.float32": "float32", "torch.float64": "float64", "torch.float16": "float16",
           "torch.bfloat16": "bfloat16"}
_MASK_KINDS = (None, "bool", "float")


@dataclass
class ImportedMHA:
    """The imported graph and weights, and the adapters between torch's calling convention and ours."""

    graph: Graph
    weights: Weights
    num_heads: int
    batch_first: bool
    self_attention: bool
    key_padding_mask: str | None
    attn_mask: str | None
    need_weights: bool
    average_attn_weights: bool

    def __iter__(self):
        return iter((self.graph, self.weights))

    def _to_batch_first(self, x: Any) -> np.ndarray:
        a = torch_masks._array(x)
        return a if self.batch_first or a.ndim != 3 else a.transpose(1, 0, 2)

    def inputs(self, query: Any, key: Any = None, value: Any = None, *, key_padding_mask: Any = None,
               attn_mask: Any = None) -> dict[str, np.ndarray]:
        """The graph's inputs from the arguments ``module.forward`` takes (tensors or arrays, module layout)."""
        for name, given, declared in (("key_padding_mask", key_padding_mask, self.key_padding_mask),
                                      ("attn_mask", attn_mask, self.attn_mask)):
            if (given is None) != (declared is None):
                raise ConfigError(f"{name} was {'declared' if declared else 'not declared'} at import "
                                  f"({name}={declared!r}) but {'not ' if given is None else ''}given here; "
                                  f"re-import with {name}='bool' or 'float', or pass it the same way")
        out = {}
        if self.self_attention:
            out["x"] = self._to_batch_first(query)
        else:
            out.update(query=self._to_batch_first(query), key=self._to_batch_first(key),
                       value=self._to_batch_first(value))
        dtype = next(iter(out.values())).dtype
        mask = self._mask(key_padding_mask, attn_mask, dtype)
        if mask is not None:
            out["attn_mask"] = mask
        return out

    def _mask(self, kpm: Any, am: Any, dtype) -> np.ndarray | None:
        if kpm is None and am is None:
            return None
        if self.graph_mask == "bool":  # every declared mask is bool: one keep mask, True = attend
            keeps = []
            if kpm is not None:
                keeps.append(torch_masks.key_padding_to_keep(kpm))
            if am is not None:
                keeps.append(torch_masks.attn_mask_to_keep(am, self.num_heads))
            keep = keeps[0] if len(keeps) == 1 else keeps[0] & keeps[1]
            return self._fit(keep)
        bias = None  # any float mask: torch turns bool ones into -inf and adds them all
        if kpm is not None:
            bias = torch_masks.key_padding_to_bias(kpm, dtype)
        if am is not None:
            am_bias = torch_masks.attn_mask_to_bias(am, self.num_heads, dtype)
            bias = am_bias if bias is None else bias + am_bias
        return self._fit(bias)

    def _fit(self, mask: np.ndarray) -> np.ndarray:
        """Broadcast to the declared mask shape's rank-4 form when two masks were combined."""
        rank = next(v for v in self.graph.inputs if v.name == "attn_mask").type.rank
        if mask.ndim == rank:
            return np.ascontiguousarray(mask)
        return np.ascontiguousarray(mask.reshape((1,) * (rank - mask.ndim) + mask.shape))

    @property
    def graph_mask(self) -> str | None:
        kinds = {k for k in (self.key_padding_mask, self.attn_mask) if k}
        return None if not kinds else ("bool" if kinds == {"bool"} else "additive")

    def outputs(self, result: dict[str, Any]) -> Any:
        """The graph's outputs as the module returns them: ``y`` in the module's layout, and
        ``(y, weights)`` when weights were asked for (averaged over heads when torch would)."""
        y = result["y"]
        y = y if self.batch_first else np.asarray(y).transpose(1, 0, 2)
        if not self.need_weights:
            return y
        w = np.asarray(result["attn_weights"])
        return y, (w.mean(axis=1, dtype=np.float32).astype(w.dtype) if self.average_attn_weights else w)


def from_torch(module: Any, *, self_attention: bool = False, causal: bool = False,
               key_padding_mask: str | None = None, attn_mask: str | None = None, attn_mask_per_head: bool = False,
               need_weights: bool = False, average_attn_weights: bool = True, name: str | None = None) -> ImportedMHA:
    """Import ``torch.nn.MultiheadAttention`` with its weights.

    ``self_attention``: one input ``x`` (query = key = value) instead of ``query``/``key``/``value``.
    ``key_padding_mask`` / ``attn_mask``: None, "bool" or "float": the masks you will pass, as torch
    takes them (``attn_mask_per_head``: a 3-D (N*num_heads, L, S) attn_mask). ``causal``: a causal
    graph (torch's ``is_causal=True`` with a causal ``attn_mask``). ``need_weights`` /
    ``average_attn_weights``: as in ``forward``. Refuses what the IR cannot express, by name.
    """
    import torch

    if not isinstance(module, torch.nn.MultiheadAttention):
        raise ConfigError(f"from_torch imports torch.nn.MultiheadAttention, got {type(module).__name__}; "
                          "for other attention modules export them to ONNX and use attngraph.from_onnx")
    for option, value in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if value not in _MASK_KINDS:
            raise ConfigError(f"{option} must be one of {_MASK_KINDS}, got {value!r}")
    m = module
    if m.bias_k is not None or m.bias_v is not None:
        raise UnsupportedConfig("nn.MultiheadAttention(add_bias_kv=True) is not supported: it appends a learned "
                          "key/value row to every sequence, which attngraph's IR cannot express; fold it "
                          "into your inputs or build the module with add_bias_kv=False")
    if m.add_zero_attn:
        raise UnsupportedConfig("nn.MultiheadAttention(add_zero_attn=True) is not supported: it appends an all-zero "
                          "key/value row that attngraph's IR cannot express; build it with add_zero_attn=False")
    if m.training and m.dropout > 0:
        raise ConfigError(f"the module is in training mode with dropout={m.dropout}; attngraph graphs are "
                          "inference graphs: call module.eval() first")
    dtype = _DTYPES.get(str(m.out_proj.weight.dtype))
    if dtype is None:
        raise UnsupportedConfig(f"module dtype {m.out_proj.weight.dtype} is not supported; use float16, bfloat16, "
                          "float32 or float64")
    e, kdim, vdim = m.embed_dim, m.kdim, m.vdim
    if self_attention and (kdim != e or vdim != e):
        raise ConfigError(f"self_attention=True needs kdim == vdim == embed_dim, got kdim={kdim}, vdim={vdim}, "
                          f"embed_dim={e}; import it as cross attention (self_attention=False)")
    kv = "q_len" if self_attention else "kv_len"
    kinds = {k for k in (key_padding_mask, attn_mask) if k}
    mask = None if not kinds else ("bool" if kinds == {"bool"} else "additive")
    mask_shape = None
    if key_padding_mask and attn_mask:
        mask_shape = ("batch", m.num_heads if attn_mask_per_head else 1, "q_len", kv)
    elif key_padding_mask:
        mask_shape = ("batch", 1, 1, kv)
    elif attn_mask:
        mask_shape = ("batch", m.num_heads, "q_len", kv) if attn_mask_per_head else ("q_len", kv)
    has_bias = m.in_proj_bias is not None
    if has_bias != (m.out_proj.bias is not None):
        raise UnsupportedConfig("the module has bias on the input projections but not the output one (or the "
                          "reverse); attngraph's bias knob covers all four projections together")
    config = AttentionConfig(kind="self" if self_attention else "cross", num_heads=m.num_heads, d_model=e,
                             kdim=None if self_attention else kdim, vdim=None if self_attention else vdim,
                             bias=has_bias, causal=causal, mask=mask, mask_shape=mask_shape,
                             score_outputs=("weights",) if need_weights else (), dtype=dtype,
                             name=name or "torch_mha")
    graph = build_attention(config)
    weights = Weights(_weights(m, has_bias))
    weights.check(graph)
    return ImportedMHA(graph, weights, m.num_heads, m.batch_first, self_attention, key_padding_mask, attn_mask,
                       need_weights, average_attn_weights)


def _weights(m, has_bias: bool) -> dict[str, np.ndarray]:
    """torch's (out, in) projection matrices as attngraph's (in, out) ones, biases as they are."""
    e = m.embed_dim

    def arr(t) -> np.ndarray:
        return np.ascontiguousarray(torch_masks._array(t.detach()).astype(_np_dtype(t)))

    if m._qkv_same_embed_dim:
        wq, wk, wv = m.in_proj_weight[:e], m.in_proj_weight[e:2 * e], m.in_proj_weight[2 * e:]
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    out = {"w_q": arr(wq.T), "w_k": arr(wk.T), "w_v": arr(wv.T), "w_o": arr(m.out_proj.weight.T)}
    if has_bias:
        b = m.in_proj_bias
        out.update(b_q=arr(b[:e]), b_k=arr(b[e:2 * e]), b_v=arr(b[2 * e:]), b_o=arr(m.out_proj.bias))
    return out


def _np_dtype(t) -> np.dtype:
    from attngraph.ir import DType
    from attngraph.ir.dtypes import to_numpy

    return to_numpy(DType(_DTYPES[str(t.dtype)]))
