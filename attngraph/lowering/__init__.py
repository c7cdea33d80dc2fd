"""Lowering: rule tables and the interpreter loop (``rules``), ``Backend`` and ``Executable``
(``backend``), input checks, weights, the backend registry, ``compile`` and ONNX export.
"""

from attngraph.lowering.backend import Backend, Executable, split_param_nodes
from attngraph.lowering.rules import NodeCtx, Rule, Rules, interpret

__all__ = ["Backend", "Executable", "NodeCtx", "Rule", "Rules", "interpret", "split_param_nodes"]
