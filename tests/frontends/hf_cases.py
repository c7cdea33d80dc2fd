"""Tiny Hugging Face models, one or more per family, and the calls of their attention layers, recorded while
the whole model runs (hooks), so each module is checked as its model calls it: the model's own masks,
positions, cache, ALiBi and position bias.

Every config is small (hidden 64, 4 heads, 2 kv heads where the family has GQA, eager attention) and the
tested layers' Q/K weights are scaled up so softmax rows are far from uniform (a wrong mask, scale or
position then shows as a large error). ``record`` runs a right-padded prefill and one decode step with the
model's cache (left padding where the family's ALiBi counts real tokens, see ``Family.left_pad``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers as tf

import attngraph as ag

D, H, KV, B, S, W, ENC = 64, 4, 2, 2, 6, 3, 7
QK_GAIN = 6.0
_QK = {"q_proj", "k_proj", "query", "key", "q", "k", "qkv_proj", "query_key_value", "Wqkv", "c_attn", "q_attn"}
LLAMA = {"vocab_size": 100, "hidden_size": D, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": H, "num_key_value_heads": KV, "max_position_embeddings": 64}


@dataclass(frozen=True)
class Family:
    """One tested configuration: how to build the model and which attention modules to check."""

    name: str
    model: str                       # the transformers class
    config: Any                      # a function: () -> config (eager)
    layers: tuple[str, ...]          # module paths, the first one is the family's primary layer
    kind: str = "causal"             # "causal", "encoder", "seq2seq", "whisper", "cross" (decoder reading states)
    sdpa: bool = True
    left_pad: bool = False           # ALiBi over real tokens: decode after left padding (see inputs.py)
    feature: str | None = None       # the knob of the negative control, on the primary layer
    options: dict = field(default_factory=dict)


def _gpt_oss():
    return tf.GptOssConfig(**{**LLAMA, "intermediate_size": 32}, head_dim=16, sliding_window=W, num_local_experts=2,
                           num_experts_per_tok=1)


FAMILIES = {f.name: f for f in [
    Family("llama", "LlamaForCausalLM", lambda: tf.LlamaConfig(**LLAMA), ("model.layers.1.self_attn",),
           feature="rotary"),
    Family("mistral", "MistralForCausalLM", lambda: tf.MistralConfig(**LLAMA, sliding_window=W),
           ("model.layers.0.self_attn",), feature="window"),
    Family("qwen2", "Qwen2ForCausalLM", lambda: tf.Qwen2Config(**LLAMA, use_sliding_window=True, sliding_window=W,
                                                               max_window_layers=1),
           ("model.layers.1.self_attn", "model.layers.0.self_attn")),
    Family("qwen3", "Qwen3ForCausalLM", lambda: tf.Qwen3Config(**LLAMA, head_dim=16), ("model.layers.0.self_attn",),
           feature="qk_norm"),
    Family("gemma2", "Gemma2ForCausalLM", lambda: tf.Gemma2Config(**LLAMA, head_dim=16, sliding_window=W,
                                                                  query_pre_attn_scalar=32, attn_logit_softcapping=3.0),
           ("model.layers.0.self_attn", "model.layers.1.self_attn"), sdpa=False, feature="softcap"),
    Family("gemma3", "Gemma3ForCausalLM", lambda: tf.Gemma3TextConfig(**LLAMA, head_dim=16, sliding_window=W,
                                                                      query_pre_attn_scalar=32,
                                                                      sliding_window_pattern=2, rope_theta=20000.0,
                                                                      rope_local_base_freq=500.0),
           ("model.layers.0.self_attn", "model.layers.1.self_attn"), feature="qk_norm"),
    Family("phi3", "Phi3ForCausalLM", lambda: tf.Phi3Config(**LLAMA, partial_rotary_factor=0.5, pad_token_id=0),
           ("model.layers.0.self_attn",)),
    Family("gpt_neox", "GPTNeoXForCausalLM", lambda: tf.GPTNeoXConfig(**{**LLAMA, "num_key_value_heads": None}),
           ("gpt_neox.layers.0.attention",)),
    Family("falcon", "FalconForCausalLM", lambda: tf.FalconConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2,
                                                                  num_attention_heads=H),
           ("transformer.h.0.self_attention",)),
    Family("falcon_new_arch", "FalconForCausalLM",
           lambda: tf.FalconConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                   new_decoder_architecture=True, num_kv_heads=KV, bias=True),
           ("transformer.h.1.self_attention",)),
    Family("falcon_alibi", "FalconForCausalLM",
           lambda: tf.FalconConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                   alibi=True, multi_query=False, bias=True),
           ("transformer.h.0.self_attention",), left_pad=True),
    Family("gpt2", "GPT2LMHeadModel", lambda: tf.GPT2Config(vocab_size=100, n_embd=D, n_layer=2, n_head=H,
                                                            scale_attn_by_inverse_layer_idx=True),
           ("transformer.h.1.attn",)),
    Family("gpt2_cross", "GPT2LMHeadModel", lambda: tf.GPT2Config(vocab_size=100, n_embd=D, n_layer=1, n_head=H,
                                                                  add_cross_attention=True),
           ("transformer.h.0.crossattention", "transformer.h.0.attn"), kind="cross"),
    Family("bert_decoder", "BertLMHeadModel", lambda: tf.BertConfig(vocab_size=100, hidden_size=D, num_hidden_layers=1,
                                                                    num_attention_heads=H, intermediate_size=128,
                                                                    is_decoder=True, add_cross_attention=True),
           ("bert.encoder.layer.0.crossattention.self", "bert.encoder.layer.0.attention.self"), kind="cross"),
    Family("bert", "BertModel", lambda: tf.BertConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2,
                                                      num_attention_heads=H, intermediate_size=128),
           ("encoder.layer.1.attention.self",), kind="encoder"),
    Family("roberta", "RobertaModel", lambda: tf.RobertaConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2,
                                                               num_attention_heads=H, intermediate_size=128),
           ("encoder.layer.0.attention.self",), kind="encoder"),
    Family("opt", "OPTForCausalLM", lambda: tf.OPTConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2,
                                                         ffn_dim=128, num_attention_heads=H, word_embed_proj_dim=D),
           ("model.decoder.layers.1.self_attn",)),
    Family("bloom", "BloomForCausalLM", lambda: tf.BloomConfig(vocab_size=100, hidden_size=D, n_layer=2, n_head=H),
           ("transformer.h.0.self_attention",), sdpa=False, left_pad=True),
    Family("mpt", "MptForCausalLM", lambda: tf.MptConfig(vocab_size=100, d_model=D, n_layers=2, n_heads=H,
                                                         max_seq_len=16, expansion_ratio=2,
                                                         attn_config={"clip_qkv": 0.6}),
           ("transformer.blocks.0.attn",), sdpa=False),
    Family("t5", "T5ForConditionalGeneration", lambda: tf.T5Config(vocab_size=100, d_model=D, d_kv=16, d_ff=128,
                                                                   num_layers=2, num_heads=H),
           ("encoder.block.1.layer.0.SelfAttention", "decoder.block.1.layer.0.SelfAttention",
            "decoder.block.0.layer.1.EncDecAttention"), kind="seq2seq"),
    Family("bart", "BartForConditionalGeneration",
           lambda: tf.BartConfig(vocab_size=100, d_model=D, encoder_layers=1, decoder_layers=1,
                                 encoder_attention_heads=H, decoder_attention_heads=H, encoder_ffn_dim=128,
                                 decoder_ffn_dim=128, max_position_embeddings=64),
           ("model.decoder.layers.0.self_attn", "model.encoder.layers.0.self_attn",
            "model.decoder.layers.0.encoder_attn"), kind="seq2seq"),
    Family("whisper", "WhisperForConditionalGeneration",
           lambda: tf.WhisperConfig(vocab_size=100, d_model=D, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=H, decoder_attention_heads=H, encoder_ffn_dim=128,
                                    decoder_ffn_dim=128, num_mel_bins=8, max_source_positions=ENC,
                                    max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                    decoder_start_token_id=1),
           ("model.decoder.layers.0.encoder_attn", "model.encoder.layers.0.self_attn",
            "model.decoder.layers.0.self_attn"), kind="whisper"),
    Family("gpt_oss", "GptOssForCausalLM", _gpt_oss, ("model.layers.0.self_attn", "model.layers.1.self_attn"),
           sdpa=False, feature="sinks"),
]}


def build(family: Family, impl: str = "eager", base: Any = None) -> Any:
    """The family's model (seeded), its tested layers' Q/K weights scaled up and their norms, sinks and T5
    tables randomised; ``base``: a model whose weights to load (the eager twin of an sdpa model)."""
    cfg = family.config()
    torch.manual_seed(0)
    model = getattr(tf, family.model)._from_config(copy.deepcopy(cfg), attn_implementation=impl).eval()
    if base is not None:
        model.load_state_dict(base.state_dict())
        return model
    with torch.no_grad():
        for path in family.layers:
            module = model.get_submodule(path)
            for name, p in module.named_parameters():
                leaf = name.split(".")[0]
                if leaf in _QK and name.endswith("weight"):
                    p.mul_(QK_GAIN)
                elif leaf in ("q_norm", "k_norm", "sinks"):
                    p.normal_(0.0, 1.0)
                elif leaf == "relative_attention_bias":
                    p.normal_(0.0, 2.0)
    return model


def import_layers(model: Any, family: Family, **options: Any) -> dict[str, Any]:
    """Each tested layer's import (T5's later layers through the model listing, which shares the table)."""
    listing = ag.from_transformers(model, **options) if family.kind == "seq2seq" else None
    return {p: (listing[p] if listing is not None else ag.from_transformers(model.get_submodule(p), **options))
            for p in family.layers}


@dataclass
class Step:
    """One call of one module: the graph's inputs made by ``ImportedLayer.inputs`` from the module's arguments,
    and what the module returned (and what its cache holds afterwards)."""

    feed: dict[str, np.ndarray]
    output: np.ndarray
    residual: np.ndarray | None = None
    present: tuple[np.ndarray, np.ndarray] | None = None
    rows: np.ndarray | None = None   # (batch, q_len) True where the query is a real token
    weights: np.ndarray | None = None  # the attention weights the module returned (eager)


def record(model: Any, family: Family, imports: dict[str, Any]) -> dict[str, list[Step]]:
    """Run prefill and one decode step of the whole model, recording every tested layer's call."""
    rng = torch.Generator().manual_seed(1)
    pad = torch.tensor([[1] * S, [0, 0] + [1] * (S - 2)] if family.left_pad else [[1] * S, [1] * (S - 2) + [0, 0]])
    steps: dict[str, list[Step]] = {p: [] for p in family.layers}
    state: dict[str, Any] = {}
    handles = []
    for path, imported in imports.items():
        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(_pre(path, family, imported, state, steps), with_kwargs=True))
        handles.append(module.register_forward_hook(_post(path, steps), with_kwargs=True))
    try:
        with torch.no_grad():
            _run(model, family, pad, rng, state, imports, steps)
    finally:
        for h in handles:
            h.remove()
    return steps


def _pre(path, family, imported, state, steps):
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states = kwargs.get("key_value_states", kwargs.get("encoder_hidden_states"))
        in_encoder = family.kind in ("seq2seq", "whisper") and (path.startswith("encoder.") or ".encoder." in path)
        role = "enc" if in_encoder or imported.spec.kind == "cross" else "dec"  # which 2-D mask the layer reads
        mask = state[f"{role}_mask"]
        cache = state.get("cache") if imported.config.kv_cache else None
        feed = imported.inputs(hidden, attention_mask=mask, past_key_values=cache, key_value_states=states)
        residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
        residual = residual if imported.spec.returns_residual else None
        rows = (mask[:, -hidden.shape[1]:] != 0).numpy() if mask is not None and role == "dec" else None
        steps[path].append(Step(feed, None, None if residual is None else residual.numpy().copy(), rows=rows))
    return hook


def _post(path, steps):
    def hook(module, args, kwargs, out):
        steps[path][-1].output = out[0].detach().numpy().copy()
        weights = out[-1] if isinstance(out, tuple) else None  # eager returns them; sdpa gives None
        steps[path][-1].weights = weights.detach().numpy().copy() if isinstance(weights, torch.Tensor) else None
    return hook


def _present(cache: Any, imported: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if cache is None or not imported.config.kv_cache:
        return None
    sub = cache
    if hasattr(cache, "self_attention_cache"):
        sub = cache.cross_attention_cache if imported.spec.kind == "cross" else cache.self_attention_cache
    layer = sub.layers[imported.spec.layer_idx]
    return layer.keys.numpy().copy(), layer.values.numpy().copy()


def _run(model, family, pad, rng, state, imports, steps) -> None:
    """Prefill then one decode step; the encoder of a seq2seq model runs at the prefill only."""
    ids = torch.randint(3, 100, (B, S), generator=rng)
    nxt = torch.randint(3, 100, (B, 1), generator=rng)
    pad1 = torch.cat([pad, torch.ones((B, 1), dtype=pad.dtype)], 1)
    if family.kind == "encoder":
        state.update(enc_mask=pad, dec_mask=pad)
        model(input_ids=ids, attention_mask=pad)
        return
    if family.kind == "causal":
        cache = state["cache"] = tf.DynamicCache(config=model.config)
        state.update(dec_mask=pad)
        model(input_ids=ids, attention_mask=pad, past_key_values=cache, use_cache=True)
        _snapshot(cache, imports, steps)
        state.update(dec_mask=pad1)
        model(input_ids=nxt, attention_mask=pad1, past_key_values=cache, use_cache=True)
        _snapshot(cache, imports, steps)
        return
    cache = state["cache"] = tf.EncoderDecoderCache(tf.DynamicCache(), tf.DynamicCache())
    if family.kind == "cross":
        _run_cross(model, pad, ids, nxt, rng, state, imports, steps)
        return
    if family.kind == "whisper":  # no encoder padding: Whisper's encoder reads fixed-length features
        enc = {"input_features": torch.randn((B, 8, 2 * ENC), generator=rng)}
        state.update(enc_mask=None)
    else:
        encpad = torch.tensor([[1] * ENC, [1] * (ENC - 3) + [0] * 3])
        enc = {"input_ids": torch.randint(3, 100, (B, ENC), generator=rng), "attention_mask": encpad}
        state.update(enc_mask=encpad)
    state.update(dec_mask=None)
    out = model(**enc, decoder_input_ids=ids[:, :4], past_key_values=cache, use_cache=True)
    _snapshot(cache, imports, steps)
    enc_out = {k: v for k, v in enc.items() if k == "attention_mask"}
    model(**enc_out, encoder_outputs=(out.encoder_last_hidden_state,), decoder_input_ids=nxt, past_key_values=cache,
          use_cache=True)
    _snapshot(cache, imports, steps)


def _run_cross(model, pad, ids, nxt, rng, state, imports, steps) -> None:
    """A decoder that reads given encoder states (GPT-2 or BERT with add_cross_attention)."""
    cache = state["cache"]
    encpad = torch.tensor([[1] * ENC, [1] * (ENC - 3) + [0] * 3])
    enc = {"encoder_hidden_states": torch.randn((B, ENC, D), generator=rng), "encoder_attention_mask": encpad}
    state.update(enc_mask=encpad, dec_mask=pad)
    model(input_ids=ids, attention_mask=pad, past_key_values=cache, use_cache=True, **enc)
    _snapshot(cache, imports, steps)
    pad1 = torch.cat([pad, torch.ones((B, 1), dtype=pad.dtype)], 1)
    state.update(dec_mask=pad1)
    model(input_ids=nxt, attention_mask=pad1, past_key_values=cache, use_cache=True, **enc)
    _snapshot(cache, imports, steps)


def _snapshot(cache, imports, steps) -> None:
    for path, imported in imports.items():
        if steps[path] and steps[path][-1].present is None:
            steps[path][-1].present = _present(cache, imported)
