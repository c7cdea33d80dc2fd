"""The IR: ops, types, graphs, the per-op table, building, verifying, printing and saving graphs.

The normative meaning of every op is ``attngraph.ir.semantics.SEMANTICS``.
"""

from attngraph.ir.graph import Attr, Graph, Node, Value
from attngraph.ir.op import Op
from attngraph.ir.types import FLOAT_DTYPES, INT_DTYPES, DType, TensorType

__all__ = ["FLOAT_DTYPES", "INT_DTYPES", "Attr", "DType", "Graph", "Node", "Op", "TensorType", "Value"]
