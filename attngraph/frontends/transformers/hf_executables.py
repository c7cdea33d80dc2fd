"""The compiled core-attention graphs of the attngraph attention implementation: one per layer kind, backend
and call variant, compiled once per process and shared by every layer (and model) of that kind.

A variant adds to a layer's core config what a call needs: ``lengths`` (a ``key_lengths`` input with the
queries at the end of each row's valid keys: decode steps, static caches), ``padding`` (a (batch, 1, 1, keys)
bool key mask: padded batches) and ``weights`` (the attention weights as a second output:
``output_attentions``). A prefill without padding needs none of them, so it gets the plain causal graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attngraph.errors import ConfigError
from attngraph.frontends.config import AttentionConfig
from attngraph.frontends.constructors import build_attention
from attngraph.ir import Graph
from attngraph.ir.verify import verify_graph
from attngraph.lowering.backend import Executable

BACKENDS = ("numpy", "numba", "torch", "onnx")
# sizes the "auto" choice ranks backends at: one decode step of one sequence against a modest cache
AUTO_SIZES = {"batch": 1, "q_len": 1, "kv_len": 1024}
_COMPILED: dict[tuple, Executable] = {}


@dataclass(frozen=True)
class Variant:
    """What one call adds to a layer's core graph (see the module docstring)."""

    lengths: bool = False
    padding: bool = False
    weights: bool = False


def variant_config(base: AttentionConfig, variant: Variant) -> AttentionConfig:
    """``base`` with the variant's inputs and outputs."""
    return base.with_(key_padding=variant.lengths, align_to_lengths=variant.lengths,
                      mask="bool" if variant.padding else None,
                      mask_shape=("batch", 1, 1, "kv_len") if variant.padding else None,
                      score_outputs=("weights",) if variant.weights else ())


def core_graph(config: AttentionConfig) -> Graph:
    """The core graph of ``config``, its sinks an input (each layer has its own; the graph is shared)."""
    graph = build_attention(config)
    sinks = [p for p in graph.params if p.name == "sinks"]
    if not sinks:
        return graph
    return verify_graph(graph.replace(inputs=graph.inputs + tuple(sinks),
                                      params=tuple(p for p in graph.params if p.name != "sinks")))


def executable(backend: str, base: AttentionConfig, variant: Variant, device: str = "cpu") -> Executable:
    """The compiled graph of ``base`` + ``variant`` on ``backend`` ("auto" or one of ``BACKENDS``), once."""
    key = (backend, base, variant, device)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = _compile(backend, core_graph(variant_config(base, variant)), device)
    return found


def _compile(backend: str, graph: Graph, device: str) -> Executable:
    from attngraph.lowering.compile import compile as compile_graph

    if backend == "auto":
        return compile_graph(graph, "auto", sizes=AUTO_SIZES)
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one the attngraph attention implementation runs; choose "
                          f"'auto' or one of {', '.join(BACKENDS)}")
    return compile_graph(graph, backend, **backend_options(backend, device))


def backend_options(backend: str, device: str) -> dict[str, Any]:
    """Options for a backend sharing the process with the model's own torch threads: the torch backend takes and
    gives tensors on the model's device; onnxruntime's threads do not spin after each call (they would starve
    torch's, which run the rest of the model)."""
    if backend == "torch":
        return {"outputs": "torch", "device": device}
    if backend == "onnx":
        return {"spinning": False}
    return {}


def takes_tensors(ex: Executable) -> bool:
    """Whether the executable reads torch tensors as they are (the torch backend), else NumPy arrays."""
    return ex.backend == "torch"
