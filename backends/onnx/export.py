"""Lower a graph to an ONNX model, in one of three styles.

Styles: ``decomposed`` (primitive ops, opset >= 17; any runtime), ``attention`` (the standard
opset-23 ``Attention`` operator for the core), ``contrib`` (onnxruntime's
``com.microsoft.MultiHeadAttention`` where it is exact), and ``auto`` (see ``choose_style``).
Batch and sequence axes stay symbolic, so one exported file serves every shape.
"""

from __future__ import annotations

import numpy as np
import onnx
from attngraph_backends.onnx import paged  # noqa: F401 - registers paged_cache_update's ScatterND rule
from attngraph_backends.onnx.emitter import OnnxEmitter
from attngraph_backends.onnx.fused import ATTENTION_STYLE, CONTRIB_STYLE
from attngraph_backends.onnx.rules import DECOMPOSED
from onnx import helper

from attngraph.errors import AttnGraphError, Unsupported
from attngraph.ir import DType, Graph, Op
from attngraph.ir.verify import verify_graph
from attngraph.lowering import interpret
from attngraph.lowering.onnx_facts import IR_VERSION, MIN_OPSET
from attngraph.lowering.weights import Weights

STYLES = {"decomposed": DECOMPOSED, "attention": ATTENTION_STYLE, "contrib": CONTRIB_STYLE}
DEFAULT_OPSET = {"decomposed": 18, "attention": 23, "contrib": 18}
SEMANTICS = ("attngraph/1: bool mask True = attend; float mask added; causal j <= i + past_len (top-left); "
             "fully masked rows give 0; GQA q head h uses kv head h // (Hq/Hkv); math in float32 or wider")

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


def prepared(graph: Graph, style: str) -> Graph:
    """The graph as the exporter lowers it in ``style``: what the exported model computes, op for op."""
    from attngraph.passes import decompose, fuse_attention, unfuse_qkv_projection

    # onnxruntime runs three projections faster than one GEMM + Split (the split copies): measured
    # 37 vs 40 ms at B=8, T=128, d_model=512, so the ONNX lowering undoes the QKV fusion.
    graph = unfuse_qkv_projection(graph)
    graph = fuse_attention(graph) if style != "decomposed" else graph
    return verify_graph(decompose(graph, keep=set(STYLES[style])))


def to_onnx(graph: Graph, weights=None, *, style: str = "auto", opset: int | None = None,
            guards: bool = True) -> onnx.ModelProto:
    """The ONNX model for ``graph`` with ``weights`` as initializers (checked by name and shape).

    ``guards=False`` leaves out the ``If`` branches that keep a fused attention operator on attngraph's
    semantics for empty inputs and non-finite values (``guards.py``): the model then does what the
    runtime's operator does there, as a model written by hand would. Such a model is not a faithful
    attngraph export (its metadata says ``attngraph.guards: off``, and ``compile(path)`` runs it as the
    ONNX it is); ``attngraph optimize --no-guards`` uses it where speed at small shapes matters."""
    verify_graph(graph)
    refuse_float8(graph)
    if style == "auto":
        style = choose_style(graph, opset)
    if style not in STYLES:
        raise AttnGraphError(f"unknown ONNX style {style!r}; choose one of {sorted(STYLES)} or 'auto'")
    if opset is None:  # a static cache's write is TensorScatter and its read Attention-24: opset 24
        opset = max(DEFAULT_OPSET[style], 24 if style != "decomposed" and graph.count(Op.CACHE_UPDATE) else 0)
    opset = int(opset)
    if opset < MIN_OPSET[style]:
        why = "the Attention operator needs opset >= 23" if style == "attention" else "it uses opset-17 ops"
        raise AttnGraphError(f"opset {opset} is too old for style {style!r} ({why}); use opset="
                             f"{DEFAULT_OPSET[style]} or another style")
    weights = Weights(weights or {}).check(graph)
    lowered = prepared(graph, style)
    e = OnnxEmitter(lowered, opset)
    e.guards = bool(guards)
    env: dict = {v: e.to_compute(v.name, v.type.dtype) for v in lowered.inputs}
    for p in lowered.params:
        e.initializers.append(onnx.numpy_helper.from_array(np.asarray(weights[p.name]), p.name))
        env[p] = e.to_compute(p.name, p.type.dtype)
    interpret(lowered.nodes, STYLES[style], env, {}, e)
    gp = e.finish(lowered, env, doc=f"attngraph export, style {style}")
    imports = [helper.make_opsetid("", opset)]
    if style == "contrib":
        imports.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(gp, opset_imports=imports, producer_name="attngraph", producer_version=_version())
    model.ir_version = IR_VERSION
    from attngraph.ir.serialize import to_json

    props = {"attngraph.version": _version(), "attngraph.semantics": SEMANTICS, "attngraph.style": style,
             "attngraph.graph": to_json(graph)}
    if not guards:
        props["attngraph.guards"] = "off"
    helper.set_model_props(model, props)
    return model


def _version() -> str:
    from attngraph.version import __version__

    return __version__


def refuse_float8(graph: Graph) -> None:
    """A float8 KV cache is refused by name: onnxruntime's CPU provider has no float8 Mul/Cast path that this
    export could rely on, and its NumPy API cannot hand float8 buffers in place; int8 exports as Cast and Mul."""
    found = [v.name for v in graph.inputs + graph.outputs if v.type.dtype is DType.FLOAT8_E4M3FN]
    if found:
        raise Unsupported(f"onnx: graph {graph.name} stores {found} as float8_e4m3fn, which this ONNX export does not "
                          "run on onnxruntime's CPU provider; use kv_cache_dtype='int8', or the numpy, numba or "
                          "torch backend for float8")
