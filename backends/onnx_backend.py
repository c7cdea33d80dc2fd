"""The ONNX backend: lower a graph to an ONNX model (three styles) and run it with onnxruntime.

Styles: ``decomposed`` (primitive ops, opset >= 17; any runtime), ``attention`` (the standard
opset-23 ``Attention`` operator for the core), ``contrib`` (onnxruntime's
``com.microsoft.MultiHeadAttention`` where it is exact), and ``auto`` (see ``choose_style``).
Batch and sequence axes stay symbolic, so one exported file serves every shape.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from attngraph.errors import AttnGraphError, LoweringError
from attngraph.ir import DType, Graph
from attngraph.lowering import Backend, Executable, interpret
from attngraph.verify import verify_graph
from attngraph.weights import Weights
from backends.onnx_emitter import OnnxEmitter
from backends.onnx_fused import ATTENTION_STYLE, CONTRIB_STYLE
from backends.onnx_rules import DECOMPOSED

STYLES = {"decomposed": DECOMPOSED, "attention": ATTENTION_STYLE, "contrib": CONTRIB_STYLE}
MIN_OPSET = {"decomposed": 17, "attention": 23, "contrib": 17}
DEFAULT_OPSET = {"decomposed": 18, "attention": 23, "contrib": 18}
IR_VERSION = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 rejects
SEMANTICS = ("attngraph/1: bool mask True = attend; float mask added; causal j <= i + past_len (top-left); "
             "fully masked rows give 0; GQA q head h uses kv head h // (Hq/Hkv); math in float32 or wider")
OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def choose_style(graph: Graph, opset: int | None = None) -> str:
    """``auto``: the single ``Attention`` node when the opset allows it and it is exact, else decomposed.

    ``Attention`` is exact on onnxruntime >= 1.28 for every graph the IR expresses, except float64
    graphs: its ``scale`` is a float32 attribute and its function body scales Q and K by its square
    root, which costs ~1e-8 relative error; the decomposed graph keeps float64 exact.
    """
    if opset is not None and opset < MIN_OPSET["attention"]:
        return "decomposed"
    if any(v.type.dtype is DType.FLOAT64 for v in graph.inputs):
        return "decomposed"
    return "attention"


def _prepared(graph: Graph, style: str) -> Graph:
    from attngraph.passes import decompose, fuse_attention, unfuse_qkv_projection

    # onnxruntime runs three projections faster than one GEMM + Split (the split copies): measured
    # 37 vs 40 ms at B=8, T=128, d_model=512, so the ONNX lowering undoes the QKV fusion.
    graph = unfuse_qkv_projection(graph)
    graph = fuse_attention(graph) if style != "decomposed" else graph
    return verify_graph(decompose(graph, keep=set(STYLES[style])))


def to_onnx(graph: Graph, weights=None, *, style: str = "auto", opset: int | None = None) -> onnx.ModelProto:
    """The ONNX model for ``graph`` with ``weights`` as initializers (checked by name and shape)."""
    verify_graph(graph)
    if style == "auto":
        style = choose_style(graph, opset)
    if style not in STYLES:
        raise AttnGraphError(f"unknown ONNX style {style!r}; choose one of {sorted(STYLES)} or 'auto'")
    opset = DEFAULT_OPSET[style] if opset is None else int(opset)
    if opset < MIN_OPSET[style]:
        why = "the Attention operator needs opset >= 23" if style == "attention" else "it uses opset-17 ops"
        raise AttnGraphError(f"opset {opset} is too old for style {style!r} ({why}); use opset="
                             f"{DEFAULT_OPSET[style]} or another style")
    weights = Weights(weights or {}).check(graph)
    lowered = _prepared(graph, style)
    e = OnnxEmitter(lowered, opset)
    env: dict = {v: e.to_compute(v.name, v.type.dtype) for v in lowered.inputs}
    for p in lowered.params:
        e.initializers.append(onnx.numpy_helper.from_array(np.asarray(weights[p.name]), p.name))
        env[p] = e.to_compute(p.name, p.type.dtype)
    interpret(lowered.nodes, STYLES[style], env, {}, e)
    gp = e.finish(lowered, env, doc=f"attngraph export, style {style}")
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if style == "contrib" else [])
    model = helper.make_model(gp, opset_imports=imports, producer_name="attngraph", producer_version=_version())
    model.ir_version = IR_VERSION
    from attngraph.serialize import to_json

    helper.set_model_props(model, {"attngraph.version": _version(), "attngraph.semantics": SEMANTICS,
                                   "attngraph.style": style, "attngraph.graph": to_json(graph)})
    return model


def _version() -> str:
    import attngraph

    return attngraph.__version__


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
            from attngraph.onnx_import import load_model

            model = load_model(graph)
            ir_graph = _graph_of(model)
            data = os.fspath(graph)  # a path, so onnxruntime finds external data beside it
        else:
            ir_graph = graph
            style = "decomposed" if opts["style"] == "auto" and not opts["fuse"] else opts["style"]
            data = to_onnx(graph, weights, style=style, opset=opts["opset"]).SerializeToString()
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
    """onnxruntime's NumPy API has no bfloat16: pass bfloat16 tensors as uint16 bits with an ONNX type."""
    from attngraph import dims
    from attngraph.dtypes import to_numpy

    def ortvalue(arr: np.ndarray, dtype: DType):
        if dtype is DType.BFLOAT16:
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view(np.uint16), onnx.TensorProto.BFLOAT16)
        return ort.OrtValue.ortvalue_from_numpy(arr)

    binding = sess.io_binding()
    for v in graph.inputs:
        binding.bind_ortvalue_input(v.name, ortvalue(np.ascontiguousarray(given[v.name]), v.type.dtype))
    outputs = {}
    for v in graph.outputs:
        shape = tuple(dims.evaluate(d, bound) for d in v.type.shape)
        outputs[v.name] = np.empty(shape, to_numpy(v.type.dtype))
        binding.bind_ortvalue_output(v.name, ortvalue(outputs[v.name], v.type.dtype))
    sess.run_with_iobinding(binding)
    return outputs


def _graph_of(model: onnx.ModelProto) -> Graph:
    """The IR graph an exported model carries in its metadata, or the one ``from_onnx`` reads."""
    from attngraph.serialize import from_json

    props = {p.key: p.value for p in model.metadata_props}
    if "attngraph.graph" in props:
        return from_json(props["attngraph.graph"])
    from attngraph.onnx_import import from_onnx

    return from_onnx(model)
