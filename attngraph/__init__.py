"""attngraph: multi-head attention as a small typed graph, lowered to several backends and
checked against a float64 reference.

Quick start::

    import numpy as np, attngraph as ag
    g = ag.causal_self_attention(d_model=64, num_heads=4, num_kv_heads=2)
    print(g)                                   # the text form
    g = ag.run_pipeline(g, "O1")               # fold scales, fuse QKV and the attention core
    run = ag.compile(g, "numpy", weights=ag.Weights.random(g, seed=0))
    out = run(x=np.random.default_rng(0).standard_normal((2, 16, 64), dtype=np.float32))
    out["y"].shape                             # (2, 16, 64)

The pipeline, one folder per stage: ``ir`` (the graph and its semantics) -> ``frontends`` (ways to
get a graph) -> ``passes`` (rewrites) -> ``lowering`` (backends, compile) with ``array_math`` (the
eager backends' shared math) -> ``selection`` (which backend) -> ``conformance`` and ``testing``.
Importing attngraph imports NumPy only; backends load their frameworks when first asked for.
The semantics every backend follows: ``attngraph.ir.semantics.SEMANTICS``.
"""

from __future__ import annotations

from attngraph.errors import (
    AttnGraphError,
    BackendUnavailable,
    ConfigError,
    GraphError,
    InputError,
    LoweringError,
    SerializationError,
    Unsupported,
    WeightError,
)
from attngraph.frontends.constructors import (
    AttentionConfig,
    build_attention,
    causal_self_attention,
    core_attention,
    cross_attention,
    self_attention,
)
from attngraph.frontends.latent import latent_attention
from attngraph.frontends.onnx_import import from_onnx
from attngraph.frontends.torch_import import from_torch
from attngraph.frontends.transformers import from_transformers
from attngraph.frontends.varlen import varlen_attention
from attngraph.frontends.paged import paged_attention, paged_self_attention
from attngraph.ir import DType, Graph, Node, Op, TensorType, Value
from attngraph.ir.builder import GraphBuilder
from attngraph.ir.printer import format_graph
from attngraph.ir.semantics import SEMANTICS
from attngraph.ir.serialize import from_json, load_graph, save_graph, to_json
from attngraph.ir.verify import verify_graph
from attngraph.lowering import Backend, Executable, Rules
from attngraph.lowering.compile import compile  # noqa: F401 - public, but not in __all__ (shadows the builtin)
from attngraph.lowering.export import export_onnx
from attngraph.lowering.registry import available_backends, get_backend, register_backend
from attngraph.lowering.session import DecodeSession
from attngraph.lowering.paged_session import BlockAllocator, PagedDecodeSession
from attngraph.lowering.weights import Weights
from attngraph.passes import PIPELINES, run_pipeline
from attngraph.passes.absorb_mla import absorb_mla
from attngraph.selection import select_backend
from attngraph.version import __version__

__all__ = [  # `compile` is left out so `from attngraph import *` never shadows the builtin
    "AttentionConfig", "AttnGraphError", "Backend", "BackendUnavailable", "ConfigError", "DType", "DecodeSession",
    "Executable", "Graph", "GraphBuilder", "GraphError", "InputError", "LoweringError", "Node", "Op",
    "PIPELINES", "Rules", "SEMANTICS", "SerializationError", "TensorType", "Unsupported", "Value",
    "WeightError", "Weights", "__version__", "available_backends", "build_attention", "causal_self_attention",
    "core_attention", "cross_attention", "export_onnx", "format_graph", "from_json", "from_onnx",
    "from_torch", "from_transformers", "get_backend", "load_graph", "register_backend", "run_pipeline", "save_graph",
    "select_backend", "self_attention", "to_json", "verify_graph",
    "absorb_mla", "latent_attention",
    "varlen_attention",
    "paged_attention", "paged_self_attention", "BlockAllocator", "PagedDecodeSession",
]
