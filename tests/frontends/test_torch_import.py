"""``from_torch``: imported nn.MultiheadAttention modules match the module itself on every backend."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402

import attngraph as ag  # noqa: E402
from attngraph.errors import ConfigError  # noqa: E402


def _config(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    heads = int(rng.choice([1, 2, 4]))
    c = {"embed_dim": heads * int(rng.choice([2, 4, 8])), "num_heads": heads, "bias": bool(rng.random() < 0.7),
         "batch_first": bool(rng.random() < 0.5), "self_attention": bool(rng.random() < 0.4),
         "causal": bool(rng.random() < 0.3), "kpm": rng.choice([None, "bool", "float"]),
         "attn_mask": rng.choice([None, "bool", "float"]), "per_head": bool(rng.random() < 0.3),
         "need_weights": bool(rng.random() < 0.5), "average": bool(rng.random() < 0.5),
         "batch": int(rng.integers(1, 4)), "q_len": int(rng.integers(1, 7)), "kv_len": int(rng.integers(1, 7))}
    if not c["self_attention"] and rng.random() < 0.5:
        c["kdim"], c["vdim"] = int(rng.integers(3, 10)), int(rng.integers(3, 10))
    if c["self_attention"]:
        c["kv_len"] = c["q_len"]
    if c["causal"]:
        c["attn_mask"] = None  # the causal mask is torch's attn_mask here
    return c


def _torch_masks(c: dict, rng: np.random.Generator):
    """Random masks in torch's conventions (True = ignore), never masking key 0 so no row is fully masked."""
    b, lq, lk, h = c["batch"], c["q_len"], c["kv_len"], c["num_heads"]
    kpm = am = None
    if c["kpm"] == "bool":
        kpm = rng.random((b, lk)) < 0.3
        kpm[:, 0] = False
    elif c["kpm"] == "float":
        kpm = rng.standard_normal((b, lk)).astype(np.float32)
    shape = (b * h, lq, lk) if c["per_head"] else (lq, lk)
    if c["attn_mask"] == "bool":
        am = rng.random(shape) < 0.3
        am[..., 0] = False
    elif c["attn_mask"] == "float":
        am = rng.standard_normal(shape).astype(np.float32)
    return kpm, am


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("seed", range(24))
def test_imported_module_matches_torch_on_every_backend(seed, backend):
    c = _config(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 100)
    m = torch.nn.MultiheadAttention(c["embed_dim"], c["num_heads"], bias=c["bias"], batch_first=c["batch_first"],
                                    kdim=c.get("kdim"), vdim=c.get("vdim")).eval()
    b, lq, lk = c["batch"], c["q_len"], c["kv_len"]

    def seq(n, width):
        x = rng.standard_normal((b, n, width)).astype(np.float32)
        return x if c["batch_first"] else x.transpose(1, 0, 2).copy()

    query = seq(lq, c["embed_dim"])
    key = query if c["self_attention"] else seq(lk, c.get("kdim", c["embed_dim"]))
    value = query if c["self_attention"] else seq(lk, c.get("vdim", c["embed_dim"]))
    kpm, am = _torch_masks(c, rng)
    torch_am = torch.from_numpy(am) if am is not None else None
    if c["causal"]:
        torch_am = torch.triu(torch.ones(lq, lk, dtype=torch.bool), 1)
    with torch.inference_mode():
        want = m(torch.from_numpy(query), torch.from_numpy(key), torch.from_numpy(value),
                 key_padding_mask=None if kpm is None else torch.from_numpy(kpm), attn_mask=torch_am,
                 need_weights=c["need_weights"], average_attn_weights=c["average"], is_causal=c["causal"])

    imported = ag.from_torch(m, self_attention=c["self_attention"], causal=c["causal"], key_padding_mask=c["kpm"],
                             attn_mask=c["attn_mask"], attn_mask_per_head=c["per_head"],
                             need_weights=c["need_weights"], average_attn_weights=c["average"])
    graph, weights = imported
    args = (query,) if c["self_attention"] else (query, key, value)
    inputs = imported.inputs(*args, key_padding_mask=kpm, attn_mask=am)
    got = imported.outputs(ag.compile(graph, backend, weights=weights)(inputs))
    if c["need_weights"]:
        assert_close(got[0], want[0].double().numpy(), "float32", f"output {c}")
        assert_close(got[1], want[1].double().numpy(), "float32", f"weights {c}")
    else:
        assert_close(got, want[0].double().numpy(), "float32", f"output {c}")


def test_fully_masked_row_is_zero_where_torch_gives_nan():
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 8)).astype(np.float32)
    am = np.zeros((3, 3), bool)
    am[1] = True  # query 1 ignores every key
    with torch.inference_mode():
        theirs = m(*(torch.from_numpy(x),) * 3, attn_mask=torch.from_numpy(am), need_weights=False)[0].numpy()
    imported = ag.from_torch(m, self_attention=True, attn_mask="bool")
    ours = ag.compile(imported.graph, "numpy", weights=imported.weights)(imported.inputs(x, attn_mask=am))["y"]
    assert np.isnan(theirs[0, 1]).all()
    # row 1 of the attention output is 0, so y's row 1 is the output projection's bias alone
    np.testing.assert_allclose(ours[0, 1], m.out_proj.bias.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours[0, [0, 2]], theirs[0, [0, 2]], atol=1e-5)


def test_bfloat16_and_float64_modules_keep_their_dtype():
    for dtype, name in ((torch.float64, "float64"), (torch.bfloat16, "bfloat16")):
        m = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval().to(dtype)
        graph, weights = ag.from_torch(m, self_attention=True)
        assert graph.inputs[0].type.dtype.value == name
        assert weights["w_q"].dtype.name == name
        np.testing.assert_array_equal(weights["w_q"].astype(np.float64),
                                      m.in_proj_weight[:8].T.detach().float().double().numpy())


@pytest.mark.parametrize("make, words", [
    (lambda: torch.nn.Linear(4, 4), "Linear"),
    (lambda: torch.nn.MultiheadAttention(8, 2, add_bias_kv=True), "add_bias_kv"),
    (lambda: torch.nn.MultiheadAttention(8, 2, add_zero_attn=True), "add_zero_attn"),
    (lambda: torch.nn.MultiheadAttention(8, 2, dropout=0.1), "module.eval()"),
    (lambda: torch.nn.MultiheadAttention(8, 2, kdim=4, vdim=4).eval(), "self_attention=False"),
])
def test_unsupported_modules_are_refused_by_name(make, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ag.from_torch(make(), self_attention=True)


def test_masks_declared_at_import_must_be_given():
    m = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    imported = ag.from_torch(m, self_attention=True, key_padding_mask="bool")
    with pytest.raises(ConfigError, match="key_padding_mask"):
        imported.inputs(np.zeros((1, 2, 8), np.float32))


def test_mask_converters_flip_torch_bool_masks_by_name():
    from attngraph.frontends import torch_masks

    kpm = np.array([[False, True, False]])
    np.testing.assert_array_equal(torch_masks.key_padding_to_keep(kpm)[0, 0, 0], [True, False, True])
    np.testing.assert_array_equal(torch_masks.key_padding_to_bias(kpm)[0, 0, 0], [0, -np.inf, 0])
    am = np.zeros((4, 2, 3), bool)  # (N*H, L, S) with N=2, H=2
    am[3, 1, 2] = True
    keep = torch_masks.attn_mask_to_keep(am, num_heads=2)
    assert keep.shape == (2, 2, 2, 3) and not keep[1, 1, 1, 2] and keep.sum() == keep.size - 1
    with pytest.raises(ag.InputError, match="bool mask"):
        torch_masks.keep_from_ignore(np.zeros((2, 2), np.float32))


def test_sdpa_path_zeroes_fully_masked_rows_even_when_sdpa_gives_nan(monkeypatch):
    """torch 2.13 on the CPU already returns 0 there; some CUDA kernels and older versions give NaN."""
    from attngraph_backends.torch import kernels as torch_kernels

    real = torch_kernels.F.scaled_dot_product_attention

    def nan_on_dead_rows(q, k, v, attn_mask=None, **kw):
        out = real(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask is not None:
            dead = ~attn_mask.any(-1, keepdim=True) if attn_mask.dtype == torch.bool else \
                (attn_mask == -torch.inf).all(-1, keepdim=True)
            out = out.masked_fill(dead, torch.nan)
        return out

    monkeypatch.setattr(torch_kernels.F, "scaled_dot_product_attention", nan_on_dead_rows)
    for mask in ("bool", "additive"):
        g = ag.core_attention(2, 4, mask=mask)
        x = {n: np.random.default_rng(1).standard_normal((1, 2, 3, 4), dtype=np.float32) for n in "qkv"}
        x["attn_mask"] = np.ones((3, 3), bool) if mask == "bool" else np.zeros((3, 3), np.float32)
        x["attn_mask"][1] = False if mask == "bool" else -np.inf
        y = ag.compile(g, "torch")(x)["y"]
        assert np.all(y[:, :, 1] == 0) and np.isfinite(y).all()


def test_compile_takes_the_imported_object_itself():
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    imported = ag.from_torch(mha, self_attention=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 16), dtype=np.float32)
    y = ag.compile(imported, "numpy")(imported.inputs(x))["y"]   # the graph with its own weights
    graph, weights = imported
    np.testing.assert_array_equal(y, ag.compile(graph, "numpy", weights=weights)(x=x)["y"])
    with pytest.raises(ag.ConfigError, match="compile\\(\\) takes an attngraph Graph .* got method"):
        ag.compile(imported.inputs, "numpy")
