"""attngraph as a transformers attention implementation: ``register`` the names, ``use`` them on a model.

    import attngraph.transformers as agt
    run = agt.use(model, backend="numba")     # every attention layer checked, then model.set_attn_implementation
    print(run)                                # what runs where: one row per layer kind
    model.generate(ids, attention_mask=pad, max_new_tokens=32)                       # DynamicCache
    model.generate(ids, attention_mask=pad, max_new_tokens=32, cache_implementation="static")

Names (``IMPLEMENTATIONS``): ``"attngraph"`` (the backend ``compile(graph, "auto")`` picks for each layer kind)
and one per backend, ``"attngraph-numpy"``, ``"attngraph-numba"``, ``"attngraph-torch"``, ``"attngraph-onnx"``.
After ``register()`` they also work as ``from_pretrained(path, attn_implementation="attngraph-numba")``; then each
layer is checked at its first call instead of at load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attngraph.errors import ConfigError, UnsupportedConfig
from attngraph.frontends.transformers.hf_attention import attention_function
from attngraph.frontends.transformers.hf_executables import BACKENDS, Variant, executable
from attngraph.frontends.transformers.hf_layers import LayerPlan, layer_plan
from attngraph.frontends.transformers.hf_masks import attngraph_mask
from attngraph.frontends.transformers.models import ModelAttention
from attngraph.frontends.transformers.spec import describe

IMPLEMENTATIONS: dict[str, str] = {"attngraph": "auto", **{f"attngraph-{b}": b for b in BACKENDS}}


def register() -> tuple[str, ...]:
    """Register attngraph's attention and mask functions with transformers under every name of
    ``IMPLEMENTATIONS`` (idempotent); returns the names."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise UnsupportedConfig(f"the attngraph attention implementation needs transformers >= 5 (its cache layers "
                                f"and mask interface), found {transformers.__version__}: pip install 'transformers>=5'")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, backend in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, attention_function(backend))
        AttentionMaskInterface.register(name, attngraph_mask)
    return tuple(IMPLEMENTATIONS)


def implementation_name(backend: str) -> str:
    """The transformers name that runs ``backend``: "attngraph" for "auto", else "attngraph-<backend>"."""
    for name, b in IMPLEMENTATIONS.items():
        if b == backend:
            return name
    raise ConfigError(f"backend {backend!r} is not one the attngraph attention implementation runs; choose 'auto' "
                      f"or one of {', '.join(BACKENDS)}")


@dataclass
class AttentionUse:
    """What ``use`` set up: the model, the implementation name, and every attention layer's plan. ``str()`` is
    one row per layer kind (the layers sharing one compiled graph) and the backend it runs on."""

    model: Any
    implementation: str
    backend: str
    layers: list[LayerPlan] = field(default_factory=list)
    runs_on: dict[Any, str] = field(default_factory=dict)  # core config -> the backend that runs it

    def kinds(self) -> list[tuple[LayerPlan, list[str]]]:
        """One plan per distinct core graph, with the paths of the layers that share it."""
        groups: dict[Any, list[LayerPlan]] = {}
        for plan in self.layers:
            groups.setdefault(plan.config, []).append(plan)
        return [(plans[0], [p.path for p in plans]) for plans in groups.values()]

    def __str__(self) -> str:
        rows = [["kind", "layers", "family", "attention", "heads", "head dim", "window", "extras", "runs on"]]
        for i, (plan, paths) in enumerate(self.kinds()):
            cols = describe(plan.spec)
            rows.append([str(i), _span(paths), plan.spec.family, cols["kind"], cols["heads"], cols["head dim"],
                         cols["window"], cols["extras"], self.runs_on.get(plan.config, self.backend)])
        head = (f"{type(self.model).__name__}: {len(self.layers)} attention layers, {len(rows) - 1} kind(s), "
                f"attn_implementation={self.implementation!r}")
        return head + "\n" + text_table(rows[0], rows[1:])


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with two spaces, a rule under the headers."""
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def use(model: Any, backend: str = "auto") -> AttentionUse:
    """Run every attention layer of ``model`` through attngraph on ``backend`` ("auto", "numpy", "numba", "torch"
    or "onnx"): each layer is read from the family table and checked first, whatever the IR cannot express is
    refused with ``UnsupportedConfig`` naming the layer, the feature and the fix (nothing runs on another path);
    then each layer kind's graph is compiled and ``model.set_attn_implementation`` switches the model over.

    The model must be in eval mode, float32 or float64, and on the CPU unless ``backend="torch"``. Its generation
    config gets ``disable_compile=True``: attngraph's kernels run outside ``torch.compile``."""
    name = implementation_name(backend)
    _check_backend(backend)
    register()
    if not type(model)._can_set_attn_implementation():
        raise UnsupportedConfig(f"{type(model).__name__} does not dispatch its attention through transformers' "
                                "AttentionInterface, so its attention implementation cannot be set; import its "
                                "layers one by one with attngraph.from_transformers")
    device = _device(model, backend)
    plans = [layer_plan(e.module, _config(model, e), e.path) if not e.error else _refuse(e)
             for e in ModelAttention(model)]
    runs_on = {}
    for plan in plans:
        if plan.config not in runs_on:
            runs_on[plan.config] = _precompile(backend, plan, device)
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise UnsupportedConfig(f"transformers kept attn_implementation={model.config._attn_implementation!r} for "
                                f"{type(model).__name__} instead of {name!r}")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.disable_compile = True
    return AttentionUse(model, name, backend, plans, runs_on)


def _check_backend(backend: str) -> None:
    """A named backend must load here (``BackendUnavailable`` names the pip extra otherwise)."""
    if backend != "auto":
        from attngraph.lowering.registry import get_backend

        get_backend(backend)


def _device(model: Any, backend: str) -> str:
    device = next(model.parameters()).device
    if device.type != "cpu" and backend != "torch":
        raise UnsupportedConfig(f"the model is on {device} but the {backend} backend runs on the CPU; use "
                                "backend='torch' (it runs on the model's device), or model.to('cpu')")
    return str(device)


def _config(model: Any, entry: Any) -> Any:
    own = getattr(entry.module, "config", None)
    return own if own is not None else model.config


def _refuse(entry: Any) -> LayerPlan:
    raise UnsupportedConfig(f"attention layer {entry.path}: {entry.error}")


def _precompile(backend: str, plan: LayerPlan, device: str) -> str:
    """Compile the prefill graph (and the decode graph of a causal layer) now, so a layer kind that does not
    compile fails at load; returns the backend that runs it ("auto:numba", ...)."""
    first = executable(backend, plan.config, Variant(), device)
    if plan.masked_by_position:
        executable(backend, plan.config, Variant(lengths=True), device)
    return first.backend


def _span(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})"
