"""Checking a rewritten model: the original and the rewritten model run under onnxruntime on the same seeded
random inputs, every output within its dtype's budget.

``Checker`` runs the original once (``random_inputs``: symbolic dims at small sizes, token ids within the
embedding table, padding masks with real padding) and ``verify``s a rewritten model file against it: onnx's
checker first (``full_check`` where the original passes it), then ``compare_outputs`` (the budgets of
``attngraph.conformance.budgets``). ``checker_only``: onnx's checker alone, for when the comparison is off.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping

import numpy as np

from attngraph.errors import AttnGraphError, ConfigError, LoweringError
from attngraph.frontends.onnx_discovery.graph_edit import model_skeleton
from attngraph.frontends.onnx_discovery.model_io import PROTOBUF_LIMIT, model_nbytes, save_model
from attngraph.frontends.onnx_discovery.report import CheckFailed, one_line

DEFAULT_SIZES = {"batch": 2, "past": 3, "seq": 6}  # how symbolic dims are sized for the check (by name)
_MAX_CHECK_INPUT_BYTES = 1 << 30


def checker_only(path: str) -> dict:
    """Without the onnxruntime comparison: onnx's checker on the written file, no more."""
    try:
        onnx_check(path, full=True)
    except Exception as e:  # noqa: BLE001 - onnx raises its own and pybind's errors
        try:
            onnx_check(path, full=False)
        except Exception as e2:  # noqa: BLE001
            raise CheckFailed(f"ONNX's checker refuses the rewritten model: {one_line(e2)}") from None
        _ = e
    return {}


def onnx_check(source, full: bool) -> None:
    """onnx's checker on a model file or ModelProto; raises onnx's error. A model with onnxruntime's own
    default-domain ops (``model_checks.for_onnx_checker``) is checked with those nodes moved aside, on its
    skeleton (no data) when it came as a file."""
    import onnx

    from attngraph.frontends.onnx_discovery.model_checks import for_onnx_checker

    in_memory = isinstance(source, onnx.ModelProto)
    model = source if in_memory else onnx.load(source, load_external_data=False)
    checkable = for_onnx_checker(model)
    if checkable is model:
        onnx.checker.check_model(source, full_check=full)
    else:
        onnx.checker.check_model(checkable if in_memory else model_skeleton(checkable), full_check=full)


class Checker:
    """Runs the original model once under onnxruntime on seeded inputs; ``verify(path)`` checks a rewritten
    model file against those outputs (onnx's checker first)."""

    def __init__(self, model, src, seed: int, sizes, say, subgraphs=()):
        self.note = ""
        self.full = True
        try:
            onnx_check(_skeleton_for_check(model), full=True)
        except Exception as e:  # noqa: BLE001
            self.full = False
            self.note = f"the original model fails onnx's full check ({one_line(e)}); the result gets the basic check"
        try:
            self.feeds = random_inputs(model, seed=seed, sizes={**dims_from_subgraphs(model, subgraphs),
                                                                **(sizes or {})})
        except AttnGraphError as e:
            raise CheckFailed(f"no inputs could be drawn for the check: {e}; pass sizes (--size DIM=N) or skip the "
                              "check (--no-check)") from None
        say(f"running the original model under onnxruntime "
            f"({', '.join(f'{k}{list(v.shape)}' for k, v in self.feeds.items())}) ...")
        self.unspecified = unspecified_outputs(model, subgraphs)
        try:
            self.reference = _run(_model_source(model, src), self.feeds)
            self.counts = _counts(model, self.unspecified, self.feeds)
        except LoweringError as e:
            raise CheckFailed(f"onnxruntime cannot run the original model, so nothing can be checked against it: "
                              f"{e}; skip the check (--no-check) to write the result unchecked") from None

    def verify(self, path: str) -> dict[str, tuple[float, float]]:
        try:
            onnx_check(path, full=self.full)
        except Exception as e:  # noqa: BLE001 - onnx raises its own and pybind's errors
            raise CheckFailed(f"ONNX's checker refuses the rewritten model: {one_line(e)}") from None
        try:
            got = _run(path, self.feeds)
        except LoweringError as e:
            raise CheckFailed(f"onnxruntime cannot run the rewritten model: {e}") from None
        return compare_outputs(self.reference, got, {name: (self.counts[c], k)
                                                     for name, (c, k) in self.unspecified.items()})

    def verify_model(self, model) -> dict[str, tuple[float, float]]:
        with tempfile.TemporaryDirectory(prefix="attngraph-optimize-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            save_model(model, path)
            return self.verify(path)


def _skeleton_for_check(model):
    """What onnx's full check reads: the model itself when it fits one protobuf, else its skeleton."""
    return model if model.ByteSize() <= PROTOBUF_LIMIT else model_skeleton(model)


def _model_source(model, src):
    """What onnxruntime loads for the original: its bytes (just checked), or its path when it is too large for
    one protobuf (onnxruntime then reads the external data load_untrusted has vetted)."""
    if model_nbytes(model) + 64 * 1024 * 1024 < PROTOBUF_LIMIT and model.ByteSize() < PROTOBUF_LIMIT:
        return model.SerializeToString()
    if isinstance(src, str | os.PathLike):
        return os.fspath(src)
    raise LoweringError("the model is larger than 2 GiB and was not given as a path; pass its path")


def run_with_outputs(model, feeds: dict) -> dict:
    """onnxruntime (CPU) running an in-memory ``model`` on ``feeds``: every graph output by name; a model
    onnxruntime cannot run is a ``LoweringError`` with its message."""
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise LoweringError("the model is larger than protobuf's 2 GiB limit in memory; check it from a smaller "
                            "export")
    return _run(model.SerializeToString(), feeds)


def _run(source, feeds: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        given = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in given})))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise LoweringError(one_line(e)) from None


def unspecified_outputs(model, subgraphs) -> dict[str, tuple[str, int]]:
    """``{graph output: (model value of per-row counts, k)}``: model outputs a lifted operator leaves unspecified
    at positions ``j >= counts[b] + k`` of axis 2 (``Subgraph.unspecified``)."""
    outputs = {o.name for o in model.graph.output}
    found = {}
    for sub in subgraphs:
        for ir, (counts, k) in sub.unspecified.items():
            name = sub.outputs.get(ir)
            if name in outputs:
                found[name] = (sub.inputs[counts], k)
    return found


def _counts(model, unspecified: dict, feeds: dict) -> dict[str, np.ndarray]:
    """The count values ``unspecified`` names, from the model's inputs or onnxruntime running a copy of it."""
    import onnx
    from onnx import helper

    names = {c for c, _ in unspecified.values()}
    out = {n: feeds[n] for n in names if n in feeds}
    missing = sorted(names - set(out))
    if missing:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.INT32, None) for n in missing)
        got = run_with_outputs(copy, feeds)
        out.update({n: got[n] for n in missing})
    return out


def mask_tail(a: np.ndarray, counts, k: int) -> np.ndarray:
    """``a`` with positions ``j >= counts[b] + k`` of axis 2 set to 0 (what an operator leaves unspecified)."""
    limit = np.asarray(counts).astype(np.int64).reshape(-1) + k
    keep = np.arange(a.shape[2])[None, :] < limit[:, None]
    return np.where(keep.reshape(keep.shape[0], 1, keep.shape[1], *([1] * (a.ndim - 3))), a, 0).astype(a.dtype)


def compare_outputs(reference: dict, got: dict, unspecified: Mapping | None = None) -> dict[str, tuple[float, float]]:
    """``{output: (max |error|, error / budget)}``; raises ``CheckFailed`` naming the first output off its budget.
    ``unspecified``: ``{output: (counts, k)}``, positions not compared (``mask_tail``)."""
    from attngraph.conformance.budgets import BUDGETS, compare

    errors, bad = {}, []
    for name, ref in reference.items():
        if name not in got:
            raise CheckFailed(f"the rewritten model has no output {name!r}")
        have = np.asarray(got[name])
        ref = np.asarray(ref)
        if name in (unspecified or {}) and have.shape == ref.shape and ref.ndim >= 3:
            have, ref = (mask_tail(x, *unspecified[name]) for x in (have, ref))
        if ref.dtype.kind in "fc" and str(ref.dtype) in BUDGETS:
            verdict = compare(have, ref, BUDGETS[str(ref.dtype)], what=name)
            finite = np.isfinite(ref) & np.isfinite(have) if have.shape == ref.shape else None
            err = float(np.max(np.abs(have[finite].astype(np.float64) - ref[finite]), initial=0.0)) \
                if finite is not None else math.inf
            errors[name] = (err, float(verdict.ratio))
            if not verdict.ok:
                bad.append(verdict.detail or f"{name}: error {err:.2e} is {verdict.ratio:.1f}x the "
                                             f"{ref.dtype} budget")
        else:
            same = have.shape == ref.shape and np.array_equal(have, ref)
            errors[name] = (0.0 if same else math.inf, 0.0 if same else math.inf)
            if not same:
                bad.append(f"{name}: {ref.dtype} output differs")
    if bad:
        raise CheckFailed("; ".join(bad[:3]), {k: e for k, (e, _) in errors.items()})
    return errors


def random_inputs(model, *, seed: int = 0, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input that is not an initializer. Symbolic dims: ``sizes[name]``, else
    by name (``DEFAULT_SIZES``: batch 2, past 3, others 6; unnamed 6). Integer inputs: token ids within the
    table they index (a ``Gather`` of an initializer), padding masks (``*mask*``: 1, the last few positions of
    later rows 0, never a whole row), positions (``*position*``: 0, 1, ...), lengths (the full length),
    zeros otherwise. Bool masks hold both values in every row (whichever value means "attend"). A dim named
    ``*total*`` is past + seq; ``check_sizes`` adds the defaults a model needs."""
    import onnx

    rng = np.random.default_rng(seed)
    sizes = check_sizes(model, sizes)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    bounds = {n.input[1]: _gather_bound(n, inits) for n in g.node if n.op_type == "Gather" and len(n.input) > 1}
    feeds = {}
    for vi in g.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise ConfigError(f"graph input {vi.name!r} is not a tensor; the check makes tensors only")
        tt = vi.type.tensor_type
        shape = tuple(_size(d, sizes) for d in tt.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if math.prod(shape) * dtype.itemsize > _MAX_CHECK_INPUT_BYTES:
            gib = math.prod(shape) * dtype.itemsize / 2**30
            raise ConfigError(f"graph input {vi.name!r} would be {shape} ({gib:.1f}"
                              " GiB) for the check: give smaller sizes for its dims (sizes=) or skip the check")
        name = vi.name.lower()
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = _bool_mask(shape, rng) if "mask" in name else rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            feeds[vi.name] = _int_input(name, shape, bounds.get(vi.name), rng).astype(dtype)
        else:
            raise ConfigError(f"graph input {vi.name!r} has type {dtype}, which the check cannot draw")
    return feeds


def _size(d, sizes) -> int:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    sizes = dict(sizes or {})
    if d.dim_param in sizes:
        return int(sizes[d.dim_param])
    low = d.dim_param.lower()
    if "total" in low:  # a total sequence length (onnxruntime-genai's masks): the past and the new tokens
        return _named("past", sizes) + _named("seq", sizes)
    return _named(next((k for k in DEFAULT_SIZES if k in low), "seq"), sizes)


def _named(key: str, sizes: dict) -> int:
    return int(sizes.get(key, DEFAULT_SIZES[key]))


def dims_from_subgraphs(model, subgraphs) -> dict[str, int]:
    """Symbolic dims of the model's inputs that a lifted subgraph fixes (onnxruntime-genai declares a cache's
    head size as 'kv_cache_dim'; the lifted GroupQueryAttention reads it as 16): ``{dim name: size}``."""
    declared = {vi.name: vi.type.tensor_type.shape.dim for vi in model.graph.input if vi.type.HasField("tensor_type")}
    out: dict[str, int] = {}
    for sub in subgraphs:
        types = {v.name: v.type for v in sub.graph.inputs}
        for ir, name in sub.inputs.items():
            dims = declared.get(name)
            if dims is None or ir not in types or len(dims) != types[ir].rank:
                continue
            for d, want in zip(dims, types[ir].shape):
                if d.dim_param and isinstance(want, int):
                    out[d.dim_param] = want
    return out


def check_sizes(model, sizes: Mapping[str, int] | None) -> dict[str, int]:
    """``sizes`` with the defaults a model needs: a model with com.microsoft.GroupQueryAttention is checked on a
    prompt (past 0), since onnxruntime takes several new tokens with a past only at batch 1."""
    out = dict(sizes or {})
    if "past" not in out and any(n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"
                                 for n in model.graph.node):
        out["past"] = 0
    return out


def _gather_bound(node, inits) -> int | None:
    t = inits.get(node.input[0])
    if t is None or not t.dims:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return int(t.dims[axis]) if -len(t.dims) <= axis < len(t.dims) else None


def _int_input(name: str, shape: tuple, bound: int | None, rng) -> np.ndarray:
    if bound:
        return rng.integers(0, bound, size=shape)
    if "mask" in name:
        mask = np.ones(shape, np.int64)
        if len(shape) >= 2 and shape[-1] > 1:
            for b in range(1, shape[0]):
                mask[b, ..., shape[-1] - min(b, shape[-1] - 1):] = 0  # right padding, never a whole row
        return mask
    if "position" in name:
        return np.broadcast_to(np.arange(shape[-1]) if shape else np.int64(0), shape).copy()
    if "len" in name:
        return np.full(shape, max(DEFAULT_SIZES["seq"], 1))
    return np.zeros(shape, np.int64)


def _bool_mask(shape: tuple, rng) -> np.ndarray:
    """Every row holds True and False (a row of one value would be fully masked under one of the conventions)."""
    mask = np.ones(shape, bool)
    if shape and shape[-1] > 1:
        cut = rng.integers(1, shape[-1], size=shape[:-1])
        mask = np.arange(shape[-1]) < cut[..., None]
    return mask
