"""Models exported with ``torch.onnx.export`` for the discovery tests, each built and exported once per session.

Every case is a small module (``.eval()``, seeded): ``nn.MultiheadAttention``, two hand-written attention
modules (a causal SDPA one, and a GQA one with a KV cache), and tiny random Hugging Face models of one layer
(hidden 64, 4 heads, 2 kv heads where the family has GQA) called with their own 2-D padding mask, so the
exports hold the masks, positions and rotary embeddings the way each exporter writes them. ``export(name,
exporter)`` returns the path of the exported file (``exporter``: "ts" for ``dynamo=False``, "dynamo"), or
raises ``ExportFailed`` with the exporter's message; ``feeds(name)`` gives seeded random inputs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

D, H, KV, S = 64, 4, 2, 6


class ExportFailed(RuntimeError):
    """The exporter could not export the case (the message is the exporter's)."""


@dataclass(frozen=True)
class Case:
    """How to build one module and call it: ``build() -> (module, example args)``; ``inputs`` names the
    arguments (with their dynamic axes), ``opsets`` per exporter."""

    build: Callable
    inputs: dict[str, dict[int, str]]
    opsets: dict[str, int] = field(default_factory=lambda: {"ts": 17, "dynamo": 18})


def _tokens(batch: int = 2, seq: int = S):
    import torch

    ids = torch.randint(3, 100, (batch, seq), generator=torch.Generator().manual_seed(0))
    pad = torch.ones((batch, seq), dtype=torch.int64)
    pad[1, -2:] = 0  # row 1 is right-padded
    return ids, pad


class _Decoder:
    """``forward(input_ids, attention_mask)`` of a tiny one-layer Hugging Face model: its last hidden state."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

        return Wrapped(model).eval()


def _hf(model_cls: str, config: Callable, impl: str = "eager"):
    def build():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        model = getattr(tf, model_cls)._from_config(config(tf), attn_implementation=impl).eval()
        _sharpen(model)
        return _Decoder(model), _tokens()
    return build


def _sharpen(model) -> None:
    """Q/K weights scaled up so the softmax rows are far from uniform: a wrong scale or mask shows."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{k}." in f".{name}" for k in ("q_proj", "k_proj", "query", "key", "c_attn", "q", "k", "qkv_proj")) \
                    and name.endswith("weight"):
                p.mul_(4.0)


_LLAMA = {"vocab_size": 100, "hidden_size": D, "intermediate_size": 128, "num_hidden_layers": 1,
          "num_attention_heads": H, "num_key_value_heads": KV, "max_position_embeddings": 64}


def _mha():
    import torch

    class SelfMHA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(D, H, batch_first=True)

        def forward(self, x, key_padding_mask):
            return self.mha(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    torch.manual_seed(0)
    module = SelfMHA().eval()
    with torch.no_grad():  # torch starts the biases at 0: make them count
        module.mha.in_proj_bias.normal_(0.0, 0.5)
        module.mha.out_proj.bias.normal_(0.0, 0.5)
    x = torch.randn(2, S, D, generator=torch.Generator().manual_seed(0))
    pad = torch.zeros(2, S, dtype=torch.bool)
    pad[1, -2:] = True  # torch's convention: True = padding
    return module, (x, pad)


def _sdpa_causal():
    """Projections, head split, ``scaled_dot_product_attention(is_causal=True)``, merge, output projection."""
    import torch
    from torch.nn import functional as F

    class Causal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(D, D) for _ in range(4))

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = (p(x).view(b, s, H, D // H).transpose(1, 2) for p in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(y.transpose(1, 2).reshape(b, s, D))

    torch.manual_seed(0)
    return Causal().eval(), (torch.randn(2, S, D, generator=torch.Generator().manual_seed(0)),)


def _cached_gqa():
    """GQA with a KV cache: ``present = cat(past, new)``, kv heads repeated, no mask (a decode step)."""
    import torch

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            hd = D // H
            self.q, self.o = torch.nn.Linear(D, D, bias=False), torch.nn.Linear(D, D, bias=False)
            self.k, self.v = torch.nn.Linear(D, KV * hd, bias=False), torch.nn.Linear(D, KV * hd, bias=False)

        def forward(self, x, past_key, past_value):
            b, s, _ = x.shape
            hd = D // H
            q = self.q(x).view(b, s, H, hd).transpose(1, 2)
            k = torch.cat([past_key, self.k(x).view(b, s, KV, hd).transpose(1, 2)], dim=2)
            v = torch.cat([past_value, self.v(x).view(b, s, KV, hd).transpose(1, 2)], dim=2)
            kr = k[:, :, None].expand(b, KV, H // KV, k.shape[2], hd).reshape(b, H, k.shape[2], hd)
            vr = v[:, :, None].expand(b, KV, H // KV, v.shape[2], hd).reshape(b, H, v.shape[2], hd)
            p = torch.softmax(q @ kr.transpose(-1, -2) / hd ** 0.5, dim=-1)
            y = self.o((p @ vr).transpose(1, 2).reshape(b, s, D))
            return y, k, v

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    hd = D // H
    return Cached().eval(), (torch.randn(2, 3, D, generator=g), torch.randn(2, KV, 5, hd, generator=g),
                             torch.randn(2, KV, 5, hd, generator=g))


def _t5():
    import torch
    import transformers as tf

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    cfg = tf.T5Config(vocab_size=100, d_model=D, d_kv=16, d_ff=128, num_layers=1, num_heads=H)
    model = tf.T5EncoderModel._from_config(cfg, attn_implementation="eager").eval()
    _sharpen(model)
    return Encoder(model).eval(), _tokens()


def _whisper_cross():
    """Whisper's decoder cross attention (the module): queries from the decoder, keys/values from encoder states."""
    import torch
    import transformers as tf

    class Cross(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden_states, encoder_hidden_states):
            return self.inner(hidden_states, key_value_states=encoder_hidden_states)[0]

    torch.manual_seed(0)
    cfg = tf.WhisperConfig(vocab_size=100, d_model=D, encoder_layers=1, decoder_layers=1, encoder_attention_heads=H,
                           decoder_attention_heads=H, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=8,
                           max_source_positions=7, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    model = tf.WhisperForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    _sharpen(model)
    g = torch.Generator().manual_seed(1)
    return Cross(model.model.decoder.layers[0].encoder_attn).eval(), (torch.randn(2, S, D, generator=g),
                                                                       torch.randn(2, 7, D, generator=g))


TOKENS = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
CASES: dict[str, Case] = {
    "mha": Case(_mha, {"x": {0: "batch", 1: "seq"}, "key_padding_mask": {0: "batch", 1: "seq"}}),
    "sdpa_causal": Case(_sdpa_causal, {"x": {0: "batch", 1: "seq"}}, {"ts": 20, "dynamo": 24}),
    "cached_gqa": Case(_cached_gqa, {"x": {0: "batch", 1: "seq"}, "past_key": {0: "batch", 2: "past"},
                                     "past_value": {0: "batch", 2: "past"}}),
    "gpt2": Case(_hf("GPT2Model", lambda tf: tf.GPT2Config(vocab_size=100, n_embd=D, n_layer=1, n_head=H)), TOKENS),
    "bert": Case(_hf("BertModel", lambda tf: tf.BertConfig(vocab_size=100, hidden_size=D, num_hidden_layers=1,
                                                           num_attention_heads=H, intermediate_size=128)), TOKENS),
    "opt": Case(_hf("OPTModel", lambda tf: tf.OPTConfig(vocab_size=100, hidden_size=D, num_hidden_layers=1, ffn_dim=128,
                                                        num_attention_heads=H, word_embed_proj_dim=D)), TOKENS),
    "llama": Case(_hf("LlamaModel", lambda tf: tf.LlamaConfig(**_LLAMA)), TOKENS),
    "llama_sdpa": Case(_hf("LlamaModel", lambda tf: tf.LlamaConfig(**_LLAMA), "sdpa"), TOKENS,
                       {"ts": 17, "dynamo": 23}),
    "qwen2": Case(_hf("Qwen2Model", lambda tf: tf.Qwen2Config(**_LLAMA)), TOKENS),
    "qwen3": Case(_hf("Qwen3Model", lambda tf: tf.Qwen3Config(**_LLAMA, head_dim=16)), TOKENS),
    "gemma2": Case(_hf("Gemma2Model", lambda tf: tf.Gemma2Config(**_LLAMA, head_dim=16, query_pre_attn_scalar=32,
                                                                attn_logit_softcapping=3.0)), TOKENS),
    "phi3": Case(_hf("Phi3Model", lambda tf: tf.Phi3Config(**_LLAMA, partial_rotary_factor=0.5, pad_token_id=0)), TOKENS),
    "t5": Case(_t5, TOKENS),
    "whisper_cross": Case(_whisper_cross, {"hidden_states": {0: "batch", 1: "seq"},
                                           "encoder_hidden_states": {0: "batch", 1: "frames"}}),
}


@functools.cache
def _folder() -> str:
    return tempfile.mkdtemp(prefix="attngraph-onnx-exports-")


@functools.cache
def built(name: str):
    """The case's module and example arguments (built once)."""
    return CASES[name].build()


@functools.cache
def export(name: str, exporter: str = "ts") -> str:
    """The path of ``name`` exported by ``exporter`` ("ts": TorchScript, ``dynamo=False``; "dynamo")."""
    import torch

    case, (module, args) = CASES[name], built(name)
    opset = case.opsets[exporter]
    path = os.path.join(_folder(), f"{name}-{exporter}{opset}.onnx")
    names = list(case.inputs)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            if exporter == "ts":
                torch.onnx.export(module, args, path, input_names=names, dynamo=False, opset_version=opset,
                                  dynamic_axes=case.inputs)
            else:
                dims: dict = {}  # one torch Dim per name: inputs sharing a dim name share its size
                shapes = tuple({axis: dims.setdefault(sym, torch.export.Dim(sym, min=1 if sym == "batch" else 2,
                                                                            max=64))
                                for axis, sym in axes.items()} for axes in case.inputs.values())
                program = torch.onnx.export(module, args, input_names=names, dynamo=True, opset_version=opset,
                                            dynamic_shapes=shapes, optimize=True)
                program.save(path, external_data=False)
    except Exception as e:  # noqa: BLE001 - the exporters raise many types; the test reports the message
        raise ExportFailed(f"{name} with the {exporter} exporter: {type(e).__name__}: {str(e)[:300]}") from None
    return path


def feeds(name: str, batch: int | None = None) -> dict[str, np.ndarray]:
    """The case's example inputs as NumPy arrays, by input name (seeded); ``batch``: only the first rows."""
    _, args = built(name)
    return {n: a.numpy()[:batch] for n, a in zip(CASES[name].inputs, args)}


_ONNX_TYPES = {"float32": 1, "float16": 10, "float64": 11, "bool": 9, "int64": 7, "int32": 6}


def run_model(path, feeds: dict[str, np.ndarray], extra: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """onnxruntime running the model at ``path`` (or a ModelProto) on ``feeds``; ``extra`` (value name -> dtype
    name) adds intermediate values to its outputs, so a subgraph's inputs and outputs can be read."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    if isinstance(path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(path)
    else:
        model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for name, dtype in (extra or {}).items():
        if name not in have:
            model.graph.output.append(helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def subgraph_io(path: str, feeds: dict[str, np.ndarray], sub) -> tuple[dict, dict]:
    """``(graph inputs, expected outputs)`` of a discovered subgraph, read from onnxruntime running the
    original model: the lifted graph run on the first must give the second."""
    types = {v.name: v.type.dtype.value for v in sub.graph.inputs + sub.graph.outputs}
    extra = {model_name: types[ir] for ir, model_name in {**sub.inputs, **sub.outputs}.items()}
    values = run_model(path, feeds, extra)
    return ({ir: values[m] for ir, m in sub.inputs.items()}, {ir: values[m] for ir, m in sub.outputs.items()})
