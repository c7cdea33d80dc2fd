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

Importing attngraph imports NumPy only; backends load their frameworks when first asked for.
The semantics every backend follows are in ``attngraph.ir``'s docstring.
"""

from __future__ import annotations

from attngraph.api import compile  # noqa: F401 - public, but not in __all__ (shadows the builtin)
from attngraph.builder import GraphBuilder
from attngraph.errors import (
    AttnGraphError, BackendUnavailable, ConfigError, GraphError, InputError, LoweringError,
    SerializationError, WeightError,
)
from attngraph.ir import DType, Graph, Node, Op, TensorType, Value
from attngraph.lowering import Backend, Executable, Rules
from attngraph.mha import (
    AttentionConfig, build_attention, causal_self_attention, core_attention, cross_attention, self_attention,
)
from attngraph.onnx_export import export_onnx
from attngraph.onnx_import import from_onnx
from attngraph.selection import select_backend
from attngraph.torch_import import from_torch
from attngraph.passes import PIPELINES, run_pipeline
from attngraph.printer import format_graph
from attngraph.registry import available_backends, get_backend, register_backend
from attngraph.serialize import from_json, load_graph, save_graph, to_json
from attngraph.verify import verify_graph
from attngraph.weights import Weights

__version__ = "0.1.0"

__all__ = [  # `compile` is left out so `from attngraph import *` never shadows the builtin
    "AttentionConfig", "AttnGraphError", "Backend", "BackendUnavailable", "ConfigError", "DType",
    "Executable", "Graph", "GraphBuilder", "GraphError", "InputError", "LoweringError", "Node", "Op",
    "PIPELINES", "Rules", "SerializationError", "TensorType", "Value", "WeightError", "Weights",
    "available_backends", "build_attention", "causal_self_attention", "core_attention",
    "cross_attention", "export_onnx", "format_graph", "from_onnx", "from_torch", "from_json", "get_backend", "load_graph", "register_backend",
    "run_pipeline", "save_graph", "select_backend", "self_attention", "to_json", "verify_graph",
]
