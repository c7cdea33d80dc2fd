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
from attngraph.lowering.value_checks import ValueChecks

_LEVEL = ort.GraphOptimizationLevel
OPT_LEVELS = {"disable": _LEVEL.ORT_DISABLE_ALL, "basic": _LEVEL.ORT_ENABLE_BASIC,
              "extended": _LEVEL.ORT_ENABLE_EXTENDED, "all": _LEVEL.ORT_ENABLE_ALL}

def best_providers() -> list[str]:
    """TensorRT and CUDA when this onnxruntime has them, then the CPU."""
    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxBackend(Backend):
    """Runs graphs through onnxruntime. Options: ``style`` ("auto"), ``opset`` (per style), ``providers``
    (best available), ``graph_optimization_level`` ("all"), ``intra_op_num_threads`` and
    ``inter_op_num_threads`` (0 = onnxruntime's choice), ``spinning`` (True, onnxruntime's default: its
    threads spin after each run for the next one; False when other thread pools share the process, such as
    the numba or torch backend: measured, a numba decode step right after an onnx one 7.1 -> 4.1 ms, the
    onnx step alone 4.2 -> 5.3 ms)."""

    name = "onnx"
    rules = ATTENTION_STYLE
    options = {**Backend.options, "style": "auto", "opset": None, "providers": None,
               "graph_optimization_level": "all", "intra_op_num_threads": 0, "inter_op_num_threads": 0,
               "spinning": True}

    def to_model(self, graph: Graph, weights=None, *, style: str = "auto", opset: int | None = None,
                 guards: bool = True) -> onnx.ModelProto:
        """The ONNX model of ``graph`` with ``weights`` as initializers (see ``export.to_onnx``)."""
        return to_onnx(graph, weights, style=style, opset=opset, guards=guards)

    def embedded_graph(self, model: onnx.ModelProto, base_dir: str = "") -> tuple[Graph | None, str]:
        """The IR graph an attngraph export carries in its metadata, believed only once proven: ``(graph, "")``
        when ``model`` is exactly the export of that graph (re-exported in the recorded style and opset and
        compared node for node; the params' initializers checked for name, type, shape and stored size), else
        ``(None, why)``, also for a model that carries no graph. ``base_dir``: where its external data lives.
        The weights are the model's initializers named by ``graph.params``."""
        props = {p.key: p.value for p in model.metadata_props}
        if "attngraph.graph" not in props:
            return None, "it carries no attngraph graph in its metadata"
        return _embedded(model, props, base_dir)

    def session(self, model: bytes | str, opts: dict, float64: bool = False) -> ort.InferenceSession:
        so = ort.SessionOptions()
        if opts["graph_optimization_level"] not in OPT_LEVELS:
            raise AttnGraphError(f"graph_optimization_level must be one of {sorted(OPT_LEVELS)}")
        so.graph_optimization_level = OPT_LEVELS[opts["graph_optimization_level"]]
        so.intra_op_num_threads = int(opts["intra_op_num_threads"])
        so.inter_op_num_threads = int(opts["inter_op_num_threads"])
        spin = "1" if opts["spinning"] else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        # fatal only: onnxruntime logs each failed run to stderr, and every such failure reaches the caller as an
        # exception anyway (wrapped in attngraph's error); at level 3 it also warned about its own Attention
        # output-shape inference
        so.log_severity_level = 4
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

            path = os.fspath(graph)
            model = load_model(path)
            ir_graph = source = _graph_of(model, os.path.dirname(os.path.abspath(path)))
            # onnxruntime runs the very bytes just checked; only a model with external data goes by its
            # path, so that onnxruntime finds the data beside it
            data = path if _has_external_data(model) else model.SerializeToString()
        else:
            style = "decomposed" if opts["style"] == "auto" and not opts["fuse"] else opts["style"]
            model = to_onnx(graph, weights, style=style, opset=opts["opset"])
            data = model.SerializeToString()
            ir_graph = prepared(graph, {p.key: p.value for p in model.metadata_props}["attngraph.style"])
            source = graph
        sess = self.session(data, opts, float64=any(v.type.dtype is DType.FLOAT64 for v in ir_graph.inputs))
        names = [o.name for o in sess.get_outputs()]

        halves = any(v.type.dtype is DType.BFLOAT16 for v in ir_graph.inputs + ir_graph.outputs)
        caches = cache_pairs(ir_graph) if opts["cache_inplace"] else {}

        def run_session(given: dict, bound: dict) -> dict:
            if halves:
                return _run_bfloat16(sess, ir_graph, given, bound)
            if caches and all(_aliasable(given[past]) for past in caches.values()):
                return _run_cache_in_place(sess, ir_graph, given, caches)
            feed = {v.name: np.asarray(given[v.name]) for v in ir_graph.inputs}
            return dict(zip(names, sess.run(names, feed)))

        def run(given: dict, bound: dict) -> dict:
            try:
                return run_session(given, bound)
            except Exception as e:  # onnxruntime raises its own exception types, none of them attngraph's
                raise LoweringError(f"onnxruntime failed to run the model on {sess.get_providers()[0]}: "
                                    f"{e}") from e

        exe = Executable(ir_graph, self.name, run, opts, ValueChecks(source))
        exe.session = sess
        return exe


def cache_pairs(graph: Graph) -> dict[str, str]:
    """Output name -> input name of each static cache the graph writes (``cache_update`` of a graph input
    into a graph output, in float32: the buffer the model's ``TensorScatter`` reads and writes as is)."""
    from attngraph.ir import Op

    inputs, outputs = set(graph.inputs), {v.name for v in graph.outputs}
    return {n.output.name: n.inputs[0].name for n in graph.nodes
            if n.op is Op.CACHE_UPDATE and n.inputs[0] in inputs and n.output.name in outputs
            and n.inputs[0].type.dtype is DType.FLOAT32}


def _aliasable(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous \
        and array.flags.writeable


def _run_cache_in_place(sess, graph: Graph, given: dict, caches: dict[str, str]) -> dict:
    """Run with I/O binding so each cache's output is its input buffer: onnxruntime's ``TensorScatter``
    then writes the new entries into the caller's array and copies nothing (measured: a one-token write
    into a 16 MiB cache drops from about 1 ms to a few microseconds)."""
    binding = sess.io_binding()
    values = {}
    for v in graph.inputs:
        array = given[v.name] if v.name in caches.values() else np.ascontiguousarray(given[v.name])
        values[v.name] = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
        binding.bind_ortvalue_input(v.name, values[v.name])
    for v in graph.outputs:
        if v.name in caches:
            binding.bind_ortvalue_output(v.name, values[caches[v.name]])
        else:
            binding.bind_output(v.name, "cpu")
    sess.run_with_iobinding(binding)
    out = {}
    for v, value in zip(graph.outputs, binding.get_outputs(), strict=True):
        out[v.name] = given[caches[v.name]] if v.name in caches else value.numpy()
    return out


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


def _graph_of(model: onnx.ModelProto, base_dir: str = "") -> Graph:
    """The IR graph ``model`` computes, never taken on the file's word.

    The graph in the model's metadata counts only when the model is exactly what exporting that graph
    gives (``_embedded``: nodes, inputs, outputs, constants; the params' names, types and shapes).
    Otherwise the model is described from its own nodes (``from_onnx``), or refused with
    ``UnsupportedModel``. ``base_dir``: where the model's external data lives.
    """
    from attngraph.errors import UnsupportedModel
    from attngraph.frontends.onnx_import import from_onnx

    props = {p.key: p.value for p in model.metadata_props}
    if "attngraph.graph" not in props:
        return from_onnx(model)
    graph, why = _embedded(model, props, base_dir)
    if graph is not None:
        return graph
    try:
        return from_onnx(model)
    except AttnGraphError as e:
        from attngraph.version import __version__

        made_by = props.get("attngraph.version")
        hint = f" (it was written by attngraph {made_by}, this is {__version__})" if made_by != __version__ else ""
        raise UnsupportedModel(f"the model's nodes do not match its embedded attngraph graph: {why}{hint}; and "
                               f"from_onnx cannot describe the model from its nodes either: {e}. Re-export it "
                               "with attngraph.export_onnx") from None


def _embedded(model: onnx.ModelProto, props: dict, base_dir: str) -> tuple[Graph | None, str]:
    """``(graph, "")`` when ``model`` is exactly the export of the graph in its metadata, else ``(None, why)``."""
    from attngraph_backends.onnx.export import STYLES

    from attngraph.ir.serialize import from_json

    try:
        graph = from_json(props["attngraph.graph"])
    except AttnGraphError as e:
        return None, f"the embedded graph does not load ({e})"
    style = props.get("attngraph.style")
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if style not in STYLES or len(opsets) != 1:
        return None, f"style {style!r} with default-domain opset(s) {opsets} is not an attngraph export"
    why = _params_stored(model, graph, base_dir)
    if why:
        return None, why
    try:
        ref = to_onnx(graph, _zero_weights(graph), style=style, opset=opsets[0])
    except AttnGraphError as e:
        return None, f"the embedded graph does not export as style {style!r} ({e})"
    why = _difference(model, ref, {p.name for p in graph.params}, base_dir)
    return (None, why) if why else (graph, "")


def _zero_weights(graph: Graph):
    """Stand-in weights: the comparison looks at the params' names, types and shapes, not their values."""
    from attngraph.ir.dtypes import to_numpy
    from attngraph.lowering.weights import Weights

    return Weights({p.name: np.zeros(tuple(int(d) for d in p.type.shape), to_numpy(p.type.dtype))
                    for p in graph.params})


def _params_stored(model: onnx.ModelProto, graph: Graph, base_dir: str) -> str | None:
    """Why the model's initializers do not hold the graph's params (name, type, shape, stored size), or None.

    Checked before re-exporting, which makes arrays of the params' declared sizes: a file cannot make
    us allocate more than it actually stores."""
    import math

    from attngraph_backends.onnx.emitter import ONNX_TYPES

    inits = {t.name: t for t in model.graph.initializer}
    for p in graph.params:
        t, shape = inits.get(p.name), tuple(int(d) for d in p.type.shape)
        if t is None or t.data_type != ONNX_TYPES[p.type.dtype] or tuple(t.dims) != shape:
            return f"param {p.name!r} ({p.type}) has no initializer of that type and shape"
        if _stored_elements(t, base_dir) < math.prod(shape):
            return f"initializer {p.name!r} stores fewer elements than its shape {list(shape)} needs"
    return None


def _stored_elements(t: onnx.TensorProto, base_dir: str) -> int:
    """How many elements ``t`` really stores, inline or in its external file (-1 if that is unreadable)."""
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if not info.get("location"):
            return -1
        try:
            size = os.stat(os.path.join(base_dir, info["location"])).st_size - int(info.get("offset") or 0)
            return min(size, int(info["length"])) // itemsize if "length" in info else size // itemsize
        except (OSError, ValueError):
            return -1
    if t.HasField("raw_data"):
        return len(t.raw_data) // itemsize
    return len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data) + len(t.uint64_data)


def _difference(model: onnx.ModelProto, ref: onnx.ModelProto, params: set[str], base_dir: str) -> str | None:
    """The first way ``model`` differs from ``ref`` (the re-export of its graph), or None.

    Compared: opset imports, every node (op type, domain, name, inputs, outputs, attributes, subgraphs),
    the graph's name and declared inputs and outputs, the initializers' names, and the data of those
    that are not params. Not compared: the params' values (the weights; ``_params_stored`` checked their
    type and shape), and annotations outside the nodes that do not change what runs (value_info, the
    graph's and model's doc strings, metadata, ir_version)."""
    g, r = model.graph, ref.graph
    if sorted((o.domain, o.version) for o in model.opset_import) != \
            sorted((o.domain, o.version) for o in ref.opset_import):
        return "its opset imports differ from the export's"
    if model.functions or g.sparse_initializer:
        return "it has local functions or sparse initializers, which an export never has"
    if len(g.node) != len(r.node):
        return f"it has {len(g.node)} node(s) where the export has {len(r.node)}"
    for i, (a, b) in enumerate(zip(g.node, r.node)):
        if a != b and _node_text(a) == _node_text(b):
            return f"node {i}, {_node_text(a)}, has other attributes (or subgraphs) than the export's"
        if a != b:
            return f"node {i} is {_node_text(a)} where the export has {_node_text(b)}"
    if g.name != r.name or list(g.input) != list(r.input) or list(g.output) != list(r.output):
        return "its name or declared inputs or outputs (names, types, shapes) differ from the graph's"
    if [t.name for t in g.initializer] != [t.name for t in r.initializer]:
        return "its initializers are not the export's"
    for a, b in zip(g.initializer, r.initializer):
        if a.name not in params and not _same_tensor(a, b, base_dir):
            return f"constant {a.name!r} differs from the export's"
    return None


def _node_text(node: onnx.NodeProto) -> str:
    op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
    return f"{op}({', '.join(node.input)}) -> {', '.join(node.output)}"[:120]


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto, base_dir: str) -> bool:
    """Same type, shape and bits (onnx reads external data only inside ``base_dir``, within the file)."""
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    try:
        x, y = onnx.numpy_helper.to_array(a, base_dir), onnx.numpy_helper.to_array(b)
    except (ValueError, TypeError, OSError, onnx.checker.ValidationError):  # undecodable: not the export's
        return False
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
