"""Position-encoding parameters that the constructors compute once, at build time, into attributes:
rotary frequencies (with the common static scalings) and ALiBi slopes.

The IR's ``rotary`` op takes its frequencies as numbers (``inv_freq``, ``attention_scaling``), so any
static scheme is one of these functions, and a scheme that depends on the sequence (dynamic NTK,
LongRoPE's long/short switch) is given as ``cos_cache``/``sin_cache`` inputs instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attngraph.errors import ConfigError

ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_frequencies(rotary_dim: int, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None
                     ) -> tuple[tuple[float, ...], float]:
    """``(inv_freq, attention_scaling)`` for ``rotary_dim`` rotated dims: ``theta^(-2k/rotary_dim)``, then
    the scaling's rule. ``scaling`` as Hugging Face writes it: ``{"rope_type": "linear", "factor": 8}``,
    ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}`` or ``{"rope_type": "yarn", "factor", ...}``."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ConfigError(f"rotary_dim must be a positive even number, got {rotary_dim}")
    if not (math.isfinite(theta) and theta > 1):
        raise ConfigError(f"rope theta must be a finite number > 1, got {theta!r}")
    base = [1.0 / theta ** (2 * k / rotary_dim) for k in range(rotary_dim // 2)]
    kind = str((scaling or {}).get("rope_type", (scaling or {}).get("type", "default")))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope scaling {kind!r} is not a static scheme attngraph computes; choose one of "
                          f"{ROPE_TYPES}, or give cos_cache/sin_cache inputs (rope_cache=True) for any other")
    s = dict(scaling or {})
    if kind == "default":
        return tuple(base), 1.0
    factor = float(_need(s, "factor", kind))
    if kind == "linear":
        return tuple(f / factor for f in base), 1.0
    if kind == "llama3":
        return tuple(_llama3(base, factor, s)), 1.0
    return _yarn(base, rotary_dim, theta, factor, s)


def _need(s: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in s:
        raise ConfigError(f"rope scaling {kind!r} needs {key!r}; got {sorted(s)}")
    return s[key]


def _llama3(base: list[float], factor: float, s: Mapping[str, Any]) -> list[float]:
    low, high = float(_need(s, "low_freq_factor", "llama3")), float(_need(s, "high_freq_factor", "llama3"))
    original = float(_need(s, "original_max_position_embeddings", "llama3"))
    out = []
    for f in base:
        wavelen = 2 * math.pi / f
        if wavelen > original / low:
            out.append(f / factor)
        elif wavelen < original / high:
            out.append(f)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def _yarn(base: list[float], dim: int, theta: float, factor: float, s: Mapping[str, Any]
          ) -> tuple[tuple[float, ...], float]:
    """YaRN as Hugging Face computes it (``_compute_yarn_parameters``)."""
    original = float(_need(s, "original_max_position_embeddings", "yarn"))
    beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    out = []
    for k, f in enumerate(base):
        ramp = min(max((k - low) / (high - low), 0.0), 1.0)  # 0: extrapolate (keep f), 1: interpolate (f / factor)
        out.append(f / factor * ramp + f * (1 - ramp))
    def mscale(scale: float, m: float = 1.0) -> float:
        return 0.1 * m * math.log(scale) + 1.0 if scale > 1 else 1.0

    scaling = s.get("attention_factor")
    if scaling is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        scaling = mscale(factor, float(m)) / mscale(factor, float(m_all)) if m and m_all else mscale(factor)
    return tuple(out), float(scaling)


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> tuple[float, ...]:
    """ALiBi's per-head slopes (Press et al.): ``2^(-max_bias * i / n)`` for the nearest power of two
    ``n`` not above ``num_heads``, then every other slope of ``2n`` for the remaining heads (the rule
    of the paper, Bloom and MPT, which agree)."""
    if num_heads <= 0:
        raise ConfigError(f"ALiBi needs num_heads > 0, got {num_heads}")
    n = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = [2.0 ** (-max_bias * (i + 1) / n) for i in range(n)]
    extra = [2.0 ** (-max_bias * (i + 1) / (2 * n)) for i in range(0, 2 * (num_heads - n), 2)]
    return tuple(slopes + extra)
