"""ONNX models with onnxruntime's ``com.microsoft`` attention operators, the way they are deployed, built once per
test session (random weights from configs; nothing is downloaded):

* ``genai(family, folder)``: onnxruntime-genai's model builder (its ``models.builder``, fp32, CPU) on a local
  ``save_pretrained`` folder of a tiny Hugging Face model (hidden 64, 2 layers, vocab 100, a word-level tokenizer
  written with ``tokenizers``): ``GroupQueryAttention`` with its KV cache, rotary embedding and the family's
  knobs. Mistral and Gemma 2 are built with the builder's ``windowed_kv_cache=false`` (a plain
  ``local_window_size`` layer); ``gemma2_windowed`` keeps its default window-sized cache.
* ``bert(folder)``: a tiny BERT exported by ``torch.onnx.export`` (TorchScript, opset 17) and rewritten by
  ``onnxruntime.transformers.optimizer`` (model_type bert): ``com.microsoft.Attention`` with ``mask_index``.
* ``gpt2(folder)``: a tiny GPT-2 assembled node by node around ``com.microsoft.Attention`` in the form
  onnxruntime's GPT-2 fusion writes (fused ``c_attn`` weights, ``unidirectional``, a (2, B, H, P, D) past, a
  (batch, total) mask), with the Hugging Face model's own weights: onnxruntime 1.32's GPT-2 fusion does not
  match transformers 5's exports, and its own GPT-2 exporter does not run with transformers 5's caches.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

LAYERS, HIDDEN, VOCAB = 2, 64, 100


def _config(family: str):
    import transformers as tf

    common = {"hidden_size": HIDDEN, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
              "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": 128, "pad_token_id": 0,
              "bos_token_id": 1, "eos_token_id": 2}
    sliding = {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}
    return {
        "llama": lambda: tf.LlamaConfig(**common),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=16),
        # onnxruntime's kernel rotates in blocks of 16 dims: a 32-dim head with half of it rotated
        "phi3": lambda: tf.Phi3Config(**{**common, "num_attention_heads": 2, "num_key_value_heads": 1},
                                      partial_rotary_factor=0.5, original_max_position_embeddings=128),
        "mistral": lambda: tf.MistralConfig(**common, **sliding),
        "gemma": lambda: tf.GemmaConfig(**common, head_dim=16),
        "gemma2": lambda: tf.Gemma2Config(**common, head_dim=16, sliding_window=4, attn_logit_softcapping=5.0),
        "gemma2_windowed": lambda: tf.Gemma2Config(**common, head_dim=16, sliding_window=4),
    }[family]()


GENAI_FAMILIES = ("llama", "qwen2", "qwen3", "phi3", "mistral", "gemma", "gemma2")
_PLAIN_WINDOW = {"mistral", "gemma2"}  # built with windowed_kv_cache=false


def _randomise(model, seed: int = 0) -> None:
    """Every weight drawn at random (seeded), Q/K larger: softmax rows far from uniform, nothing left at 0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.25 if any(k in name for k in ("q_proj", "k_proj", "c_attn", "query", "key")) else 0.08
            norm = p.ndim == 1 and ("norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")))
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if norm else 0.0))


def _tokenizer(folder: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t3", pad_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(folder)


class BuilderUnsupported(RuntimeError):
    """The model builder does not support the family (its own refusal, the message kept)."""


def genai(family: str, folder: str) -> str:
    """The path of ``family`` built by onnxruntime-genai's model builder into ``folder``."""
    import contextlib
    import io

    import torch
    from onnxruntime_genai.models.builder import create_model, parse_extra_options
    from transformers import AutoModelForCausalLM

    hf, out = os.path.join(folder, f"hf_{family}"), os.path.join(folder, f"onnx_{family}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family)).eval()
    _randomise(model)
    model.save_pretrained(hf)
    _tokenizer(hf)
    extra = ["windowed_kv_cache=false"] if family in _PLAIN_WINDOW else []
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            options = parse_extra_options("", hf, out, "fp32", "cpu", os.path.join(folder, "cache"), extra)
            create_model("", hf, out, "fp32", "cpu", os.path.join(folder, "cache"), **options)
    except NotImplementedError as e:
        raise BuilderUnsupported(f"onnxruntime-genai's builder does not support {family}: {e}") from None
    return os.path.join(out, "model.onnx")


def bert(folder: str) -> str:
    """A tiny BERT through torch.onnx.export and onnxruntime's transformer optimizer (model_type bert)."""
    import contextlib
    import io

    import torch
    import transformers as tf
    from onnxruntime.transformers.optimizer import optimize_model

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = tf.BertModel._from_config(cfg, attn_implementation="eager").eval()
    _randomise(model)

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, -2:] = 0
    raw, out = os.path.join(folder, "bert.onnx"), os.path.join(folder, "bert_optimized.onnx")
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
        torch.onnx.export(Encoder(model), (ids, mask), raw, input_names=list(axes), dynamic_axes=axes,
                          opset_version=17, dynamo=False)
        optimize_model(raw, model_type="bert", num_heads=4, hidden_size=HIDDEN, opt_level=0).save_model_to_file(out)
    return out


def gpt2_hf():
    """The tiny Hugging Face GPT-2 (random weights) whose weights ``gpt2`` uses."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64)
    model = tf.GPT2Model._from_config(cfg, attn_implementation="eager").eval()
    _randomise(model)
    return model


def gpt2(folder: str, model=None) -> str:
    """GPT-2 around ``com.microsoft.Attention`` (see the module docstring): inputs ``input_ids``, ``position_ids``
    (batch, seq), ``attention_mask`` int32 (batch, past + seq), ``past_<i>`` (2, batch, 4, past, 16); outputs
    ``last_hidden_state`` and ``present_<i>``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = model or gpt2_hf()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    heads, head = 4, HIDDEN // 4
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, ins, outs, domain="", **attrs):
        outs = [outs] if isinstance(outs, str) else outs
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outs[0]

    def layer_norm(x, prefix):
        return node("LayerNormalization", [x, init(f"{prefix}.weight", sd[f"{prefix}.weight"]),
                                           init(f"{prefix}.bias", sd[f"{prefix}.bias"])], f"{prefix}_out", epsilon=1e-5)

    def linear(x, prefix):
        y = node("MatMul", [x, init(f"{prefix}.weight", sd[f"{prefix}.weight"])], f"{prefix}_mm")
        return node("Add", [y, init(f"{prefix}.bias", sd[f"{prefix}.bias"])], f"{prefix}_out")

    h = node("Add", [node("Gather", [init("wte", sd["wte.weight"]), "input_ids"], "tok"),
                     node("Gather", [init("wpe", sd["wpe.weight"]), "position_ids"], "pos")], "h_0")
    for i in range(LAYERS):
        p = f"h.{i}"
        qkv = [init(f"{p}.attn.c_attn.{w}", sd[f"{p}.attn.c_attn.{w}"]) for w in ("weight", "bias")]
        a = node("Attention", [layer_norm(h, f"{p}.ln_1"), *qkv, "attention_mask", f"past_{i}"],
                 [f"attn_{i}", f"present_{i}"], domain="com.microsoft", num_heads=heads, unidirectional=1)
        h = node("Add", [h, linear(a, f"{p}.attn.c_proj")], f"{p}_res1")
        m = node("Gelu", [linear(layer_norm(h, f"{p}.ln_2"), f"{p}.mlp.c_fc")], f"{p}_gelu", approximate="tanh")
        h = node("Add", [h, linear(m, f"{p}.mlp.c_proj")], f"{p}_res2")
    node("Identity", [layer_norm(h, "ln_f")], "last_hidden_state")
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
            for n in ("input_ids", "position_ids")]
    ints.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "total"]))
    pasts = [helper.make_tensor_value_info(f"past_{i}", TensorProto.FLOAT, [2, "batch", heads, "past", head])
             for i in range(LAYERS)]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    outs += [helper.make_tensor_value_info(f"present_{i}", TensorProto.FLOAT, [2, "batch", heads, "total", head])
             for i in range(LAYERS)]
    graph = helper.make_graph(nodes, "gpt2_contrib", ints + pasts, outs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                         helper.make_opsetid("com.microsoft", 1)])
    onnx_model.ir_version = 10
    path = os.path.join(folder, "gpt2_contrib.onnx")
    onnx.save(onnx_model, path)
    return path
