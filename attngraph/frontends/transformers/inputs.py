"""``ImportedLayer``: an imported Hugging Face attention layer, and the adapters between the module's calling
convention and the graph's named inputs and outputs.

    imported = attngraph.from_transformers(model.model.layers[3].self_attn)
    feed = imported.inputs(hidden_states, attention_mask=pad2d, past_key_values=cache)   # the module's arguments
    out, weights, present = imported.outputs(attngraph.compile(imported, "numba")(feed))

``inputs`` takes the model's 2-D padding mask (batch, past + new tokens; 1 = real token), ``position_ids`` (by
default ``arange + tokens seen``, as the model does), the model's cache (a ``DynamicCache`` /
``EncoderDecoderCache``, or the layer's ``(keys, values)``) and, for cross attention, the encoder states.
The graph rebuilds the causal and sliding-window masks itself.

Where the module and attngraph differ, on purpose: a query row whose keys are all masked (left padding under
a causal mask) gives 0 here, while eager attention gives the mean of V and sdpa gives 0. Compare real rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.transformers import rope
from attngraph.frontends.transformers.spec import LayerSpec, describe
from attngraph.ir import Graph
from attngraph.ir.dtypes import to_numpy
from attngraph.lowering.weights import Weights

_ALIASES = {"layer_past": "past_key_values", "encoder_hidden_states": "key_value_states",
            "encoder_attention_mask": "attention_mask"}
_COMPUTED = ("position_embeddings", "alibi", "position_bias", "mask", "cache_position")
_CACHE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


class LayerOutputs(NamedTuple):
    """What the module gives back: its output, its attention weights (None unless imported with
    ``output_attentions=True``) and the layer's new cache entry ``(keys, values)`` as the model keeps it
    (None without a cache)."""

    output: np.ndarray
    attn_weights: np.ndarray | None
    present: tuple[np.ndarray, np.ndarray] | None


@dataclass
class ImportedLayer:
    """An imported attention layer: ``graph``, ``weights`` (iterable as the pair), the ``config`` that built the
    graph, the ``spec`` read from the module (family, layer type, notes on its quirks) and the adapters."""

    graph: Graph
    weights: Weights
    config: AttentionConfig
    spec: LayerSpec
    padding: str | None
    rotary: Any = None  # the model's rotary module, where the graph reads cos/sin caches

    def __iter__(self):
        return iter((self.graph, self.weights))

    def __repr__(self) -> str:
        cols = describe(self.spec)
        return (f"ImportedLayer({self.spec.family} {self.spec.module} layer {self.spec.layer_idx}: "
                + ", ".join(f"{k} {v}" for k, v in cols.items() if v != "-") + ")")

    @property
    def notes(self) -> tuple[str, ...]:
        """How this layer's quirks were handled (e.g. Falcon's doubled ALiBi), one sentence each."""
        return self.spec.notes

    @property
    def _dtype(self) -> np.dtype:
        return to_numpy(self.graph.inputs[0].type.dtype)

    def inputs(self, hidden_states: Any, attention_mask: Any = None, *, position_ids: Any = None,
               past_key_values: Any = None, key_value_states: Any = None, **aliases: Any) -> dict[str, np.ndarray]:
        """The graph's inputs from the module's arguments (tensors or arrays). ``layer_past``,
        ``encoder_hidden_states`` and ``encoder_attention_mask`` are accepted under those names too."""
        args = self._aliases(aliases, attention_mask, past_key_values, key_value_states)
        attention_mask, past_key_values, key_value_states = args
        x = _array(hidden_states, self._dtype)
        if x.ndim != 3 or x.shape[-1] != self.spec.d_model:
            raise ConfigError(f"hidden_states must be (batch, seq, {self.spec.d_model}), got {x.shape}")
        batch, q_len = x.shape[:2]
        past = self._past(past_key_values, batch)
        feed: dict[str, np.ndarray] = {}
        if self.spec.kind == "self":
            feed["x"] = x
            new = q_len
        else:
            new = self._cross_states(feed, x, key_value_states, past)
        if self.config.kv_cache:
            feed["past_key"], feed["past_value"] = past[:2] if past else self._empty_past(batch)
        past_len = feed["past_key"].shape[2] if self.config.kv_cache else 0
        self._padding(feed, attention_mask, batch, past_len + new)
        if position_ids is not None and attention_mask is None and past_len == 0:
            _refuse_packed(_array(position_ids, np.int64))
        if self.spec.rope:
            seen = past[2] if past else 0
            self._positions(feed, position_ids, batch, q_len, seen, past_len)
        return feed

    def outputs(self, result: dict[str, Any], *, residual: Any = None) -> LayerOutputs:
        """The graph's outputs as the module gives them: its output, the attention weights, and the new cache
        entry as the model's own cache (``DynamicCache(config=model.config)``) keeps it: keys already rotated, a
        sliding layer's trimmed to its last ``window - 1`` tokens, Falcon new_decoder_architecture's expanded to
        every query head.

        ``residual``: required where the module adds one to its output (Bloom: ``dense(ctx) + residual``, its
        second argument), refused elsewhere. The graph (and its ONNX export) is the attention alone, as every
        other family's; ``result["y"]`` is ``dense(ctx)`` without the residual."""
        y = np.asarray(result["y"])
        y = self._with_residual(y, residual) if residual is not None or self.spec.returns_residual else y
        weights = np.asarray(result["attn_weights"]) if self.config.score_outputs else None
        if not self.config.kv_cache:
            return LayerOutputs(y, weights, None)
        k, v = np.asarray(result["present_key"]), np.asarray(result["present_value"])
        if self.spec.sliding and self.spec.kind == "self":
            keep = self.spec.window - 1  # DynamicSlidingWindowLayer stores the last W-1 tokens
            k, v = k[:, :, k.shape[2] - min(keep, k.shape[2]):], v[:, :, v.shape[2] - min(keep, v.shape[2]):]
        if self.spec.cache_heads:
            group = self.spec.cache_heads // self.spec.num_kv_heads
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        return LayerOutputs(y, weights, (k, v))

    def _with_residual(self, y: np.ndarray, residual: Any) -> np.ndarray:
        if not self.spec.returns_residual:
            raise ConfigError(f"{self.spec.module} does not add a residual to its output; drop residual=")
        if residual is None:
            raise ConfigError(f"{self.spec.module} returns dense(attention) + residual: pass the module's residual "
                              "argument (its second) as outputs(result, residual=...); the graph's own result['y'] "
                              "is the attention without it")
        r = _array(residual, y.dtype)
        if r.shape != y.shape:
            raise ConfigError(f"residual= must have the output's shape {y.shape} (batch, seq, hidden), got {r.shape}")
        return y + r

    # ---- the pieces of inputs() --------------------------------------------------------------------

    def _aliases(self, aliases: dict, mask: Any, cache: Any, states: Any) -> tuple[Any, Any, Any]:
        values = {"attention_mask": mask, "past_key_values": cache, "key_value_states": states}
        for name, value in aliases.items():
            if name == "use_cache":  # the graph's cache is fixed at import (cache=); nothing to switch per call
                continue
            if name == "output_attentions":
                if bool(value) != bool(self.config.score_outputs):
                    raise ConfigError(f"output_attentions={value} here but {not value} at import; re-import with "
                                      f"output_attentions={bool(value)}")
                continue
            if name == "residual":
                raise ConfigError(f"{self.spec.module}'s residual is added to its output: pass it to outputs(result, "
                                  "residual=...)" if self.spec.returns_residual else
                                  f"{self.spec.module} takes no residual argument")
            if name in _COMPUTED:
                raise ConfigError(f"{name} is computed inside the graph; pass the model's 2-D attention_mask and "
                                  "position_ids instead")
            if name not in _ALIASES:
                raise ConfigError(f"unknown argument {name!r}; inputs() takes hidden_states, attention_mask, "
                                  f"position_ids, past_key_values, key_value_states and {sorted(_ALIASES)}")
            if value is not None:
                values[_ALIASES[name]] = value
        return values["attention_mask"], values["past_key_values"], values["key_value_states"]

    def _empty_past(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (batch, self.spec.num_kv_heads, 0, self.spec.head_dim)
        return np.zeros(shape, self._dtype), np.zeros(shape, self._dtype)

    def _past(self, cache: Any, batch: int) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """``(keys, values, tokens seen)`` of this layer in the model's cache (seen is None for bare tensors),
        or None when it holds nothing."""
        if cache is None:
            return None
        if not self.config.kv_cache:
            raise ConfigError("this layer was imported without a cache (cache=False); re-import with cache=True")
        if isinstance(cache, tuple | list):
            k, v = cache
            seen = None
        else:
            found = self._cache_layer(cache)
            if found is None:
                return None
            k, v, seen = found
        k, v = _array(k, self._dtype), _array(v, self._dtype)
        heads = self.spec.cache_heads or self.spec.num_kv_heads
        want = (batch, heads, k.shape[2] if k.ndim == 4 else -1, self.spec.head_dim)
        if k.shape != want or v.shape != want:
            raise ConfigError(f"cached keys/values must be (batch, {heads}, past, {self.spec.head_dim}), got "
                              f"{k.shape} and {v.shape}")
        if self.spec.cache_heads:  # Falcon's cache repeats each kv head for its query heads: keep one copy
            group = self.spec.cache_heads // self.spec.num_kv_heads
            k, v = k[:, ::group], v[:, ::group]
        return k, v, seen

    def _cache_layer(self, cache: Any) -> tuple[Any, Any, int] | None:
        idx, cross = self.spec.layer_idx, self.spec.kind == "cross"
        if idx is None:
            raise ConfigError("the module has no layer_idx, so its entry in a Cache is unknown; pass layer_idx= at "
                              "import or the layer's (keys, values)")
        sub = cache
        if hasattr(cache, "self_attention_cache"):
            sub = cache.cross_attention_cache if cross else cache.self_attention_cache
            if cross and not cache.is_updated.get(idx):
                return None
        elif cross:
            raise ConfigError("cross attention keeps its keys/values in an EncoderDecoderCache; pass that, or the "
                              "layer's (keys, values)")
        if idx >= len(sub.layers):
            return None
        layer = sub.layers[idx]
        if type(layer).__name__ not in _CACHE_LAYERS:
            raise UnsupportedConfig(f"cache layer {type(layer).__name__} is not read (it preallocates a buffer); use a "
                                    "DynamicCache or pass the layer's (keys, values)")
        if not layer.is_initialized or layer.keys.numel() == 0:
            return None
        return layer.keys, layer.values, int(layer.get_seq_length())

    def _cross_states(self, feed: dict, x: np.ndarray, states: Any, past: Any) -> int:
        """Cross attention: the encoder states, or (cached K/V, as the model does once they are cached) none."""
        feed["query"] = x
        width = self.spec.kdim or self.spec.d_model
        if past is not None:  # like the module: once cached, the encoder states are not read again
            empty = np.zeros((x.shape[0], 0, width), self._dtype)
            feed["key"] = feed["value"] = empty
            return 0
        if states is None:
            raise ConfigError("cross attention needs key_value_states (the encoder's output), or a cache that holds "
                              "them projected")
        s = _array(states, self._dtype)
        feed["key"] = feed["value"] = s
        return s.shape[1]

    def _padding(self, feed: dict, mask: Any, batch: int, keys: int) -> None:
        """The model's 2-D padding mask (batch, >= keys), its last ``keys`` columns, as the graph takes it."""
        if mask is None:
            keep = np.ones((batch, keys), bool)
        else:
            m = _array(mask, None)
            if m.ndim != 2:
                raise ConfigError(f"attention_mask must be the model's 2-D padding mask (batch, past + new tokens; "
                                  f"1 = real token), got shape {m.shape}; the graph builds the causal and window "
                                  "masks itself")
            if m.shape[0] != batch or m.shape[1] < keys:
                raise ConfigError(f"attention_mask {m.shape} must be (batch={batch}, >= {keys} tokens: cached + new)")
            keep = m[:, m.shape[1] - keys:] != 0
        if self.spec.alibi_counts_tokens and _has_holes(keep):
            raise UnsupportedConfig(
                f"{self.spec.family} counts ALiBi positions over real tokens only (cumsum of the mask), and this mask "
                "has padding between real tokens (right padding, then decoding); attngraph's ALiBi uses key indices. "
                "Pad on the left, as generate() does")
        if self.padding == "mask":
            feed["attn_mask"] = keep.reshape(batch, 1, 1, keys)
        elif self.padding == "lengths":
            lengths = keep.sum(axis=1)
            if not (keep == (np.arange(keys)[None] < lengths[:, None])).all():
                raise ConfigError("padding='lengths' takes right-padded masks only; import with padding='mask'")
            feed["key_lengths"] = lengths.astype(np.int64)
        elif not keep.all():
            raise ConfigError("the layer was imported with padding=None but the mask has padding; use 'mask'")

    def _positions(self, feed: dict, position_ids: Any, batch: int, q_len: int, seen: int | None,
                   past_len: int) -> None:
        """``position_ids`` as given, or the model's default: ``arange(q_len) + tokens seen`` (padding ignored)."""
        if position_ids is None:
            if seen is None and self.spec.sliding and past_len >= self.spec.window - 1:
                raise ConfigError("a sliding layer's cache keeps only its last window - 1 tokens, so the cache "
                                  "length is not the position: pass position_ids, or the Cache object itself")
            seen = past_len if seen is None else seen
            pos = np.broadcast_to(np.arange(seen, seen + q_len, dtype=np.int64), (batch, q_len))
        else:
            pos = np.broadcast_to(_array(position_ids, np.int64), (batch, q_len))
        feed["position_ids"] = np.ascontiguousarray(pos)
        if self.spec.rope.cache:
            feed["cos_cache"], feed["sin_cache"] = rope.cos_sin_cache(self.rotary, self.spec.rope, pos, self._dtype)


def _refuse_packed(positions: np.ndarray) -> None:
    """transformers reads position_ids that restart within a row, given without a mask or cache, as packed
    sequences and masks block-diagonally; the graph's masks cannot express that."""
    if positions.ndim == 2 and positions.shape[1] > 1 and (np.diff(positions, axis=1) != 1).any():
        raise UnsupportedConfig("position_ids restart within a row and no attention_mask is given: transformers "
                                "then treats the row as packed sequences (a block-diagonal mask), which attngraph's "
                                "masks cannot express; pass the 2-D attention_mask, or one sequence per row")


def _has_holes(keep: np.ndarray) -> bool:
    """Whether some row has a masked key between two real ones."""
    seen_real = np.logical_or.accumulate(keep, axis=1)
    real_after = np.flip(np.logical_or.accumulate(np.flip(keep, axis=1), axis=1), axis=1)
    return bool((seen_real & real_after & ~keep).any())


def _array(t: Any, dtype: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        t = t.float() if str(t.dtype) == "torch.bfloat16" else t
        t = t.numpy()
    a = np.asarray(t)
    return np.ascontiguousarray(a if dtype is None else a.astype(dtype, copy=False))
