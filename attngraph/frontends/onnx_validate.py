"""Checks a model of one ONNX ``Attention`` node against the operator's schema and its shapes.

``check_attention_model`` is ``from_onnx``'s gate: it reads the opset, every attribute (names and
types from ``onnx.defs.get_schema``, values by the operator's rules), the node's inputs and outputs,
and the declared types and shapes of the graph's inputs and outputs. Every refusal names the
node, attribute or tensor, the expected and the actual value, and what to do:
``SerializationError`` when the model is not a valid Attention model, ``UnsupportedModel`` when it is
valid ONNX that attngraph cannot express exactly. It reads protobuf fields only; it executes nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from attngraph.errors import SerializationError, UnsupportedModel
from attngraph.ir import DType

ATTENTION_VERSIONS = (23, 24, 25)  # the Attention versions from_onnx implements
INPUT_ROLES = ("q", "k", "v", "attn_mask", "past_key", "past_value", "key_lengths")
OUTPUT_ROLES = ("y", "present_key", "present_value", "qk_matmul_output")
ONNX_NAMES = dict(zip(INPUT_ROLES + OUTPUT_ROLES, ("Q", "K", "V", "attn_mask", "past_key", "past_value",
                                                   "nonpad_kv_seqlen", "Y", "present_key", "present_value",
                                                   "qk_matmul_output")))
_NAME_OK = re.compile(r"^[A-Za-z0-9_.]+$")  # the IR's value names (attngraph.ir.verify)
_FLOAT_TYPES = {1: DType.FLOAT32, 10: DType.FLOAT16, 11: DType.FLOAT64, 16: DType.BFLOAT16}
_ELEM_TYPES = {**_FLOAT_TYPES, 9: DType.BOOL, 6: DType.INT32, 7: DType.INT64}


@dataclass(frozen=True)
class Tensor:
    """A graph input as declared: dims are ints, symbol names (str) or None (unknown)."""

    name: str
    dtype: DType
    shape: tuple


@dataclass(frozen=True)
class AttentionNode:
    """What ``check_attention_model`` found valid: attributes with the schema's defaults filled in,
    the present inputs and the used outputs by role, and the head layout."""

    opset: int
    attrs: dict
    inputs: dict[str, Tensor]
    outputs: dict[str, str]
    layout: str
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int


def _bad(msg: str):
    raise SerializationError(msg)


def _unsupported(msg: str):
    raise UnsupportedModel(msg)


def check_attention_model(model) -> AttentionNode:
    """Validate a model of one ONNX ``Attention`` node; return its parts or raise naming the defect."""
    node, opset = _the_node(model)
    attrs = _attributes(node, opset)
    inputs, outputs = _io(model, node, opset)
    _check_node(node, opset)
    layout, heads, kv_heads, d, dv = _heads(inputs, attrs)
    _check_state(inputs, outputs, kv_heads, d, dv)
    _check_outputs(model, inputs, outputs, layout)
    _infer_shapes(model, opset)
    return AttentionNode(opset, attrs, inputs, outputs, layout, heads, kv_heads, d, dv)


# ---- the model around the node ------------------------------------------------------------------

def _the_node(model):
    if [n.op_type for n in model.graph.node] != ["Attention"]:
        _unsupported(f"the model's nodes are {[n.op_type for n in model.graph.node]}; from_onnx imports graphs "
                     "made of one ONNX Attention node")
    node = model.graph.node[0]
    if node.domain not in ("", "ai.onnx"):
        _unsupported(f"node Attention has domain {node.domain!r}, expected '' or 'ai.onnx' (the standard "
                     "operator); from_onnx does not import other operators named Attention")
    if model.functions:
        _unsupported(f"the model defines local functions {[f.name for f in model.functions]}; from_onnx imports "
                     "one standard Attention node and nothing that could redefine it: remove them")
    versions = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    if len(versions) != 1:
        _bad(f"the model imports {sorted(versions) or 'no'} version(s) of the default ONNX domain, expected "
             "exactly one: set opset_import to one of opsets 23-25 for domain ''")
    return node, _supported_opset(versions.pop())


def _supported_opset(opset: int) -> int:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    since = None
    if ATTENTION_VERSIONS[0] <= opset <= newest:
        since = onnx.defs.get_schema("Attention", opset, "").since_version
    if since not in ATTENTION_VERSIONS:
        _bad(f"the model imports ONNX opset {opset}; from_onnx reads the Attention operator of opsets "
             f"{ATTENTION_VERSIONS[0]} to {newest} (Attention-23, -24 and -25, as this onnx {onnx.__version__} "
             "defines them): export the model with one of those opsets")
    return opset


# ---- attributes -----------------------------------------------------------------------------------

def _attributes(node, opset: int) -> dict:
    """Every schema attribute: the node's value where set (type-checked), else the schema default."""
    import onnx

    schema = onnx.defs.get_schema("Attention", opset, "")
    attrs: dict = {}
    for at in node.attribute:
        if at.name in attrs:
            _bad(f"Attention attribute {at.name!r} is given twice; give it once")
        if at.name not in schema.attributes:
            _bad(f"Attention (opset {opset}) has no attribute {at.name!r}; its attributes are "
                 f"{sorted(schema.attributes)}: remove it (or use the opset that defines it)")
        if at.ref_attr_name:
            _bad(f"Attention attribute {at.name!r} refers to a function attribute {at.ref_attr_name!r}; "
                 "from_onnx needs a literal value")
        want = int(schema.attributes[at.name].type.value)
        if at.type != want:
            _bad(f"Attention attribute {at.name!r} must be {_type_name(want)}, got {_type_name(at.type)} "
                 f"({_shown(at)}): write it as {'an integer' if want == onnx.AttributeProto.INT else 'a float'}")
        attrs[at.name] = at.i if want == onnx.AttributeProto.INT else float(at.f)
    for name, spec in schema.attributes.items():
        if name not in attrs:
            default = spec.default_value
            has = default.HasField("i") or default.HasField("f")
            attrs[name] = (default.i if default.type == onnx.AttributeProto.INT else float(default.f)) if has else None
    _check_values(attrs)
    return attrs


def _type_name(code: int) -> str:
    import onnx

    try:
        return onnx.AttributeProto.AttributeType.Name(code)
    except ValueError:
        return f"type {code}"


def _shown(at) -> str:
    from onnx import helper

    try:
        return repr(helper.get_attribute_value(at))[:60]
    except (ValueError, TypeError, KeyError):  # a malformed attribute has no value to show; its type says enough
        return "no readable value"


def _check_values(a: dict) -> None:
    def need(ok: bool, name: str, want: str, fix: str) -> None:
        if not ok:
            _bad(f"Attention attribute {name}={a[name]!r} is invalid: expected {want}; {fix}")

    need(a["is_causal"] in (0, 1), "is_causal", "0 or 1", "use 1 for causal attention, 0 (the default) for none")
    need(0 <= a["qk_matmul_output_mode"] <= 3, "qk_matmul_output_mode", "one of 0, 1, 2, 3",
         "see the operator's description of the 4th output")
    for name in ("q_num_heads", "kv_num_heads"):
        need(a[name] is None or a[name] > 0, name, "a positive number of heads", "set it to the head count")
    need(math.isfinite(a["softcap"]) and a["softcap"] >= 0, "softcap", "a finite float >= 0",
         "use 0 (the default) for no soft cap")
    need(a["scale"] is None or math.isfinite(a["scale"]), "scale", "a finite float",
         "leave it out for 1/sqrt(head_size)")
    if a["scale"] is not None and a["scale"] < 0:
        _unsupported(f"Attention attribute scale={a['scale']!r} is negative: the operator scales Q and K by "
                     "sqrt(scale), which is NaN for a negative scale, and runtimes disagree; use scale >= 0")
    need(a["softmax_precision"] is None or a["softmax_precision"] in _FLOAT_TYPES, "softmax_precision",
         "1 (FLOAT), 10 (FLOAT16), 11 (DOUBLE) or 16 (BFLOAT16)", "or leave it out")
    for name in ("left_window_size", "right_window_size"):
        need(name not in a or a[name] >= -1, name, "-1 (unbounded) or a size >= 0", "use -1 for no limit")


def _check_node(node, opset: int) -> None:
    """ONNX's own node checker, as a backstop behind the checks above (its messages are terser)."""
    import onnx

    plain = onnx.NodeProto()
    plain.CopyFrom(node)
    plain.domain = ""  # the checker knows the default domain only as ''
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = onnx.IR_VERSION
    ctx.opset_imports = {"": opset}
    try:
        onnx.checker.check_node(plain, ctx)
    except Exception as e:  # onnx raises its own ValidationError (and others from pybind)
        raise SerializationError(f"ONNX's checker refuses the Attention node (opset {opset}): {e}; fix the node "
                                 "as it says") from e


# ---- inputs and outputs ---------------------------------------------------------------------------

def _io(model, node, opset: int):
    import onnx

    n_in = len(onnx.defs.get_schema("Attention", opset, "").inputs)
    if len(node.input) > n_in or len(node.output) > len(OUTPUT_ROLES):
        _bad(f"Attention (opset {opset}) takes at most {n_in} inputs and 4 outputs, got {len(node.input)} "
             f"and {len(node.output)}: remove the extra ones")
    if not node.output or not node.output[0]:
        _bad(f"Attention output Y is missing (outputs {list(node.output)}); name it and return it from the graph")
    names = dict(zip(INPUT_ROLES, node.input))
    for role in ("q", "k", "v"):
        if not names.get(role):
            _bad(f"Attention input {ONNX_NAMES[role]} is missing; Q, K and V are required")
    names = {r: n for r, n in names.items() if n}
    _check_names(names, node)
    declared = _graph_inputs(model)
    inits = {t.name for t in model.graph.initializer} | {t.values.name for t in model.graph.sparse_initializer}
    inputs = {}
    for role, name in names.items():
        if name in inits:
            _unsupported(f"Attention input {ONNX_NAMES[role]} ({name!r}) is an initializer (a constant); "
                         "from_onnx needs every input as a graph input: make it one")
        if name not in declared:
            _bad(f"Attention input {ONNX_NAMES[role]} ({name!r}) is not a graph input; from_onnx needs Q/K/V "
                 "and masks as graph inputs")
        inputs[role] = declared[name]
    unused = sorted(set(declared) - set(names.values()))
    if unused:
        _unsupported(f"graph input(s) {unused} feed no Attention input; remove them")
    return inputs, _used_outputs(model, node)


def _check_names(names: dict, node) -> None:
    outs = [o for o in node.output if o]
    for name in list(names.values()) + outs:
        if not _NAME_OK.match(name):
            _unsupported(f"tensor name {name!r} is not an attngraph value name (letters, digits, '_' or '.'): "
                         "rename it in the model")
    by_name: dict[str, list[str]] = {}
    for role, name in names.items():
        by_name.setdefault(name, []).append(ONNX_NAMES[role])
    for name, roles in by_name.items():
        # one tensor as Q, K and V (or two of them) is common (torch exports self-attention that way); one
        # tensor in any other two roles has no meaning attngraph can express
        if len(roles) > 1 and not set(roles) <= {"Q", "K", "V"}:
            _unsupported(f"tensor {name!r} feeds Attention inputs {roles}; from_onnx shares one tensor only "
                         "between Q, K and V: give the others their own inputs")
    if len(set(outs)) != len(outs) or set(outs) & set(names.values()):
        _bad(f"Attention outputs {list(node.output)} repeat a name or reuse an input name ({list(node.input)}); "
             "every ONNX value is defined once: rename them")


def _graph_inputs(model) -> dict[str, Tensor]:
    declared: dict[str, Tensor] = {}
    for vi in model.graph.input:
        if vi.name in declared:
            _bad(f"graph input {vi.name!r} is declared twice; declare it once")
        declared[vi.name] = _tensor(vi)
    return declared


def _tensor(vi) -> Tensor:
    if vi.type.WhichOneof("value") != "tensor_type":
        _unsupported(f"graph input {vi.name!r} is not a tensor ({vi.type.WhichOneof('value')}); "
                     "Attention takes tensors")
    tt = vi.type.tensor_type
    if tt.elem_type not in _ELEM_TYPES:
        _unsupported(f"graph input {vi.name!r} has element type {_elem_name(tt.elem_type)}; attngraph takes "
                     f"{sorted(d.value for d in _ELEM_TYPES.values())}")
    if not tt.HasField("shape"):
        _unsupported(f"input {vi.name!r} has no declared shape; from_onnx needs typed graph inputs")
    shape = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value < 0:
            _bad(f"graph input {vi.name!r} declares a negative dim {d.dim_value}; dims are >= 0")
        shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return Tensor(vi.name, _ELEM_TYPES[tt.elem_type], tuple(shape))


def _elem_name(code: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"code {code}"


def _used_outputs(model, node) -> dict[str, str]:
    """The node outputs the graph returns, by role; the graph may return nothing else."""
    made = {name: role for role, name in zip(OUTPUT_ROLES, node.output) if name}
    if ("present_key" in made.values()) != ("present_value" in made.values()):
        _bad("Attention outputs present_key and present_value must come together; give both or neither")
    returned = [o.name for o in model.graph.output]
    if len(set(returned)) != len(returned):
        _bad(f"graph outputs {returned} list a name twice; list each once")
    foreign = [n for n in returned if n not in made]
    if foreign:
        _bad(f"graph output(s) {foreign} are not outputs of the Attention node ({list(node.output)}); "
             "remove them")
    if node.output[0] not in returned:
        _unsupported(f"the graph does not return the Attention output Y ({node.output[0]!r}); return it")
    return {made[name]: name for name in returned}


# ---- shapes ---------------------------------------------------------------------------------------

def _static(t: Tensor, axis: int, what: str) -> int:
    d = t.shape[axis]
    if not isinstance(d, int) or d <= 0:
        _unsupported(f"input {t.name!r} dim {axis} ({what}) must be a fixed number > 0, got {d!r}; attngraph "
                     "needs fixed head counts and sizes: declare it in the graph input's shape")
    return d


def _same(a, b, what: str, fix: str) -> None:
    """Two declared dims must agree where both are fixed numbers."""
    if isinstance(a, int) and isinstance(b, int) and a != b:
        _bad(f"{what}: {a} != {b}; {fix}")


def _heads(inputs: dict[str, Tensor], a: dict):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    ranks = (len(q.shape), len(k.shape), len(v.shape))
    if len(set(ranks)) != 1 or ranks[0] not in (3, 4):
        _bad(f"Q/K/V must all be 3D or all 4D, got {q.shape}, {k.shape}, {v.shape}: see the operator's layouts")
    if q.dtype is not k.dtype or not q.dtype.is_float:
        _bad(f"Q and K must share one float type, got {q.dtype.value} and {k.dtype.value}")
    if v.dtype is not q.dtype:
        _unsupported(f"V ({v.dtype.value}) and Q ({q.dtype.value}) have different types; attngraph needs one "
                     "type for Q, K and V: cast V")
    _same(q.shape[0], k.shape[0], "Q and K batch sizes differ", "give them one batch size")
    _same(k.shape[0], v.shape[0], "K and V batch sizes differ", "give them one batch size")
    if ranks[0] == 4:
        heads, kv_heads = _static(q, 1, "q_num_heads"), _static(k, 1, "kv_num_heads")
        d, dv = _static(q, 3, "head_size"), _static(v, 3, "v_head_size")
        _same(kv_heads, _static(v, 1, "kv_num_heads"), "K and V head counts differ", "give V K's head count")
        _same(d, _static(k, 3, "head_size"), "Q and K head sizes differ", "give K Q's head size")
        _same(k.shape[2], v.shape[2], "K and V sequence lengths differ", "give them one length")
        for name, have in (("q_num_heads", heads), ("kv_num_heads", kv_heads)):
            if a[name] is not None and a[name] != have:
                _bad(f"Attention attribute {name}={a[name]} disagrees with the 4D inputs' {have} heads; "
                     "remove the attribute or make it match")
    else:
        heads, kv_heads = _three_d_heads(a)
        d, dv = _head_size(q, heads, "q"), _head_size(v, kv_heads, "kv")
        _same(d, _head_size(k, kv_heads, "kv"), "Q and K head sizes (hidden size / heads) differ",
              "make q_hidden / q_num_heads equal k_hidden / kv_num_heads")
        _same(k.shape[1], v.shape[1], "K and V sequence lengths differ", "give them one length")
    if heads % kv_heads:
        _bad(f"q heads ({heads}) must be a multiple of kv heads ({kv_heads}) (GQA/MQA); fix the head counts")
    return ("4d" if ranks[0] == 4 else "3d"), heads, kv_heads, d, dv


def _three_d_heads(a: dict) -> tuple[int, int]:
    missing = [n for n in ("q_num_heads", "kv_num_heads") if a[n] is None]
    if missing:
        _bad(f"3D Q/K/V need the attributes q_num_heads and kv_num_heads; {missing} missing: set them")
    return a["q_num_heads"], a["kv_num_heads"]


def _head_size(t: Tensor, heads: int, which: str) -> int:
    hidden = _static(t, 2, "hidden size")
    if hidden % heads:
        _bad(f"input {t.name!r} has hidden size {hidden}, which {which}_num_heads={heads} does not divide; "
             "the hidden size must be heads * head_size")
    return hidden // heads


def _check_state(inputs: dict[str, Tensor], outputs: dict[str, str], kv_heads: int, d: int, dv: int) -> None:
    """past_key/past_value, present outputs, attn_mask and nonpad_kv_seqlen."""
    k, v = inputs["k"], inputs["v"]
    pk, pv = inputs.get("past_key"), inputs.get("past_value")
    if bool(pk) != bool(pv):
        _bad("past_key and past_value must come together; give both or neither")
    if pk:
        for t, size, like in ((pk, d, k), (pv, dv, v)):
            if len(t.shape) != 4 or t.dtype is not like.dtype:
                _bad(f"past input {t.name!r} must be 4D (batch, kv_num_heads, past_len, head_size) of type "
                     f"{like.dtype.value}, got {t.dtype.value}{list(t.shape)}")
            _same(t.shape[1], kv_heads, f"past input {t.name!r}'s head count differs from K/V's", "match them")
            _same(t.shape[3], size, f"past input {t.name!r}'s head size differs from K/V's", "match them")
            _same(t.shape[0], k.shape[0], f"past input {t.name!r}'s batch size differs from K's", "match them")
        _same(pk.shape[2], pv.shape[2], "past_key and past_value lengths differ", "give them one length")
    if ("present_key" in outputs or "present_value" in outputs) and not pk:
        _unsupported("the Attention node returns present_key/present_value without past_key/past_value; "
                     "attngraph returns them only with a KV cache: give the past inputs or drop the outputs")
    lengths = inputs.get("key_lengths")
    if lengths:
        if lengths.dtype is not DType.INT64 or len(lengths.shape) != 1:
            _bad(f"nonpad_kv_seqlen {lengths.name!r} must be int64 of shape (batch,), got "
                 f"{lengths.dtype.value}{list(lengths.shape)}")
        _same(lengths.shape[0], k.shape[0], "nonpad_kv_seqlen's length differs from the batch size", "match them")
        if pk:
            _unsupported("nonpad_kv_seqlen is used with past_key/past_value, which the operator says it should "
                         "not be (its meaning is undefined): use one KV-cache style")
    if "attn_mask" in inputs:
        _check_mask(inputs["attn_mask"], inputs["q"])


def _check_mask(m: Tensor, q: Tensor) -> None:
    if m.dtype in (DType.INT32, DType.INT64):
        _unsupported(f"attn_mask {m.name!r} has an integer type: ONNX adds it as a bias, which masks nothing; "
                     "attngraph rejects integer masks (use bool, True = attend)")
    if m.dtype is not DType.BOOL and m.dtype is not q.dtype:
        _bad(f"float attn_mask {m.name!r} is {m.dtype.value}, expected Q's type {q.dtype.value} (or bool): cast it")
    # rank 1 is broadcastable too, and ONNX's own opset-25 cases use it
    if not 1 <= len(m.shape) <= 4:
        _bad(f"attn_mask {m.name!r} has rank {len(m.shape)}; it must broadcast to (batch, q_num_heads, q_len, "
             "total_len): rank 1 to 4")


def _check_outputs(model, inputs: dict[str, Tensor], outputs: dict[str, str], layout: str) -> None:
    """Declared output types must be the ones the operator gives (a lie there is a broken model)."""
    want = {"y": (inputs["q"].dtype, 3 if layout == "3d" else 4), "present_key": (inputs["k"].dtype, 4),
            "present_value": (inputs["v"].dtype, 4), "qk_matmul_output": (inputs["q"].dtype, 4)}
    by_name = {o.name: o for o in model.graph.output}
    for role, name in outputs.items():
        tt = by_name[name].type.tensor_type
        dtype, rank = want[role]
        if tt.elem_type and _ELEM_TYPES.get(tt.elem_type) is not dtype:
            _bad(f"graph output {name!r} ({ONNX_NAMES[role]}) declares type {_elem_name(tt.elem_type)}, but the "
                 f"operator makes {dtype.value}: fix the declaration")
        if tt.HasField("shape") and len(tt.shape.dim) != rank:
            _bad(f"graph output {name!r} ({ONNX_NAMES[role]}) declares rank {len(tt.shape.dim)}, but the operator "
                 f"makes rank {rank}: fix the declaration")


def _infer_shapes(model, opset: int) -> None:
    """ONNX's strict shape inference, last: it finds declared dims that disagree with the operator."""
    import onnx

    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    plain.graph.node[0].domain = ""  # onnx's inference knows the default domain only as ''
    del plain.opset_import[:]
    plain.opset_import.append(onnx.helper.make_opsetid("", opset))
    try:
        onnx.shape_inference.infer_shapes(plain, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError and others from pybind
        raise SerializationError(f"ONNX shape inference refuses the model: {e}; fix the declared shapes") from e
