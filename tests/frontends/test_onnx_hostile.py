"""``load_untrusted``: hostile and broken model files are refused with a named error, and nothing outside the
model's folder is ever opened (external data through ``..``, absolute paths, symlinks, folders, FIFOs and
devices included). Large models: protobuf's 2 GiB cap, external data at offsets past 2 GiB in a sparse file,
and a memory budget checked before a byte is read."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

from attngraph.errors import SerializationError, UnsupportedModel
from attngraph.frontends.onnx_discovery import model_io
from attngraph.frontends.onnx_discovery.model_io import load_untrusted, save_model

W = np.arange(16, dtype=np.float32).reshape(4, 4)


def small_model(opset: int = 17, weight: np.ndarray = W, nodes=None, inputs=None) -> onnx.ModelProto:
    """y = x @ w + 1: two nodes, one initializer."""
    nodes = nodes or [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
                      helper.make_node("Add", ["xw", "one"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "small", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.float32(1), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def external(model: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None, **extra) -> onnx.ModelProto:
    """``model`` with initializer ``w`` pointing at external data ``location`` (no data inline)."""
    t = next(t for t in model.graph.initializer if t.name == "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(W.nbytes if length is None else length),
               **extra}
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return model


@pytest.fixture
def opened(monkeypatch):
    """Every path opened (``open`` and ``os.open``) while the test runs, resolved."""
    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike):
            seen.append(os.path.realpath(os.fspath(file)))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        seen.append(os.path.realpath(os.fspath(path)))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return seen


@pytest.fixture
def layout(tmp_path):
    """``model/`` (the model's folder) beside ``outside/secret.bin`` (W's bytes: a valid payload, if read)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(W.tobytes())
    return tmp_path


def save(model: onnx.ModelProto, path) -> str:
    with builtins.open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


def assert_nothing_outside(opened: list[str], folder) -> None:
    root = os.path.realpath(folder)
    outside = [p for p in opened if not (p == root or p.startswith(root + os.sep))]
    assert not outside, f"opened outside the model's folder: {outside}"


# ---- the file itself ------------------------------------------------------------------------------

def test_valid_model_loads_with_its_external_data(layout, opened):
    folder = layout / "model"
    (folder / "w.bin").write_bytes(b"\0" * 8 + W.tobytes())
    path = save(external(small_model(), "w.bin", offset=8), folder / "m.onnx")
    model, base = load_untrusted(path)
    assert base == str(folder)
    w = next(t for t in model.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.DEFAULT and not w.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(w), W)
    assert_nothing_outside(opened, folder)


def test_truncated_file(tmp_path):
    data = small_model(weight=np.ones((64, 64), np.float32)).SerializeToString()
    cut = data.index(np.ones(4, np.float32).tobytes()) + 100  # inside the weight's bytes
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:cut])
    with pytest.raises(SerializationError, match=r"cut\.onnx' is not a valid ONNX file \(truncated or corrupt"):
        load_untrusted(path)
    path.write_bytes(b"")
    with pytest.raises(SerializationError, match=r"holds no ONNX graph"):
        load_untrusted(path)


def test_model_path_must_be_a_regular_file(tmp_path):
    with pytest.raises(SerializationError, match=r"is a directory, not a regular file"):
        load_untrusted(tmp_path)
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # opening it for reading would block forever without O_NONBLOCK
    with pytest.raises(SerializationError, match=r"pipe\.onnx' is a FIFO, not a regular file"):
        load_untrusted(fifo)
    with pytest.raises(SerializationError, match=r"cannot read ONNX file .*No such file"):
        load_untrusted(tmp_path / "missing.onnx")
    with pytest.raises(SerializationError, match=r"is a path, bytes or an onnx.ModelProto, got int"):
        load_untrusted(3)


def test_file_over_protobufs_limit_is_refused_without_reading(tmp_path, opened):
    path = tmp_path / "huge.onnx"
    with builtins.open(path, "wb") as f:
        f.truncate(model_io.PROTOBUF_LIMIT + 1)  # sparse: no disk, and never read
    with pytest.raises(SerializationError, match=r"2\.0 GiB, over protobuf's 2 GiB limit.*external data"):
        load_untrusted(path)


@pytest.mark.parametrize("opset, error, message", [
    (99, UnsupportedModel, r"imports ONNX opset 99; supported are opsets 7 to \d+"),
    (3, UnsupportedModel, r"imports ONNX opset 3; supported are opsets 7"),
])
def test_unsupported_opset(opset, error, message):
    with pytest.raises(error, match=message):
        load_untrusted(small_model(opset=opset).SerializeToString())


def test_missing_default_opset_and_ops_the_opset_lacks():
    model = small_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(SerializationError, match=r"imports no version of the default domain"):
        load_untrusted(model)
    node = helper.make_node("Attention", ["x", "x", "x"], ["y"], name="attn")
    model = small_model(nodes=[node])
    with pytest.raises(UnsupportedModel, match=r"node 'attn' .* uses 'Attention', which ONNX opset 17 does not "
                                                r"define \(it exists from opset 23\)"):
        load_untrusted(model)
    model.ir_version = 99
    with pytest.raises(UnsupportedModel, match=r"has IR version 99"):
        load_untrusted(model)


# ---- structure --------------------------------------------------------------------------------------

def test_cycle_is_named():
    nodes = [helper.make_node("Add", ["x", "loop_b"], ["loop_a"], name="first"),
             helper.make_node("Relu", ["loop_a"], ["loop_b"], name="second"),
             helper.make_node("Identity", ["loop_b"], ["y"], name="out")]
    with pytest.raises(SerializationError, match=r"the nodes 'first' -> 'second' -> 'first' in graph form a cycle"):
        load_untrusted(small_model(nodes=nodes))


def test_out_of_order_dangling_and_twice_defined():
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="late"), helper.make_node("Relu", ["x"], ["a"], name="early")]
    with pytest.raises(SerializationError, match=r"node 'late' in graph reads 'a' before node 'early' makes it.*"
                                                 r"topological order"):
        load_untrusted(small_model(nodes=nodes))
    nodes = [helper.make_node("Relu", ["ghost"], ["y"], name="n")]
    with pytest.raises(SerializationError, match=r"reads 'ghost', which no node, graph input or initializer defines"):
        load_untrusted(small_model(nodes=nodes))
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Relu", ["x"], ["y"], name="b")]
    with pytest.raises(SerializationError, match=r"value 'y' in graph is defined twice"):
        load_untrusted(small_model(nodes=nodes))


def test_cycle_inside_a_subgraph():
    body = helper.make_graph([helper.make_node("Add", ["x", "q"], ["p"], name="p_node"),
                              helper.make_node("Neg", ["p"], ["q"], name="q_node")], "body", [],
                             [helper.make_tensor_value_info("q", TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["c"], name="c", value=numpy_helper.from_array(np.array(True)))
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=body, else_branch=body)
    with pytest.raises(SerializationError, match=r"'p_node' -> 'q_node' -> 'p_node' in graph > node branch"):
        load_untrusted(small_model(nodes=[cond, node]))


# ---- declared shapes and stored sizes -------------------------------------------------------------------

def test_declared_dim_of_1e12_is_refused_before_allocating():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [10**12, 4])
    with pytest.raises(SerializationError, match=r"graph input 'x' of graph declares dim 0 = 1000000000000"):
        load_untrusted(small_model(inputs=[x]))
    model = small_model()
    w = model.graph.initializer[0]
    w.dims[:] = [10**12, 4]  # 16 floats stored, 4e12 claimed
    with pytest.raises(SerializationError, match=r"initializer 'w' of graph declares dim 0 = 1000000000000"):
        load_untrusted(model)


def test_raw_data_length_disagrees_with_shape():
    model = small_model()
    model.graph.initializer[0].raw_data = W.tobytes()[:60]
    with pytest.raises(SerializationError, match=r"initializer 'w' of graph has shape \[4, 4\] of FLOAT, which needs "
                                                 r"64 bytes, but its raw_data holds 60"):
        load_untrusted(model)
    model = small_model()
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    del value.float_data[-1]  # 3 elements declared, 2 stored
    const = helper.make_node("Constant", [], ["c"], name="const", value=value)
    model.graph.node.insert(0, const)
    with pytest.raises(SerializationError, match=r"attribute 'value' of node 'const' in graph has shape \[3\] "
                                                 r"\(3 elements\), but float_data holds 2"):
        load_untrusted(model)


# ---- external data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("location, message", [
    ("../outside/secret.bin", r"leads out of it with '\.\.'"),
    ("sub/../../outside/secret.bin", r"leads out of it with '\.\.'"),
    ("ABSOLUTE", r"is an absolute path"),
    ("", r"is empty"),
    ("C:\\secret.bin", r"contains a NUL, a backslash or a drive letter"),
    ("w.bin\x00.txt", r"contains a NUL"),
])
def test_external_data_outside_the_folder(layout, opened, location, message):
    folder = layout / "model"
    if location == "ABSOLUTE":
        location = str(layout / "outside" / "secret.bin")
    path = save(external(small_model(), location), folder / "m.onnx")
    with pytest.raises(SerializationError, match=message):
        load_untrusted(path)
    assert_nothing_outside(opened, folder)


def test_external_data_through_symlinks(layout, opened):
    folder = layout / "model"
    os.symlink(layout / "outside" / "secret.bin", folder / "w.bin")
    path = save(external(small_model(), "w.bin"), folder / "m.onnx")
    with pytest.raises(SerializationError, match=r"'w.bin', which resolves to .*secret\.bin' outside it"):
        load_untrusted(path)
    os.symlink(layout / "outside", folder / "sub")  # a folder link: the name looks inside
    path = save(external(small_model(), "sub/secret.bin"), folder / "m2.onnx")
    with pytest.raises(SerializationError, match=r"resolves to .* outside it \(through a symbolic link\)"):
        load_untrusted(path)
    os.symlink("/dev/zero", folder / "zero.bin")
    path = save(external(small_model(), "zero.bin"), folder / "m3.onnx")
    with pytest.raises(SerializationError, match=r"resolves to '/dev/zero' outside it"):
        load_untrusted(path)
    assert_nothing_outside(opened, folder)


def test_a_symlink_inside_the_folder_is_followed(layout, opened):
    folder = layout / "model"
    (folder / "real.bin").write_bytes(W.tobytes())
    os.symlink("real.bin", folder / "w.bin")
    model, _ = load_untrusted(save(external(small_model(), "w.bin"), folder / "m.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), W)
    assert_nothing_outside(opened, folder)


def test_external_data_that_is_not_a_regular_file(layout, opened):
    folder = layout / "model"
    (folder / "adir").mkdir()
    path = save(external(small_model(), "adir"), folder / "m.onnx")
    with pytest.raises(SerializationError, match=r"'adir', which is a directory, not a regular file"):
        load_untrusted(path)
    os.mkfifo(folder / "pipe.bin")
    path = save(external(small_model(), "pipe.bin"), folder / "m.onnx")
    with pytest.raises(SerializationError, match=r"'pipe.bin', which is a FIFO, not a regular file"):
        load_untrusted(path)
    path = save(external(small_model(), "."), folder / "m.onnx")
    with pytest.raises(SerializationError, match=r"'\.', which names the model's folder itself"):
        load_untrusted(path)
    path = save(external(small_model(), "missing.bin"), folder / "m.onnx")
    with pytest.raises(SerializationError, match=r"'missing.bin', which cannot be read \(No such file"):
        load_untrusted(path)
    assert_nothing_outside(opened, folder)


def test_offsets_and_lengths_must_lie_within_the_file(layout, opened):
    folder = layout / "model"
    (folder / "w.bin").write_bytes(W.tobytes())
    cases = [({"offset": 8}, r"reads bytes 8\.\.72 of 'w.bin', but that file has 64 bytes"),
             ({"length": 60}, r"needs 64 bytes, but its external data in 'w.bin' is 60 bytes long"),
             ({"offset": -5}, r"external-data offset '-5'; expected a non-negative integer"),
             ({"offset": "1e3"}, r"external-data offset '1e3'"),
             ({"basepath": "/"}, r"has external-data key 'basepath'; the keys are")]
    for kwargs, message in cases:
        path = save(external(small_model(), "w.bin", **kwargs), folder / "m.onnx")
        with pytest.raises(SerializationError, match=message):
            load_untrusted(path)
    assert_nothing_outside(opened, folder)


def test_external_data_needs_a_path():
    with pytest.raises(SerializationError, match=r"external file 'w.bin', but the model was not given as a path"):
        load_untrusted(external(small_model(), "w.bin"))


# ---- large models ---------------------------------------------------------------------------------------

BIG = 3 * 2**30  # a sparse 3 GiB data file: no disk space, and only the bytes asked for are read


def test_tensor_past_2_gib_of_a_sparse_file(layout, opened):
    folder = layout / "model"
    offset = BIG - 2**20
    with builtins.open(folder / "big.bin", "wb") as f:
        f.truncate(BIG)
        f.seek(offset)
        f.write(W.tobytes())
    model, _ = load_untrusted(save(external(small_model(), "big.bin", offset=offset), folder / "m.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), W)
    assert_nothing_outside(opened, folder)


def test_memory_budget_is_checked_before_reading(layout, monkeypatch):
    folder = layout / "model"
    with builtins.open(folder / "big.bin", "wb") as f:
        f.truncate(BIG)
    n = (BIG - 4096) // 4
    model = external(small_model(weight=np.zeros((n, 1), np.float32)[:4]), "big.bin", length=n * 4)
    model.graph.initializer[0].dims[:] = [n, 1]
    model.graph.node[0].input[1] = "w"
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = n
    path = save(model, folder / "m.onnx")
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, off: reads.append(size) or real_pread(fd, size, off))
    with pytest.raises(SerializationError, match=r"external data holds 3\.00 GiB, more than the 1\.00 GiB this load"):
        load_untrusted(path, max_bytes=2**30)
    assert max(reads) < 4096, "data was read before the memory budget was checked"  # only the model file was


def test_save_model_goes_external_past_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_BYTES", 32)  # stands in for 1 GiB: the same code path
    model = small_model(weight=np.ones((64, 64), np.float32))
    path = save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").stat().st_size >= 64 * 64 * 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    loaded, _ = load_untrusted(path)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), np.ones((64, 64), np.float32))
    assert model.graph.initializer[0].HasField("raw_data")  # the caller's model keeps its data
