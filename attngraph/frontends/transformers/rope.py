"""Rotary embeddings of Hugging Face models: the parameters a layer uses, checked against the model's own rotary
module, and the cos/sin caches for the schemes the graph cannot compute itself.

Hugging Face keeps the scheme in ``config.rope_parameters`` (``{"rope_type", "rope_theta", ...}``, or one such
dict per layer type, Gemma 3); older configs spell it ``rope_scaling`` and ``rope_theta``. The graph computes
``default``, ``linear``, ``llama3`` and ``yarn`` frequencies at build time; every other type (``dynamic``,
``longrope``, ...) depends on the positions of the call, so the adapter asks the model's rotary module for the
cos/sin table at each call and the graph reads it at the positions (``rope_cache=True``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from attngraph.errors import ConfigError
from attngraph.frontends.positions import ROPE_TYPES, rope_frequencies
from attngraph.frontends.transformers.spec import RopeSpec

_NOT_SCALING = ("rope_theta", "partial_rotary_factor", "rope_type", "type")


def rope_parameters(config: Any, layer_type: str | None = None) -> dict:
    """The rope parameters one layer uses: the per-layer-type entry where the config has one (Gemma 3)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:  # an older config: rope_scaling and rope_theta side by side
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    if "rope_theta" not in params:
        raise ConfigError(f"cannot read rope_theta from the config's rope parameters {params}; pass the config "
                          "the model was built with (config=model.config)")
    return params


def rope_spec(module: Any, config: Any, head_dim: int, rotary_dim: int | None = None,
              layer_type: str | None = None) -> RopeSpec:
    """The layer's ``RopeSpec``.

    Static schemes are computed in the graph when our frequencies equal the rotary module's (checked here,
    so a scheme read differently is never silently wrong); otherwise the spec asks for cos/sin caches."""
    params = rope_parameters(config, layer_type)
    kind = str(params.get("rope_type", params.get("type", "default")))
    scaling = {k: v for k, v in params.items() if k not in _NOT_SCALING} if kind != "default" else None
    if scaling is not None:
        scaling["rope_type"] = kind
    rd = int(rotary_dim or head_dim)
    per_layer_type = isinstance((getattr(config, "rope_parameters", None) or {}).get(layer_type), dict)
    per_type = layer_type if per_layer_type else None
    rotary = rotary_module(module, config)
    spec = RopeSpec(rotary_dim=rd, theta=float(params["rope_theta"]), scaling=scaling, layer_type=per_type)
    if kind not in ROPE_TYPES or not _same_frequencies(spec, rotary):
        spec = RopeSpec(rotary_dim=rd, theta=spec.theta, scaling=scaling, cache=True, layer_type=per_type)
        if rotary is None:
            raise ConfigError(f"rope type {kind!r} needs the model's rotary module for cos/sin caches, and none was "
                              f"found beside {type(module).__name__}")
    return spec


def rotary_module(module: Any, config: Any) -> Any:
    """The family's rotary embedding class (``<Family>RotaryEmbedding`` beside the attention class), built from
    ``config``; None when the family has none."""
    home = type(module).__module__
    classes = [v for k, v in vars(sys.modules[home]).items()
               if k.endswith("RotaryEmbedding") and isinstance(v, type) and v.__module__ == home]
    if not classes:
        return None
    return classes[0](config).eval()


def _frequencies(rotary: Any, layer_type: str | None) -> tuple[np.ndarray, float]:
    prefix = f"{layer_type}_" if layer_type else ""
    inv = getattr(rotary, f"{prefix}inv_freq")
    return inv.detach().double().cpu().numpy(), float(getattr(rotary, f"{prefix}attention_scaling"))


def _same_frequencies(spec: RopeSpec, rotary: Any) -> bool:
    """Whether the graph's frequencies for ``spec`` are the rotary module's (to float32 rounding)."""
    if spec.cache:
        return False
    try:
        ours, scaling = rope_frequencies(spec.rotary_dim, spec.theta, spec.scaling)
    except ConfigError:
        return False
    if rotary is None:
        return True
    theirs, their_scaling = _frequencies(rotary, spec.layer_type)
    return (theirs.shape == (len(ours),) and np.allclose(ours, theirs, rtol=2e-6, atol=0)
            and math.isclose(scaling, their_scaling, rel_tol=2e-6))


def cos_sin_cache(rotary: Any, spec: RopeSpec, positions: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """``(cos_cache, sin_cache)`` of shape (max position + 1, rotary_dim / 2) from the model's rotary module,
    asked for positions 0..max, so that schemes switching on the largest position of the call (LongRoPE,
    dynamic NTK) switch exactly as in the model."""
    import torch

    count = int(positions.max()) + 1 if positions.size else 1
    pos = torch.arange(count, dtype=torch.long)[None]
    probe = torch.zeros((1, count, 1), dtype=torch.float32)
    with torch.no_grad():
        args = (spec.layer_type,) if spec.layer_type else ()
        cos, sin = rotary(probe, pos, *args)
    half = spec.rotary_dim // 2  # the first half: duplicated tables repeat it, GPT-OSS's is only that half
    return (cos[0, :, :half].numpy().astype(dtype), sin[0, :, :half].numpy().astype(dtype))
