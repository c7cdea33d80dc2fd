"""The attention function attngraph registers with transformers' ``AttentionInterface``.

transformers calls it from every attention module with the module, its projected, rotated (and QK-normed) Q, K
and V as (batch, heads, tokens, head dim) tensors, after the module updated its cache: K/V are the cache's keys
as the layer reads them (``DynamicCache``: past + new; ``StaticCache``: the whole preallocated buffer). The
function runs the layer's core-attention graph on the chosen backend and returns ``(output (B, q, H, D),
weights or None)`` as ``sdpa_attention_forward`` does.

No copy of the cache: on CPU a tensor's ``.numpy()`` is a view of its memory, so a static cache's buffer reaches
the numpy, numba and onnx backends as the very array transformers writes, and the torch backend takes the tensor
itself; ``key_lengths`` tells the graph which keys hold tokens, and keys past them are never read. (onnxruntime's
``run`` reads a C-contiguous NumPy input in place: measured, 0.01 ms for a 512 MiB input; a strided one is copied
once. Its CPU ``Attention`` kernel then still walks the whole buffer, so on that backend a step grows with
``max_len``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attngraph.errors import UnsupportedConfig
from attngraph.frontends.transformers.hf_executables import Variant, executable, takes_tensors
from attngraph.frontends.transformers.hf_layers import LayerPlan, layer_plan
from attngraph.frontends.transformers.hf_masks import MaskInfo, mask_info

_FUNCTIONS: dict[str, Any] = {}
_CHECKED: set[tuple] = set()  # call forms whose inputs passed the executable's checks once (see _call)


def attention_function(backend: str) -> Any:
    """The attention function running every layer on ``backend`` ("auto" or a backend name); one per backend, so
    registering it again changes nothing."""
    if backend not in _FUNCTIONS:
        def attngraph_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                                scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
            return run_layer(backend, module, query, key, value, attention_mask, scaling, dropout, kwargs)

        attngraph_attention.__qualname__ = f"attngraph_attention[{backend}]"
        _FUNCTIONS[backend] = attngraph_attention
    return _FUNCTIONS[backend]


def run_layer(backend: str, module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
              scaling: float | None, dropout: float, kwargs: dict) -> tuple[Any, Any]:
    """One attention call: the layer's plan, the call's variant, the compiled graph, the output."""
    plan = layer_plan(module)
    _check_call(plan, scaling, dropout, kwargs)
    q_len, kv_len = int(query.shape[2]), int(key.shape[2])
    info = mask_info(attention_mask, q_len, kv_len)
    _check_pattern(plan, info)
    lengths = info.valid != kv_len or (plan.masked_by_position and q_len != kv_len)
    variant = Variant(lengths=lengths, padding=info.padding is not None, weights=wants_weights(kwargs))
    which = (backend, plan.config, variant, str(query.device))
    ex = executable(*which)
    out = _call(ex, which, _feed(plan, variant, info, query, key, value, tensors=takes_tensors(ex)), query, value)
    y = _tensor(out["y"]).transpose(1, 2)  # (B, H, q, D) -> (B, q, H, D), as the modules expect
    return y, (_tensor(out["attn_weights"]) if variant.weights else None)


def _feed(plan: LayerPlan, variant: Variant, info: MaskInfo, query: Any, key: Any, value: Any, *,
          tensors: bool) -> dict[str, Any]:
    """The graph's inputs: Q/K/V as they are (tensors for the torch backend, NumPy views of them otherwise)."""
    import torch

    convert = (lambda t: t.detach()) if tensors else (lambda t: t.detach().numpy())
    feed = {"q": convert(query), "k": convert(key), "v": convert(value)}
    batch = int(query.shape[0])
    if variant.lengths:
        feed["key_lengths"] = np.full(batch, info.valid, np.int64)
    if variant.padding:
        feed["attn_mask"] = info.padding.reshape(batch, 1, 1, info.kv_length)
    if plan.config.sinks:
        feed["sinks"] = convert(plan.sinks)
    if tensors:
        feed = {n: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for n, a in feed.items()}
    return feed


def _call(ex: Any, which: tuple, feed: dict[str, Any], query: Any, value: Any) -> dict[str, Any]:
    """Run ``ex`` (the executable of ``which``) on ``feed``. The first call of each form (executable, batch, heads,
    head dims, dtype) goes through the executable's input checks; later ones, whose feed this module builds the same
    way from the same layer, skip them (about 50 us a call, a tenth of a decode step's attention) and bind the sizes
    directly."""
    batch, heads, q_len, _ = (int(d) for d in query.shape)
    form = (which, batch, heads, int(feed["k"].shape[1]), int(query.shape[3]), int(value.shape[3]), str(query.dtype))
    if form not in _CHECKED:
        out = ex(feed)
        _CHECKED.add(form)
        return out
    return ex.run(feed, {"batch": batch, "q_len": q_len, "kv_len": int(feed["k"].shape[2])})


def _tensor(result: Any) -> Any:
    import torch

    return result if isinstance(result, torch.Tensor) else torch.from_numpy(np.asarray(result))


def wants_weights(kwargs: dict) -> bool:
    """Whether the caller asked for the attention weights: ``output_attentions`` passed down, or transformers'
    output recorder collecting them (models that take ``output_attentions`` themselves and record it by hook)."""
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collecting = _active_collector.get()
    return bool(collecting) and "attentions" in collecting


def _check_call(plan: LayerPlan, scaling: float | None, dropout: float, kwargs: dict) -> None:
    """The call's own arguments must say what the layer's spec says (never run a different attention)."""
    where = f"attention layer {plan.path}"
    if dropout:
        raise UnsupportedConfig(f"{where}: attention dropout {dropout} (training mode) is not run by attngraph; "
                                "call model.eval()")
    if scaling is not None and abs(float(scaling) - plan.config.effective_scale) > 1e-6 * plan.config.effective_scale:
        raise UnsupportedConfig(f"{where}: called with scaling {scaling}, but its spec reads "
                                f"{plan.config.effective_scale}; call attngraph.transformers.use(model) again")
    cap, ours = kwargs.get("softcap") or None, plan.config.softcap or None
    if (cap is None) != (ours is None) or (cap is not None and abs(float(cap) - ours) > 1e-9 * ours):
        raise UnsupportedConfig(f"{where}: called with softcap {cap}, its spec reads {plan.config.softcap}")
    if (kwargs.get("s_aux") is not None) != bool(plan.config.sinks):
        raise UnsupportedConfig(f"{where}: called with{'out' if plan.config.sinks else ''} attention sinks (s_aux), "
                                f"but its spec reads sinks={plan.config.sinks}")
    if kwargs.get("position_bias") is not None:
        raise UnsupportedConfig(f"{where}: a dense position_bias reaches the attention function; attngraph does not "
                                "add it (import the layer with attngraph.from_transformers)")


def _check_pattern(plan: LayerPlan, info: MaskInfo) -> None:
    """transformers' mask pattern for this layer must be the one its spec builds."""
    if info.pattern is None:
        return
    c = plan.config
    ours = "sliding" if c.window else "causal" if c.causal else "bidirectional"
    window = c.window[0] + 1 if c.window else None
    if (ours, window) != (info.pattern, info.window):
        raise UnsupportedConfig(
            f"attention layer {plan.path}: transformers masks it as {info.pattern}"
            f"{f' (window {info.window})' if info.window else ''}, but its family spec reads {ours}"
            f"{f' (window {window})' if window else ''}; the family table (attngraph/frontends/transformers/"
            "families.py) disagrees with this model's config")
