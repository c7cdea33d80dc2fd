"""``ModelAttention``: every attention layer of a Hugging Face model, listed with its configuration.

    layers = attngraph.from_transformers(model)
    print(layers)                      # one row per layer: kind, heads, head dim, rotary, window, extras
    imported = layers[3]               # the ImportedLayer of row 3 (or layers["model.layers.3.self_attn"])
    for entry, rows in layers.distinct():   # one entry per distinct configuration, and the rows sharing it
        ...
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from attngraph.errors import ConfigError, Unsupported
from attngraph.frontends.transformers.families import FAMILIES
from attngraph.frontends.transformers.importer import import_layer, layer_spec
from attngraph.frontends.transformers.inputs import ImportedLayer
from attngraph.frontends.transformers.spec import LayerSpec, describe, to_config

_COLUMNS = ("#", "layer", "family", "kind", "heads", "head dim", "rotary", "window", "extras")


@dataclass
class LayerEntry:
    """One attention module of the model: where it sits, its spec (or why it cannot be imported)."""

    index: int
    path: str
    module: Any
    spec: LayerSpec | None
    options: dict = field(default_factory=dict)
    error: str | None = None

    def key(self, options: dict) -> str:
        """Layers with equal keys build the same graph (their weights differ)."""
        if self.spec is None:
            return f"unsupported:{self.index}"
        o = {**options, **self.options}
        cfg = to_config(self.spec, cache=self.spec.cache if o.get("cache") is None else bool(o["cache"]),
                        padding=o.get("padding", "mask"), output_attentions=bool(o.get("output_attentions")),
                        dtype="float32")
        return repr(cfg)


class ModelAttention:
    """Every attention layer of a model: ``str()`` is the table, ``[i]`` or ``[path]`` imports one layer
    (once, then cached), ``distinct()`` groups layers that build the same graph."""

    def __init__(self, model: Any, config: Any = None, **options: Any) -> None:
        self.model = model
        self.options = options
        self.entries = _entries(model, config, options)
        self._imported: dict[int, ImportedLayer] = {}
        if not self.entries:
            raise ConfigError(f"{type(model).__name__} has no attention module from_transformers knows; known "
                              f"classes: {', '.join(sorted(FAMILIES))}")

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LayerEntry]:
        return iter(self.entries)

    def __getitem__(self, which: int | str) -> ImportedLayer:
        entry = self.entry(which)
        if entry.error:
            raise Unsupported(f"layer {entry.index} ({entry.path}) cannot be imported: {entry.error}")
        if entry.index not in self._imported:
            self._imported[entry.index] = import_layer(entry.module, _config(self.model, entry.module),
                                                       **{**self.options, **entry.options})
        return self._imported[entry.index]

    def entry(self, which: int | str) -> LayerEntry:
        """The entry at row ``which`` or with module path ``which``."""
        for e in self.entries:
            if which in (e.index, e.path):
                return e
        raise ConfigError(f"no attention layer {which!r}: rows 0..{len(self.entries) - 1}, or a path such as "
                          f"{self.entries[0].path!r}")

    def distinct(self) -> list[tuple[LayerEntry, list[int]]]:
        """One entry per distinct graph (the first layer of each), with the rows that share it."""
        groups: dict[str, list[LayerEntry]] = {}
        for e in self.entries:
            groups.setdefault(e.key(self.options), []).append(e)
        return [(rows[0], [r.index for r in rows]) for rows in groups.values()]

    def rows(self) -> list[dict[str, str]]:
        """The table's rows as dicts keyed by column name."""
        out = []
        for e in self.entries:
            base = {"#": str(e.index), "layer": e.path}
            if e.spec is None:
                out.append({**base, "family": "-", "kind": "unsupported", "extras": e.error or ""})
            else:
                out.append({**base, "family": e.spec.family, **describe(e.spec)})
        return out

    def __str__(self) -> str:
        rows = self.rows()
        widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in _COLUMNS}
        line = lambda r: "  ".join(r.get(c, "-").ljust(widths[c]) for c in _COLUMNS).rstrip()
        head = line({c: c for c in _COLUMNS})
        return "\n".join([head, "  ".join("-" * widths[c] for c in _COLUMNS), *map(line, rows)])

    def __repr__(self) -> str:
        return f"ModelAttention({type(self.model).__name__}, {len(self.entries)} attention layers)"


def _config(model: Any, module: Any) -> Any:
    own = getattr(module, "config", None)
    return own if own is not None else getattr(model, "config", None)


def _entries(model: Any, config: Any, options: dict) -> list[LayerEntry]:
    found = [(path, m) for path, m in model.named_modules() if _is_attention(m)]
    entries = []
    for index, (path, module) in enumerate(found):
        extra = _shared_bias(path, module, found)
        try:
            spec, _ = layer_spec(module, config if config is not None else _config(model, module),
                                 **{**options, **extra})
            entries.append(LayerEntry(index, path, module, spec, extra))
        except (Unsupported, ConfigError) as e:  # listed with the reason; importing that row raises it
            entries.append(LayerEntry(index, path, module, None, extra, error=str(e)))
    return entries


def _is_attention(module: Any) -> bool:
    """A module a family adapter reads, or another attention class (listed as unsupported, with the reason) that
    is not a wrapper around a known one (BertAttention around BertSelfAttention)."""
    name = type(module).__name__
    if name in FAMILIES:
        return True
    return bool(re.search(r"Attention\d*$", name)) and not any(type(m).__name__ in FAMILIES for m in module.modules())


def _shared_bias(path: str, module: Any, found: list[tuple[str, Any]]) -> dict:
    """T5 computes the relative position bias in the first self-attention of each stack and passes it on:
    the later layers of that stack get its table."""
    if type(module).__name__ != "T5Attention" or getattr(module, "has_relative_attention_bias", True):
        return {}
    stack = path.split(".block.")[0]
    for other_path, other in found:
        if other_path.split(".block.")[0] == stack and getattr(other, "has_relative_attention_bias", False):
            return {"relative_attention_bias": other.relative_attention_bias}
    return {}
