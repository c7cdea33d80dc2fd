"""``LayerPlan``: one attention module of a transformers model, as the attngraph attention implementation runs it.

The module projects, rotates, normalises and caches Q/K/V itself; what reaches an attention function is the
attention core. So a layer becomes a core-attention graph (``kind="core"``, (B, H, S, D) inputs) with the
causal, sliding-window, softcap, sinks, scale and GQA its family's ``LayerSpec`` reads (``families.py``, the
table ``from_transformers`` uses), and layers with equal specs share one graph. What the core cannot take from
transformers' attention interface is refused by name (``refusal``).
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, replace
from typing import Any

from attngraph.errors import UnsupportedConfig
from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.transformers.importer import layer_spec
from attngraph.frontends.transformers.spec import LayerSpec

DTYPES = {"torch.float32": "float32", "torch.float64": "float64"}
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CALLS_INTERFACE: dict[type, bool] = {}


@dataclass(frozen=True)
class LayerPlan:
    """One module's core attention: its ``config`` (the graph every layer of this kind shares), its sinks
    (per layer: they are an input of the shared graph, not a weight) and where it sits in the model."""

    path: str
    spec: LayerSpec
    config: AttentionConfig
    sinks: Any = None  # the module's sink logits, a (heads,) tensor (GPT-OSS)

    @property
    def masked_by_position(self) -> bool:
        """Causal or windowed: the queries' place among the keys matters."""
        return self.config.causal or self.config.window is not None


def layer_plan(module: Any, config: Any = None, path: str | None = None) -> LayerPlan:
    """The plan of ``module`` (read once, then cached for the module's lifetime); ``UnsupportedConfig`` naming
    the layer, the feature and the fix where the attngraph attention implementation cannot run it."""
    plan = _PLANS.get(module)
    if plan is None:
        plan = _PLANS[module] = _read(module, config, path)
    elif path and plan.path != path:  # first read at a call, without the model around it: name it by its path now
        plan = _PLANS[module] = replace(plan, path=path)
    return plan


def _read(module: Any, config: Any, path: str | None) -> LayerPlan:
    where = path or f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')})"
    spec, _ = layer_spec(module, config)
    why = refusal(module, spec)
    if why:
        raise UnsupportedConfig(f"attention layer {where}: {why}")
    dtype = DTYPES.get(str(next(module.parameters()).dtype))
    if dtype is None:
        raise UnsupportedConfig(f"attention layer {where}: dtype {next(module.parameters()).dtype} is not run by the "
                                "attngraph attention implementation (float32 and float64 are); call model.float()")
    sinks = getattr(module, "sinks", None) if spec.sinks else None
    return LayerPlan(where, spec, core_config(spec, dtype), sinks)


def core_config(spec: LayerSpec, dtype: str) -> AttentionConfig:
    """The core-attention config of ``spec``: (B, H, S, D) q/k/v in, GQA, the layer's causal mask, sliding window
    (transformers' W keys: the query and W - 1 before it), scale, softcap and sinks. The key padding, the
    queries' placement and the weights output are added per call (``hf_executables.Variant``)."""
    return AttentionConfig(kind="core", layout="4d", num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                           head_dim=spec.head_dim, bias=False, causal=spec.causal,
                           window=(spec.window - 1, 0) if spec.window else None, scale=float(spec.scale),
                           softcap=spec.softcap, sinks=spec.sinks, dtype=dtype)


def refusal(module: Any, spec: LayerSpec) -> str | None:
    """Why the attngraph attention implementation cannot run this layer exactly, with the fix; None if it can."""
    if not calls_attention_interface(type(module)):
        return (f"{type(module).__name__} computes attention inside its own forward and never calls transformers' "
                "AttentionInterface, so no attention implementation can replace it; import its layers one by one "
                "with attngraph.from_transformers, or keep attn_implementation='eager'")
    if spec.kind == "cross":
        return ("cross attention (encoder states as keys) is not run by the attngraph attention implementation; "
                "import the layer with attngraph.from_transformers, or keep attn_implementation='sdpa' for this model")
    if spec.alibi:
        return ("ALiBi reaches transformers' attention functions folded into a dense float mask, which attngraph's "
                "compact mask does not carry; import the layer with attngraph.from_transformers (it computes ALiBi "
                "itself), or keep attn_implementation='sdpa'")
    if spec.rel_bias:
        return ("T5's relative position bias reaches the attention function as a dense position_bias tensor; import "
                "the layer with attngraph.from_transformers (it computes the bias itself)")
    if spec.cache_heads:
        return "this Falcon layer caches its keys expanded to every query head; use transformers >= 5.25"
    return None


def calls_attention_interface(cls: type) -> bool:
    """Whether the module class's forward dispatches through ``ALL_ATTENTION_FUNCTIONS`` (read from its source,
    as transformers' own ``_can_set_attn_implementation`` does for the model class)."""
    if cls not in _CALLS_INTERFACE:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _CALLS_INTERFACE[cls] = "ALL_ATTENTION_FUNCTIONS" in source
    return _CALLS_INTERFACE[cls]
