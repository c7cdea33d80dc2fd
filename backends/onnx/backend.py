"""The ONNX backend: export a graph (``export.py``, three styles) and run it with onnxruntime."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from attngraph_backends.onnx.export import prepared, to_onnx
from attngraph_backends.onnx.fused import ATTENTION_STYLE

from attngraph.errors import AttnGraphError, LoweringError
from attngraph.ir import DType, Graph
from attngraph.lowering import Backend, Executable

OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

def best_providers() -> list[str]:
    """TensorRT and CUDA when this onnxruntime has them, then the CPU."""
    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxBackend(Backend):
    """Runs graphs through onnxruntime. Options: ``style`` ("auto"), ``opset`` (per style), ``providers``
    (best available), ``graph_optimization_level`` ("all"), ``intra_op_num_threads`` and
    ``inter_op_num_threads`` (0 = onnxruntime's choice)."""

    name = "onnx"
    rules = ATTENTION_STYLE
    options = {**Backend.options, "style": "auto", "opset": None, "providers": None,
               "graph_optimization_level": "all", "intra_op_num_threads": 0, "inter_op_num_threads": 0}

    def to_model(self, graph: Graph, weights=None, *, style: str = "auto", opset: int | None = None) -> onnx.ModelProto:
        """The ONNX model of ``graph`` with ``weights`` as initializers (see ``export.to_onnx``)."""
        return to_onnx(graph, weights, style=style, opset=opset)

    def session(self, model: bytes | str, opts: dict, float64: bool = False) -> ort.InferenceSession:
        so = ort.SessionOptions()
        if opts["graph_optimization_level"] not in OPT_LEVELS:
            raise AttnGraphError(f"graph_optimization_level must be one of {sorted(OPT_LEVELS)}")
        so.graph_optimization_level = OPT_LEVELS[opts["graph_optimization_level"]]
        so.intra_op_num_threads = int(opts["intra_op_num_threads"])
        so.inter_op_num_threads = int(opts["inter_op_num_threads"])
        so.log_severity_level = 3  # errors only: onnxruntime warns about its own Attention output-shape inference
        # onnxruntime folds a Mul into FusedMatMul's float32 `alpha`, costing float64 graphs ~1e-8 relative
        # error; keep float64 exact by switching that one rewrite off.
        disabled = ["MatMulScaleFusion"] if float64 else []
        try:
            return ort.InferenceSession(model, so, providers=opts["providers"] or best_providers(),
                                        disabled_optimizers=disabled)
        except Exception as e:  # onnxruntime raises its own exception types
            raise LoweringError(f"onnxruntime could not load the model: {e}") from e

    def compile(self, graph: Graph | str | os.PathLike, weights=None, **options: Any) -> Executable:
        """Export ``graph`` (or load an exported ``.onnx`` path) and open an onnxruntime session."""
        opts = self.resolve_options(options)
        if isinstance(graph, str | os.PathLike):
            from attngraph.frontends.onnx_import import load_model

            model = load_model(graph)
            ir_graph = _graph_of(model)
            data = os.fspath(graph)  # a path, so onnxruntime finds external data beside it
        else:
            style = "decomposed" if opts["style"] == "auto" and not opts["fuse"] else opts["style"]
            model = to_onnx(graph, weights, style=style, opset=opts["opset"])
            data = model.SerializeToString()
            ir_graph = prepared(graph, {p.key: p.value for p in model.metadata_props}["attngraph.style"])
        sess = self.session(data, opts, float64=any(v.type.dtype is DType.FLOAT64 for v in ir_graph.inputs))
        names = [o.name for o in sess.get_outputs()]

        halves = any(v.type.dtype is DType.BFLOAT16 for v in ir_graph.inputs + ir_graph.outputs)

        def run(given: dict, bound: dict) -> dict:
            if halves:
                return _run_bfloat16(sess, ir_graph, given, bound)
            feed = {v.name: np.asarray(given[v.name]) for v in ir_graph.inputs}
            return dict(zip(names, sess.run(names, feed)))

        exe = Executable(ir_graph, self.name, run, opts)
        exe.session = sess
        return exe


def _run_bfloat16(sess, graph: Graph, given: dict, bound: dict) -> dict:
    """onnxruntime's NumPy API has no bfloat16: pass bfloat16 tensors as uint16 bits with an ONNX type,
    and let onnxruntime allocate the outputs (a preallocated output is checked against its own shape
    inference, which gets the Attention operator's weights output wrong), then copy their bits out."""
    import ctypes

    from attngraph.ir.dtypes import to_numpy

    def ortvalue(arr: np.ndarray, dtype: DType):
        if dtype is DType.BFLOAT16:
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view(np.uint16), onnx.TensorProto.BFLOAT16)
        return ort.OrtValue.ortvalue_from_numpy(arr)

    binding = sess.io_binding()
    for v in graph.inputs:
        binding.bind_ortvalue_input(v.name, ortvalue(np.ascontiguousarray(given[v.name]), v.type.dtype))
    for v in graph.outputs:
        binding.bind_output(v.name, "cpu")
    sess.run_with_iobinding(binding)
    outputs = {}
    for v, value in zip(graph.outputs, binding.get_outputs(), strict=True):
        if v.type.dtype is DType.BFLOAT16:
            bits = np.empty(value.shape(), np.uint16)
            ctypes.memmove(bits.ctypes.data, value.data_ptr(), bits.nbytes)
            outputs[v.name] = bits.view(to_numpy(DType.BFLOAT16))
        else:
            outputs[v.name] = value.numpy()
    return outputs


def _graph_of(model: onnx.ModelProto) -> Graph:
    """The IR graph an exported model carries in its metadata, or the one ``from_onnx`` reads."""
    from attngraph.ir.serialize import from_json

    props = {p.key: p.value for p in model.metadata_props}
    if "attngraph.graph" in props:
        return from_json(props["attngraph.graph"])
    from attngraph.frontends.onnx_import import from_onnx

    return from_onnx(model)
