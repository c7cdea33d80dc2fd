"""A model made ready for discovery: loaded safely, node names unique, symbolic shapes inferred, in onnx-ir.

Discovery never changes the caller's model. It works on a copy whose unnamed or duplicated node names are
made unique (``Subgraph.nodes`` names nodes, so they must be), and says so in ``Prepared.notes``. Shapes come
from onnxruntime's symbolic shape inference (clean names such as ``batch*seq`` for the exporters' shape
arithmetic), which is tried first without merging dims and then with it (merging assumes that two dims
meeting in a broadcast are equal; a note says so); where it fails, from onnx's own inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attngraph.errors import AttnGraphError
from attngraph.frontends.onnx_discovery.graph_edit import name_nodes
from attngraph.frontends.onnx_discovery.symbolic import Poly, parse_dim


@dataclass
class Prepared:
    """The model as discovery reads it: ``proto`` (names unique), ``model`` (onnx-ir over the same nodes),
    ``shapes`` (value name -> dims as ``Poly`` or None for unknown), ``base_dir`` (external data) and notes."""

    proto: object
    model: object
    shapes: dict[str, tuple[Poly | None, ...]]
    base_dir: str | None = None
    notes: list[str] = field(default_factory=list)


def load(source):
    """``(ModelProto, base_dir)`` through the safe loader (``model_io.load_untrusted``): nothing in the file
    is believed before it is checked, and external data is read only from the model's own folder."""
    from attngraph.frontends.onnx_discovery.model_io import load_untrusted

    return load_untrusted(source)


def prepare(proto, base_dir: str | None = None) -> Prepared:
    """Copy ``proto`` with unique node names, infer its shapes, and convert it to onnx-ir."""
    import onnx
    import onnx_ir as ir

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    notes = _unique_names(copy)
    shapes, types, note = _infer_shapes(copy)
    if note:
        notes.append(note)
    try:
        model = ir.serde.deserialize_model(copy)
    except Exception as e:  # onnx-ir raises several types for malformed protos
        raise AttnGraphError(f"onnx-ir cannot read the model: {e}") from e
    for node in model.graph:  # element types from inference where the model declares none (TorchScript)
        for v in node.outputs:
            if v.dtype is None and types.get(v.name):
                v.dtype = ir.DataType(types[v.name])
    return Prepared(copy, model, shapes, base_dir, notes)


def _unique_names(model) -> list[str]:
    """Name every node of the main graph uniquely (in place, ``graph_edit.name_nodes``); a note when a name had
    to change."""
    renamed = name_nodes(model)
    if not renamed:
        return []
    note = (f"{renamed} node(s) of the model had no name or a duplicated one; discovery named them (e.g. "
            "'Softmax_12', 'name__1') and Subgraph.nodes uses those names")
    return [note]


def _infer_shapes(model) -> tuple[dict[str, tuple[Poly | None, ...]], dict[str, int], str | None]:
    """Each value's dims (as ``Poly``) and element type, and a note when dims had to be merged or inference
    was partial."""
    attempts = (("symbolic", False), ("symbolic", True), ("onnx", None))
    for how, merge in attempts:
        inferred = _run_inference(model, how, merge)
        if inferred is None:
            continue
        note = None
        if merge:
            note = ("symbolic shape inference merged dims that meet in a broadcast (it takes them to be equal): "
                    "the lifted graphs assume the model's own dims agree as its ops require")
        elif how == "onnx":
            note = "symbolic shape inference failed on this model; onnx's shape inference was used instead"
        return _dims(inferred), _types(inferred), note
    return _dims(model), _types(model), "no shape inference succeeded; only the model's declared shapes were used"


def _run_inference(model, how: str, merge: bool | None):
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if how == "symbolic":
                return _symbolic(model, merge)
            import onnx

            return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - both inferences raise many types on models they cannot follow: try the next
        return None


def _symbolic(model, merge: bool):
    """onnxruntime's symbolic shape inference, or None where it cannot infer every shape. Its public
    ``infer_shapes`` saves the model into the working directory when it fails (``sym_shape_infer_temp.onnx``
    and its data files); discovery never writes files, so the same steps run here without that save."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    ssi = SymbolicShapeInference(2**31 - 1, merge, False, 0)
    ssi._preprocess(model)
    complete = False
    while ssi.run_:
        complete = ssi._infer_impl()
    ssi._update_output_from_vi()
    return ssi.out_mp_ if complete else None


def _types(model) -> dict[str, int]:
    g = model.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}


def _dims(model) -> dict[str, tuple[Poly | None, ...]]:
    g = model.graph
    out: dict[str, tuple[Poly | None, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None or not t.HasField("shape"):
            continue
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(parse_dim(int(d.dim_value)))
            elif d.dim_param:
                dims.append(parse_dim(d.dim_param))
            else:
                dims.append(None)
        out[vi.name] = tuple(dims)
    for t in g.initializer:
        out[t.name] = tuple(Poly.of(int(d)) for d in t.dims)
    return out
