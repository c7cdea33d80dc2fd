"""``import_layer``: one Hugging Face attention module as an ``ImportedLayer`` (graph, weights, adapters)."""

from __future__ import annotations

from typing import Any

from attngraph.errors import ConfigError
from attngraph.frontends.constructors import build_attention
from attngraph.frontends.transformers import families_classic, rope
from attngraph.frontends.transformers.families import ReadOptions, read_layer
from attngraph.frontends.transformers.inputs import ImportedLayer
from attngraph.frontends.transformers.latent import LATENT_CLASSES, import_latent_layer
from attngraph.frontends.transformers.spec import LayerSpec, to_config
from attngraph.frontends.transformers.weights import to_arrays
from attngraph.ir import DType
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering.weights import Weights

_DTYPES = {"torch.float32": "float32", "torch.float64": "float64", "torch.float16": "float16",
           "torch.bfloat16": "bfloat16"}
OPTIONS = ("layer_idx", "cache", "padding", "output_attentions", "cross", "implementation",
           "relative_attention_bias", "name")


def read_options(options: dict[str, Any]) -> ReadOptions:
    """The options the family adapters read, from ``from_transformers``'s keywords (refusing unknown ones)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for from_transformers; valid: {', '.join(OPTIONS)}")
    return ReadOptions(cross=options.get("cross"), implementation=options.get("implementation"),
                       output_attentions=bool(options.get("output_attentions", False)),
                       relative_attention_bias=options.get("relative_attention_bias"))


def layer_spec(module: Any, config: Any = None, **options: Any) -> tuple[LayerSpec, Any]:
    """The ``LayerSpec`` of ``module`` and the config it was read with (no graph, no weights)."""
    config = config if config is not None else getattr(module, "config", None)
    layer_idx = options.get("layer_idx")
    if layer_idx is None:
        layer_idx = getattr(module, "layer_idx", None)
    if getattr(module, "training", False):
        raise ConfigError(f"{type(module).__name__} is in training mode (dropout active); attngraph graphs are "
                          "inference graphs: call model.eval() first")
    return read_layer(module, config, layer_idx, read_options(options)), config


def import_layer(module: Any, config: Any = None, **options: Any) -> ImportedLayer:
    """Import one attention module; see ``attngraph.from_transformers`` for the options."""
    if type(module).__name__ in LATENT_CLASSES:  # multi-head latent attention: its own graph builder
        return import_latent_layer(module, config, **options)
    spec, config = layer_spec(module, config, **options)
    opts = read_options(options)
    dtype = _DTYPES.get(str(next(module.parameters()).dtype))
    if dtype is None:
        raise ConfigError(f"module dtype {next(module.parameters()).dtype} is not supported; use float16, "
                          "bfloat16, float32 or float64")
    cache = spec.cache if options.get("cache") is None else bool(options["cache"])
    padding = options.get("padding", "mask")
    name = options.get("name") or f"{spec.family}_layer{spec.layer_idx if spec.layer_idx is not None else ''}"
    acfg = to_config(spec, cache=cache, padding=padding, output_attentions=opts.output_attentions, dtype=dtype,
                     name=name)
    graph = build_attention(acfg)
    table = families_classic.relative_table(module, opts) if spec.rel_bias else None
    weights = Weights(to_arrays(module, spec, to_numpy(DType.parse(dtype)), table))
    weights.check(graph)
    rotary = rope.rotary_module(module, config) if spec.rope and spec.rope.cache else None
    return ImportedLayer(graph, weights, acfg, spec, padding, rotary)
