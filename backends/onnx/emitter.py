"""Builds an ONNX graph node by node while the shared interpreter walks the IR.

Values are tensor names. Float math runs in the graph's compute dtype (float32, or float64 for
float64 graphs): half-precision inputs are cast up on entry and outputs cast back on exit, which is
attngraph's rule that attention math runs in float32 or wider. Symbolic dims (``q_len``,
``past_len``) become ``Shape`` reads of the first input that carries them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from attngraph.errors import LoweringError
from attngraph.ir import DType, Graph, dims
from attngraph.ir.names import fresh_name
from attngraph.lowering.onnx_facts import ONNX_TYPES


def value_info(name: str, dtype: DType, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_TYPES[dtype], [d if isinstance(d, int) else str(d) for d in shape])


class OnnxEmitter:
    """Mutable state of one export: nodes, initializers, fresh names, and where each dim comes from."""

    def __init__(self, graph: Graph, opset: int) -> None:
        self.opset = opset
        self.guards = True  # the If branches of guards.py (empty inputs, non-finite values); see to_onnx
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.taken: set[str] = {v.name for v in graph.inputs + graph.params}
        self.taken.update(v.name for n in graph.nodes for v in n.outputs)
        self.compute = DType.FLOAT64 if any(v.type.dtype is DType.FLOAT64 for v in graph.inputs + graph.params) \
            else DType.FLOAT32
        self.np_compute = np.dtype(self.compute.value)
        self._dim_sources: dict[str, tuple[str, int]] = {}
        self._consts: dict[tuple, str] = {}
        for value in graph.inputs:
            for axis, d in enumerate(value.type.shape):
                if not dims.is_static(d) and dims.canonical(d) in dims.symbols(d):
                    self._dim_sources.setdefault(dims.canonical(d), (value.name, axis))

    # ---- names and nodes -------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return fresh_name(self.taken, hint)

    def op(self, op_type: str, inputs, *, outputs=None, n_out: int = 1, domain: str = "", hint: str | None = None,
           **attrs):
        """Append one node; returns its output name (or list of names)."""
        if outputs is None:
            outputs = [self.fresh(f"{hint or op_type.lower()}") for _ in range(n_out)]
        node_name = self.fresh(f"n_{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, domain=domain,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        """An initializer, shared between equal constants."""
        arr = np.asarray(array)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def i64(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "shape")

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=self.np_compute), "k")

    def branch(self, build, n_out: int) -> onnx.GraphProto:
        """A subgraph for an ``If`` branch: ``build()`` emits its nodes and returns its ``n_out`` result
        names (which may be outer values: they are passed through Identity, as ONNX wants branch outputs
        made inside the branch). Constants stay initializers of the main graph (outer scope)."""
        outer, self.nodes = self.nodes, []
        try:
            results = list(build())
            if len(results) != n_out:
                raise LoweringError(f"an If branch made {len(results)} outputs, expected {n_out}")
            outs = [self.op("Identity", [r], hint=f"{r}_out") for r in results]
            elem = ONNX_TYPES[self.compute]
            return helper.make_graph(self.nodes, self.fresh("branch"), [],
                                     [helper.make_tensor_value_info(o, elem, None) for o in outs])
        finally:
            self.nodes = outer

    def if_(self, cond: str, then_build, else_build, n_out: int, hint: str = "if") -> list[str]:
        """``If(cond)`` with both branches built by ``branch``; returns the output names."""
        then_g, else_g = self.branch(then_build, n_out), self.branch(else_build, n_out)
        out = self.op("If", [cond], then_branch=then_g, else_branch=else_g, n_out=n_out, hint=hint)
        return out if isinstance(out, list) else [out]

    # ---- shapes ----------------------------------------------------------------------------
    def shape_slice(self, x: str, start: int, end: int) -> str:
        return self.op("Shape", [x], start=start, end=end, hint="dims")

    def dim(self, d: dims.Dim) -> str:
        """A 1-element int64 tensor holding dim ``d`` at run time."""
        if dims.is_static(d):
            return self.i64([int(d)])
        total = None
        for sym in dims.symbols(d):
            if sym not in self._dim_sources:
                raise LoweringError(f"dim {sym!r} is set by no graph input, so ONNX cannot read it at run time")
            name, axis = self._dim_sources[sym]
            part = self.shape_slice(name, axis, axis + 1)
            total = part if total is None else self.op("Add", [total, part])
        constant = dims.evaluate(d, {s: 0 for s in dims.symbols(d)})
        return self.op("Add", [total, self.i64([constant])]) if constant else total

    def reduce_max(self, x: str, axis: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.i64([axis])], keepdims=1)
        return self.op("ReduceMax", [x], axes=[axis], keepdims=1)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.i64(axes)])

    def _producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    # ---- dtypes ----------------------------------------------------------------------------
    def to_compute(self, name: str, dtype: DType) -> str:
        if dtype.is_float and dtype is not self.compute:
            return self.op("Cast", [name], to=ONNX_TYPES[self.compute], hint=f"{name}_up")
        return name

    def finish(self, graph: Graph, env: dict, doc: str) -> onnx.GraphProto:
        """Wire graph outputs (cast back to their IR dtype) and assemble the GraphProto."""
        outputs, renamed = [], set()
        for value in graph.outputs:
            src = env[value]
            if value.type.dtype.is_float and value.type.dtype is not self.compute:
                self.op("Cast", [src], outputs=[value.name], to=ONNX_TYPES[value.type.dtype])
            elif src != value.name and self._producer(src) is not None and src not in renamed \
                    and src not in {v.name for v in graph.outputs}:
                # name the producing node's output after the graph output instead of copying it through
                # Identity: a copy would cost a whole cache per step, and would stop onnxruntime's
                # TensorScatter from writing in place into an I/O-bound cache buffer.
                _rename(self.nodes, src, value.name)
                renamed.add(src)
            elif src != value.name:
                self.op("Identity", [src], outputs=[value.name])
            outputs.append(value_info(value.name, value.type.dtype, value.type.shape))
        inputs = [value_info(v.name, v.type.dtype, v.type.shape) for v in graph.inputs]
        return helper.make_graph(self.nodes, graph.name, inputs, outputs, initializer=self.initializers,
                                 doc_string=doc)


def _rename(nodes, old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` in ``nodes`` and in every subgraph they hold (If branches read outer
    values by name)."""
    for node in nodes:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g.node, old, new)
                for out in attr.g.output:
                    if out.name == old:
                        out.name = new
