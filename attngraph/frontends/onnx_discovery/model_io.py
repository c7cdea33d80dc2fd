"""Loading and saving whole ONNX models that nobody vouches for.

``load_untrusted`` is the one door through which ``optimize`` (and anything else that reads a user's model)
takes a model. It parses protobuf and reads bytes; it never executes code (no pickle, no custom-op library,
no Python in the file). Everything the file claims is checked before it is believed:

* the file is a regular file under protobuf's 2 GiB cap, and parses (a truncated file is refused);
* the IR version and opsets are ones this ``onnx`` defines, and every standard op exists at the model's opset;
* every node reads values defined before it (no cycle, no dangling name, each value defined once), in
  subgraphs and functions too;
* every declared dim is a sane number (a dim of 1e12 is refused before anything is allocated);
* every tensor stores exactly the bytes its type and shape need, inline or in an external file;
* external data is read only from the model's own folder: no absolute path, no ``..`` that leaves it, no
  symlink that points out of it (resolved with ``os.path.realpath``), only regular files (not a folder, a
  device or a FIFO), offsets and lengths within the file, and no more bytes than this machine's memory.

Models over 2 GiB keep their weights in external data: the proto is parsed with its data left outside, every
external reference is checked, and only then is the data read (each file opened once, by its resolved path,
without following links, and checked again on the open descriptor). ``save_model`` writes a model back
atomically, with external data when it is too large for one protobuf.

The checks themselves are in ``model_checks`` (``check_model_proto`` and ``tensor_nbytes`` are importable
from here too); this module reads and writes the files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from attngraph.errors import SerializationError
from attngraph.fileio import EXTERNAL_DATA_BYTES  # save_model puts weights in a side file above this
from attngraph.frontends.onnx_discovery.model_checks import (
    PROTOBUF_LIMIT,
    External,
    check_model_proto,
    check_tensors,
    check_with_onnx,
    file_kind,
    tensor_nbytes,
    walk_tensors,
)

__all__ = ["EXTERNAL_DATA_BYTES", "PROTOBUF_LIMIT", "check_model_proto", "load_untrusted", "model_nbytes",
           "physical_memory", "save_model", "tensor_nbytes"]



def load_untrusted(source, *, max_bytes: int | None = None):
    """``(model, base_dir)``: the checked ``onnx.ModelProto`` with every tensor's data inside it, and the folder
    its external data was read from (None when ``source`` was bytes or a ModelProto).

    ``source``: a path, bytes, or an ``onnx.ModelProto`` (copied, never changed). ``max_bytes``: the most
    external data to read (default: this machine's physical memory). Raises ``SerializationError`` for a
    broken or hostile file and ``UnsupportedModel`` (a subclass) for a valid one outside what is supported;
    each message names the file and the node or tensor, what was expected and what was found, and the fix.
    """
    model, where, base_dir = _parse(source)
    check_model_proto(model, where)
    refs = check_tensors(model, where, base_dir)
    check_with_onnx(model, where, refs)
    if refs:
        _read_external(refs, where, base_dir, max_bytes)
    return model, base_dir


# ---- the file -----------------------------------------------------------------------------------------

def _parse(source):
    import onnx

    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, "the given ModelProto", None
    if isinstance(source, bytes | bytearray | memoryview):
        data, where, base_dir = bytes(source), "the given bytes", None
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        data, where, base_dir = _read_model_file(path), repr(path), os.path.dirname(os.path.abspath(path))
    else:
        raise SerializationError(f"an ONNX model is a path, bytes or an onnx.ModelProto, got "
                                 f"{type(source).__name__}: pass one of those")
    if len(data) > PROTOBUF_LIMIT:
        raise SerializationError(f"{where} is {len(data) / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one "
                                 "message: save it with its weights as external data (onnx.save_model(..., "
                                 "save_as_external_data=True))")
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise SerializationError(f"{where} is not a valid ONNX file (truncated or corrupt: protobuf says {e}); "
                                 "re-export or re-download it") from None
    if not model.HasField("graph") or not model.graph.node:
        raise SerializationError(f"{where} holds no ONNX graph (empty, truncated, or not an ONNX model): expected "
                                 "a ModelProto with nodes")
    return model, where, base_dir


def _read_model_file(path: str) -> bytes:
    """The bytes of the file at ``path``, which must be a regular file (a FIFO or device is refused without
    blocking on it) no larger than protobuf parses."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise SerializationError(f"cannot read ONNX file {path!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SerializationError(f"ONNX file {path!r} is {file_kind(st.st_mode)}, not a regular file: pass the "
                                     "path of a .onnx file")
        if st.st_size > PROTOBUF_LIMIT:
            raise SerializationError(f"ONNX file {path!r} is {st.st_size / 2**30:.1f} GiB, over protobuf's 2 GiB "
                                     "limit for one message: save it with its weights as external data "
                                     "(onnx.save_model(..., save_as_external_data=True))")
        return _read_exactly(fd, 0, st.st_size, path)
    finally:
        os.close(fd)


def _read_exactly(fd: int, offset: int, length: int, what: str) -> bytes:
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
        if not chunk:
            raise SerializationError(f"{what} ended after {done} of {length} bytes (was it truncated while "
                                     "being read?)")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


# ---- external data ------------------------------------------------------------------------------------

def physical_memory() -> int:
    """Bytes of physical memory (a large number where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 45


def _read_external(refs: list[External], where: str, base_dir: str, max_bytes: int | None) -> None:
    """Read every external tensor into its ``raw_data``: each file opened once by its resolved path without
    following a link, checked again on the open descriptor (it may have changed since it was checked)."""
    import onnx

    total = sum(r.length for r in refs)
    limit = physical_memory() if max_bytes is None else max_bytes
    if total > limit:
        raise SerializationError(f"{where}: its external data holds {total / 2**30:.2f} GiB, more than the "
                                 f"{limit / 2**30:.2f} GiB this load may read (the machine's memory): run on a "
                                 "machine with more memory")
    by_file: dict[str, list[External]] = {}
    for r in refs:
        by_file.setdefault(r.real, []).append(r)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for real, group in by_file.items():
        try:
            fd = os.open(real, flags)
        except OSError as e:
            raise SerializationError(f"{where}: cannot open its external data file {group[0].location!r} in "
                                     f"{base_dir!r}: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SerializationError(f"{where}: external data file {group[0].location!r} became "
                                         f"{file_kind(st.st_mode)} while it was read: load the model again")
            for r in group:
                if r.offset + r.length > st.st_size:
                    raise SerializationError(f"{where}: external data file {r.location!r} shrank to {st.st_size} "
                                             f"bytes while it was read: load the model again")
                r.tensor.raw_data = _read_exactly(fd, r.offset, r.length, f"external data file {r.location!r}")
                del r.tensor.external_data[:]
                r.tensor.data_location = onnx.TensorProto.DEFAULT
        finally:
            os.close(fd)


# ---- saving -------------------------------------------------------------------------------------------

def model_nbytes(model) -> int:
    """The bytes of the model's tensors stored inline (raw or typed): what decides external data."""
    return sum(len(t.raw_data) + 8 * sum(len(getattr(t, f)) for f in ("float_data", "int32_data", "int64_data",
                                                                         "double_data", "uint64_data"))
               for _, t in walk_tensors(model))


def save_model(model, path: str | os.PathLike, *, external_data: bool | None = None, check=None) -> Path:
    """Write ``model`` to ``path`` atomically: into a temporary folder beside it, then ``check(tmp_path)``
    (if given: it may raise to abandon the save), then renamed over ``path`` (and ``<name>.data`` with
    external data: by default when the tensors pass 1 GiB, and always past protobuf's 2 GiB)."""
    from attngraph.fileio import atomic_save_onnx, atomic_write_bytes

    if external_data is None:
        external_data = model_nbytes(model) > EXTERNAL_DATA_BYTES
    if not external_data and model.ByteSize() > PROTOBUF_LIMIT:
        external_data = True
    if not external_data and check is None:
        return atomic_write_bytes(path, model.SerializeToString(deterministic=True))
    return atomic_save_onnx(model, path, external_data=external_data, check=check)
