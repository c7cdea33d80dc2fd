"""The checks of an ONNX model that nobody vouches for, which ``model_io.load_untrusted`` runs before it believes
anything the file claims:

* versions and opsets (``check_model_proto``): the IR version and opsets are ones this ``onnx`` defines, and
  every standard op exists at the model's opset;
* structure: every node reads values defined before it (no cycle, no dangling name, each value defined once),
  in subgraphs and functions too;
* declared shapes: every declared dim is a sane number (a dim of 1e12 is refused before anything is allocated);
* tensors (``check_tensors``, ``tensor_nbytes``): every tensor stores exactly the bytes its type and shape
  need, inline or in an external file;
* external references: only regular files inside the model's own folder (no absolute path, no ``..`` that
  leaves it, no symlink that points out of it), offsets and lengths within the file;
* onnx's own checker last (``check_with_onnx``), with the external data not yet read.

Nothing here reads external data: ``model_io`` does, once these checks pass.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass

from attngraph.errors import SerializationError, UnsupportedModel

PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf neither parses nor serializes a larger message
MAX_DIM = 2**31 - 1  # a declared dim above this is a lie or a trap (no real tensor has 2^31 rows)
MAX_ELEMENTS = 2**40  # nor 2^40 elements
MIN_OPSET = 7  # the oldest default-domain opset onnxruntime runs
IR_VERSIONS = (3, None)  # None: up to the newest this onnx knows (onnx.IR_VERSION)
_EXTERNAL_KEYS = ("location", "offset", "length", "checksum")
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


def check_model_proto(model, where: str = "the model") -> None:
    """Every check of ``load_untrusted`` that needs no file: versions, opsets, graph structure, declared dims.
    For a model built in memory (``optimize`` checks what it is about to write)."""
    _check_versions(model, where)
    _check_graph(model.graph, where, outer=frozenset(), path="graph")
    for f in model.functions:
        _check_graph(f, where, outer=frozenset(), path=f"function {f.domain}.{f.name}", function=True)
    _check_declared(model.graph, where)


# ---- versions and opsets ------------------------------------------------------------------------------

def _check_versions(model, where: str) -> None:
    import onnx

    newest_ir = IR_VERSIONS[1] or onnx.IR_VERSION
    if not IR_VERSIONS[0] <= model.ir_version <= newest_ir:
        raise UnsupportedModel(f"{where} has IR version {model.ir_version}; this onnx {onnx.__version__} reads IR "
                               f"versions {IR_VERSIONS[0]} to {newest_ir}: re-export it with a current exporter")
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in opsets:
            raise SerializationError(f"{where} imports domain {o.domain or 'ai.onnx'!r} twice (versions "
                                     f"{opsets[domain]} and {o.version}): import each domain once")
        opsets[domain] = o.version
    newest = onnx.defs.onnx_opset_version()
    uses_default = any(n.domain in ("", "ai.onnx") for n in _all_nodes(model.graph))
    if "" not in opsets and uses_default:
        raise SerializationError(f"{where} uses standard ONNX ops but imports no version of the default domain: "
                                 f"add opset_import {{domain: '', version: N}} with N in {MIN_OPSET}..{newest}")
    if "" in opsets and not MIN_OPSET <= opsets[""] <= newest:
        raise UnsupportedModel(f"{where} imports ONNX opset {opsets['']}; supported are opsets {MIN_OPSET} to "
                               f"{newest} (this onnx {onnx.__version__}): re-export the model with one of those "
                               "(or convert it with onnx.version_converter)")
    local = {(f.domain, f.name) for f in model.functions}
    for graph_path, node in _walk_nodes(model.graph, "graph"):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain == "" and (domain, node.op_type) not in local and not onnx.defs.has(node.op_type, opsets[""], "") \
                and node.op_type not in onnxruntime_default_domain_ops():
            hint = (f"it exists from opset {_first_version(node.op_type)}" if onnx.defs.has(node.op_type, "")
                    else "ONNX defines no such op")
            raise UnsupportedModel(f"{where}: node {_node_name(node)} in {graph_path} uses {node.op_type!r}, which "
                                   f"ONNX opset {opsets['']} does not define ({hint}): export the model with an "
                                   "opset that has it")
        if domain not in opsets and (domain, node.op_type) not in local:
            raise SerializationError(f"{where}: node {_node_name(node)} uses domain {node.domain!r}, which the "
                                     f"model does not import (opset_import lists {sorted(opsets)}): import it")


def onnxruntime_default_domain_ops() -> frozenset[str]:
    """Ops onnxruntime defines in the default domain beyond ONNX's own (``SimplifiedLayerNormalization``, which
    onnxruntime-genai's models use): valid models for onnxruntime, so not refused. Empty without onnxruntime."""
    global _ORT_DEFAULT_OPS
    if _ORT_DEFAULT_OPS is None:
        try:
            import onnx
            from onnxruntime.capi import _pybind_state

            _ORT_DEFAULT_OPS = frozenset(s.name for s in _pybind_state.get_all_operator_schema()
                                         if s.domain in ("", "ai.onnx") and not onnx.defs.has(s.name, ""))
        except (ImportError, AttributeError):
            _ORT_DEFAULT_OPS = frozenset()
    return _ORT_DEFAULT_OPS


_ORT_DEFAULT_OPS: frozenset[str] | None = None


def _first_version(op_type: str) -> int:
    import onnx

    return min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
               if s.name == op_type and s.domain == "")


def _node_name(node) -> str:
    return repr(node.name) if node.name else f"({node.op_type}, unnamed, output {list(node.output)[:1]})"


# ---- structure ----------------------------------------------------------------------------------------

def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.name, a.g
        for i, g in enumerate(a.graphs):
            yield f"{a.name}[{i}]", g


def _walk_nodes(graph, path: str):
    """``(graph path, node)`` for every node, subgraphs included."""
    for node in graph.node:
        yield path, node
        for name, sub in _subgraphs(node):
            yield from _walk_nodes(sub, f"{path} > node {node.name or node.op_type}.{name}")


def _all_nodes(graph):
    return [n for _, n in _walk_nodes(graph, "")]


def _check_graph(graph, where: str, outer: frozenset, path: str, function: bool = False) -> None:
    """Each node reads only values defined before it (in this graph or an enclosing one), each value is
    defined once, and the outputs exist. A node that reads what a later node makes is either a cycle (named)
    or out of topological order."""
    defined: dict[str, str] = {}

    def define(name: str, by: str) -> None:
        if not name:
            return
        if name in defined and not (by == "initializer" and defined[name] == "graph input"):
            raise SerializationError(f"{where}: value {name!r} in {path} is defined twice ({defined[name]} and "
                                     f"{by}); every ONNX value is defined once: rename one")
        defined[name] = by

    if function:
        for name in graph.input:
            define(name, "function input")
    else:
        for vi in graph.input:
            define(vi.name, "graph input")
        for t in graph.initializer:
            define(t.name, "initializer")
        for t in graph.sparse_initializer:
            define(t.values.name, "sparse initializer")
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if not name or name in defined or name in outer:
                continue
            if name in producers and producers[name] >= i:
                cycle = _cycle_through(graph, i, producers)
                if cycle:
                    names = " -> ".join(_node_name(graph.node[j]) for j in cycle)
                    raise SerializationError(f"{where}: the nodes {names} in {path} form a cycle (each reads "
                                             "the next one's output); an ONNX graph is acyclic: fix the exporter")
                raise SerializationError(f"{where}: node {_node_name(node)} in {path} reads {name!r} before node "
                                         f"{_node_name(graph.node[producers[name]])} makes it; ONNX needs the "
                                         "nodes in topological order: sort them")
            raise SerializationError(f"{where}: node {_node_name(node)} in {path} reads {name!r}, which no node, "
                                     "graph input or initializer defines: fix the reference")
        visible = outer | frozenset(defined)
        for name, sub in _subgraphs(node):
            _check_graph(sub, where, visible, f"{path} > node {node.name or node.op_type}.{name}")
        for name in node.output:
            define(name, f"node {_node_name(node)}")
    outputs = graph.output if function else [o.name for o in graph.output]
    for name in outputs:
        if name not in defined and name not in outer:
            raise SerializationError(f"{where}: output {name!r} of {path} is made by no node, input or "
                                     "initializer: fix the output list")


def _cycle_through(graph, start: int, producers: dict[str, int]) -> list[int] | None:
    """The nodes of a cycle through node ``start`` (following inputs to their producers), or None."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        i, trail = stack.pop()
        for name in graph.node[i].input:
            j = producers.get(name)
            if j is None:
                continue
            if j == start:
                return trail + [start]
            if j not in seen:
                seen.add(j)
                stack.append((j, trail + [j]))
    return None


# ---- declared shapes ----------------------------------------------------------------------------------

def _check_declared(graph, where: str, path: str = "graph") -> None:
    for kind, infos in (("graph input", graph.input), ("graph output", graph.output), ("value_info", graph.value_info)):
        for vi in infos:
            _check_type(vi.type, f"{kind} {vi.name!r} of {path}", where)
    for node in graph.node:
        for name, sub in _subgraphs(node):
            _check_declared(sub, where, f"{path} > node {node.name or node.op_type}.{name}")


def _check_type(tp, what: str, where: str) -> None:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, kind)
        if tt.HasField("shape"):
            _check_dims([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim], what, where)
    elif kind == "sequence_type":
        _check_type(tp.sequence_type.elem_type, what, where)
    elif kind == "optional_type":
        _check_type(tp.optional_type.elem_type, what, where)
    elif kind == "map_type":
        _check_type(tp.map_type.value_type, what, where)


def _check_dims(dims: list, what: str, where: str) -> None:
    """Refuse a negative or absurd dim (and an absurd element count) before anything is sized from it."""
    for axis, d in enumerate(dims):
        if d is not None and not 0 <= d <= MAX_DIM:
            raise SerializationError(f"{where}: {what} declares dim {axis} = {d}; a dim must be between 0 and "
                                     f"{MAX_DIM} (2^31 - 1): fix the declared shape (or make the dim symbolic)")
    fixed = [d for d in dims if d is not None]
    if fixed and math.prod(fixed) > MAX_ELEMENTS:
        raise SerializationError(f"{where}: {what} declares shape {dims}, {math.prod(fixed):.3g} elements; at most "
                                 f"2^40 are accepted: fix the declared shape")


# ---- tensors ------------------------------------------------------------------------------------------

@dataclass
class External:
    """A tensor's external data, checked: ``model_io`` reads it into ``tensor``."""

    tensor: object  # onnx.TensorProto, filled in place
    location: str
    real: str  # the resolved path, inside the model's folder
    offset: int
    length: int


def walk_tensors(model):
    """``(description, TensorProto)`` for every tensor of the model: initializers, sparse initializers,
    tensor attributes of nodes (Constant's value), in subgraphs and functions too."""
    def graph_tensors(graph, path):
        for t in graph.initializer:
            yield f"initializer {t.name!r} of {path}", t
        for s in graph.sparse_initializer:
            yield f"sparse initializer {s.values.name!r} (values) of {path}", s.values
            yield f"sparse initializer {s.values.name!r} (indices) of {path}", s.indices
        for node in graph.node:
            yield from node_tensors(node, path)
            for name, sub in _subgraphs(node):
                yield from graph_tensors(sub, f"{path} > node {node.name or node.op_type}.{name}")

    def node_tensors(node, path):
        for a in node.attribute:
            what = f"attribute {a.name!r} of node {_node_name(node)} in {path}"
            if a.HasField("t"):
                yield what, a.t
            for t in a.tensors:
                yield what, t
            for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                yield what + " (sparse values)", s.values
                yield what + " (sparse indices)", s.indices

    yield from graph_tensors(model.graph, "graph")
    for f in model.functions:
        for node in f.node:
            yield from node_tensors(node, f"function {f.name}")
            for name, sub in _subgraphs(node):
                yield from graph_tensors(sub, f"function {f.name} > node {node.name or node.op_type}.{name}")
    for i, ti in enumerate(model.training_info):
        yield from graph_tensors(ti.initialization, f"training_info[{i}].initialization")
        yield from graph_tensors(ti.algorithm, f"training_info[{i}].algorithm")


def tensor_nbytes(t, what: str = "tensor", where: str = "the model") -> int | None:
    """The bytes ``t``'s type and dims need as raw data (None for strings); refuses bad dims and types."""
    import onnx

    _check_dims(list(t.dims), what, where)
    name = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type in onnx.TensorProto.DataType.values() else None
    if name in (None, "UNDEFINED"):
        raise SerializationError(f"{where}: {what} has data type {t.data_type}, which ONNX does not define: fix it")
    if name == "STRING":
        return None
    n = math.prod(t.dims)
    if name in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[name] + 7) // 8
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _typed_count(t) -> tuple[str, int] | None:
    """The typed field holding ``t``'s data and its length, or None (raw or external data)."""
    for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        n = len(getattr(t, field))
        if n:
            return field, n
    return None


def check_tensors(model, where: str, base_dir: str | None) -> list[External]:
    import onnx

    refs: list[External] = []
    for what, t in walk_tensors(model):
        if t.HasField("segment"):
            raise UnsupportedModel(f"{where}: {what} is a segment of a larger tensor, which is not supported: "
                                   "store it whole")
        nbytes = tensor_nbytes(t, what, where)
        n = math.prod(t.dims)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            if t.HasField("raw_data") or _typed_count(t):
                raise SerializationError(f"{where}: {what} has external data and data inside the file; keep one")
            if nbytes is None:
                raise SerializationError(f"{where}: {what} is a string tensor with external data, which ONNX does "
                                         "not allow: store the strings inline")
            refs.append(_external_ref(t, what, where, base_dir, nbytes))
            continue
        typed = _typed_count(t)
        if t.HasField("raw_data"):
            if typed:
                raise SerializationError(f"{where}: {what} has both raw_data and {typed[0]}; keep one")
            if nbytes is None:
                raise SerializationError(f"{where}: {what} is a string tensor with raw_data; strings go in string_data")
            if len(t.raw_data) != nbytes:
                raise SerializationError(f"{where}: {what} has shape {list(t.dims)} of "
                                         f"{onnx.TensorProto.DataType.Name(t.data_type)}, which needs {nbytes} bytes, "
                                         f"but its raw_data holds {len(t.raw_data)}: the file is corrupt or was "
                                         "written wrongly; re-export it")
            continue
        count = typed[1] if typed else 0
        want = _typed_want(t, n)
        if count not in want:
            raise SerializationError(f"{where}: {what} has shape {list(t.dims)} ({n} elements), but "
                                     f"{typed[0] if typed else 'no data field'} holds {count} values (expected "
                                     f"{' or '.join(map(str, sorted(want)))}): the file is corrupt; re-export it")
    return refs


def _typed_want(t, n: int) -> set[int]:
    import onnx

    name = onnx.TensorProto.DataType.Name(t.data_type)
    if name in ("COMPLEX64", "COMPLEX128"):
        return {2 * n}
    if name in _SUB_BYTE_BITS:  # packed several to an int32 entry, as bytes: accept either count
        per = 8 // _SUB_BYTE_BITS[name]
        return {n, (n + per - 1) // per}
    return {n}


# ---- external references ------------------------------------------------------------------------------

def _external_ref(t, what: str, where: str, base_dir: str | None, nbytes: int) -> External:
    info: dict[str, str] = {}
    for entry in t.external_data:
        if entry.key not in _EXTERNAL_KEYS:
            raise SerializationError(f"{where}: {what} has external-data key {entry.key!r}; the keys are "
                                     f"{list(_EXTERNAL_KEYS)}: remove it")
        if entry.key in info:
            raise SerializationError(f"{where}: {what} gives external-data key {entry.key!r} twice; give it once")
        info[entry.key] = entry.value
    location = info.get("location", "")
    if base_dir is None:
        raise SerializationError(f"{where}: {what} keeps its data in an external file {location!r}, but the "
                                 "model was not given as a path, so there is no folder to read it from: pass "
                                 "the model's path")
    real = _resolve(location, base_dir, what, where)
    offset = _integer(info, "offset", 0, what, where)
    length = _integer(info, "length", None, what, where)
    st = os.stat(real)
    if length is None:
        length = st.st_size - offset
    if length != nbytes:
        raise SerializationError(f"{where}: {what} has shape {list(t.dims)}, which needs {nbytes} bytes, but its "
                                 f"external data in {location!r} is {length} bytes long: the file is corrupt or "
                                 "was written wrongly; re-export it")
    if offset + length > st.st_size:
        raise SerializationError(f"{where}: {what} reads bytes {offset}..{offset + length} of {location!r}, but "
                                 f"that file has {st.st_size} bytes: the data file is truncated or is not this "
                                 "model's; copy the model together with its data file")
    return External(t, location, real, offset, length)


def _resolve(location: str, base_dir: str, what: str, where: str) -> str:
    """The resolved path of an external-data location, which must name a regular file inside ``base_dir``."""
    def refuse(why: str, fix: str = "keep the data file beside the model and name it relative to the model's "
                                    "folder"):
        raise SerializationError(f"{where}: {what} keeps its data in {location!r}, which {why}; external data is "
                                 f"read only from the model's own folder {base_dir!r}: {fix}")

    if not location:
        refuse("is empty", "set the 'location' key to the data file's name")
    if "\x00" in location or "\\" in location or (len(location) > 1 and location[1] == ":"):
        refuse("contains a NUL, a backslash or a drive letter")
    if os.path.isabs(location):
        refuse("is an absolute path")
    if os.path.normpath(location).split(os.sep)[0] == "..":
        refuse("leads out of it with '..'")
    base_real = os.path.realpath(base_dir)
    real = os.path.realpath(os.path.join(base_real, location))
    if real == base_real:
        refuse("names the model's folder itself", "name the data file")
    if os.path.commonpath([real, base_real]) != base_real:
        refuse(f"resolves to {real!r} outside it (through a symbolic link)")
    try:
        st = os.stat(real)
    except OSError as e:
        refuse(f"cannot be read ({e.strerror or e})", "copy the data file beside the model")
    if not stat.S_ISREG(st.st_mode):
        refuse(f"is {file_kind(st.st_mode)}, not a regular file", "name the data file itself")
    return real


def _integer(info: dict, key: str, default, what: str, where: str):
    if key not in info:
        return default
    value = info[key]
    if not value.isdigit() or len(value) > 19:
        raise SerializationError(f"{where}: {what} has external-data {key} {value!r}; expected a non-negative "
                                 "integer: fix it")
    return int(value)


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words (for the messages)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


# ---- onnx's checker -----------------------------------------------------------------------------------

def check_with_onnx(model, where: str, refs: list[External]) -> None:
    """onnx's own checker (node schemas, attributes), behind the checks above. It runs before the external
    data is read, on a copy in which each external tensor is an empty inline one: onnx's in-memory checker
    would look for the data files relative to the working directory, and the checks above vetted them."""
    import onnx

    if refs:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        for (_, t), (_, orig) in zip(walk_tensors(skeleton), walk_tensors(model), strict=True):
            if orig.data_location == onnx.TensorProto.EXTERNAL:
                del t.external_data[:]
                del t.dims[:]
                t.dims.append(0)
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = b""
        model = skeleton
    if model.ByteSize() > PROTOBUF_LIMIT:
        return  # a >2 GiB ModelProto given in memory: the checks above are all there is
    try:
        onnx.checker.check_model(for_onnx_checker(model))
    except Exception as e:  # onnx raises ValidationError and others from pybind
        raise SerializationError(f"{where}: ONNX's checker refuses the model: {_first_line(e)}; fix what it "
                                 "names") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


ORT_DEFAULT_DOMAIN = "attngraph.onnxruntime-default-domain"  # where for_onnx_checker puts onnxruntime's own ops


def for_onnx_checker(model):
    """``model``, or a copy in which each default-domain node of an op that onnx does not define but onnxruntime
    does (``onnxruntime_default_domain_ops``) sits in a private domain: onnx's checker then checks everything
    else instead of refusing the whole model for an op it does not know."""
    import onnx

    ops = onnxruntime_default_domain_ops()
    if not any(n.domain in ("", "ai.onnx") and n.op_type in ops for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for n in copy.graph.node:
        if n.domain in ("", "ai.onnx") and n.op_type in ops:
            n.domain = ORT_DEFAULT_DOMAIN
    copy.opset_import.append(onnx.helper.make_opsetid(ORT_DEFAULT_DOMAIN, 1))
    return copy
