"""``from_transformers``: Hugging Face attention layers (or every attention layer of a model) as attngraph graphs.

    imported = attngraph.from_transformers(model.model.layers[3].self_attn)
    graph, weights = imported
    feed = imported.inputs(hidden_states, attention_mask=pad2d, past_key_values=cache)
    out, attn_weights, present = imported.outputs(attngraph.compile(imported, "onnx")(feed))

    layers = attngraph.from_transformers(model)       # a listing; print(layers), layers[i], layers.distinct()

Families: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, GPT-NeoX, Falcon, GPT-2, BERT, RoBERTa,
OPT, Bloom, MPT, T5, BART, Whisper, GPT-OSS (``families.py``: one table-driven adapter each). transformers and
torch are imported only when a model is imported.
"""

from __future__ import annotations

from typing import Any

from attngraph.frontends.transformers.importer import import_layer
from attngraph.frontends.transformers.inputs import ImportedLayer, LayerOutputs
from attngraph.frontends.transformers.models import ModelAttention

__all__ = ["ImportedLayer", "LayerOutputs", "ModelAttention", "from_transformers"]


def from_transformers(obj: Any, config: Any = None, **options: Any) -> ImportedLayer | ModelAttention:
    """Import a Hugging Face attention module (``model.model.layers[3].self_attn``) as an ``ImportedLayer``, or
    list every attention layer of a ``PreTrainedModel`` as a ``ModelAttention``.

    ``config``: the model config, when the module keeps none (default: ``module.config``). Options:

    * ``layer_idx``: the layer's index (default: ``module.layer_idx``): its type (sliding or full) and its cache entry;
    * ``cache``: a KV cache (``past_key``/``past_value`` in, ``present_*`` out); default on for decoder layers;
    * ``padding``: ``"mask"`` (default: the model's 2-D padding mask, any padding), ``"lengths"`` (right padding
      only, as key lengths) or None;
    * ``output_attentions``: also return the attention weights;
    * ``cross``: force cross (True) or self (False) attention for the classes used both ways (BART, Whisper, T5);
    * ``implementation``: ``"eager"`` or ``"sdpa"`` where the two compute differently (Falcon's ALiBi), default
      the model's ``_attn_implementation``;
    * ``relative_attention_bias``: a T5 stack's first-layer table, for its later self-attention layers;
    * ``name``: the graph's name.

    Refuses a module or option the IR cannot express with ``UnsupportedConfig`` naming it and what to do
    instead, and wrong usage with ``ConfigError``.
    """
    if _is_model(obj):
        return ModelAttention(obj, config, **options)
    return import_layer(obj, config, **options)


def _is_model(obj: Any) -> bool:
    """A ``PreTrainedModel`` (checked by its class names, so that transformers is never imported for nothing)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(obj).__mro__)

