"""Tiny whole models for the attngraph attention implementation's tests: for each family an eager model (the
oracle) and its twin with the same weights that runs on attngraph, built once per test session, and eager's
greedy ``generate`` (tokens and logits) for the shared prompt, once per cache kind.

The models are ``hf_cases``' (hidden 64, 2 layers, vocab 100, sliding window 3; the primary layer's Q/K weights
scaled up, its norms and sinks randomised), except BERT: ``BertLMHeadModel`` with ``is_decoder=True`` and no
cross attention, the BERT that ``generate()`` runs (causal self-attention with a cache).
"""

from __future__ import annotations

import copy
from typing import Any

import hf_cases as hc
import numpy as np
import torch
import transformers as tf

import attngraph.transformers as agt

NEW_TOKENS = 32
PROMPT = 7
GENERATE_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt_oss", "gpt2", "bert")
CACHES = ("dynamic", "static")
BERT_LM = hc.Family("bert_lm", "BertLMHeadModel",
                    lambda: tf.BertConfig(vocab_size=100, hidden_size=hc.D, num_hidden_layers=2,
                                          num_attention_heads=hc.H, intermediate_size=128, is_decoder=True),
                    ("bert.encoder.layer.0.attention.self",))
_PAIRS: dict[str, tuple[Any, Any]] = {}
_REFERENCE: dict[tuple[str, str], Any] = {}


def family(name: str) -> hc.Family:
    return BERT_LM if name == "bert" else hc.FAMILIES[name]


def pair(name: str) -> tuple[Any, Any]:
    """(eager model, attngraph twin) of a family, the same weights, built once."""
    if name not in _PAIRS:
        fam = family(name)
        eager = hc.build(fam)
        twin = hc.build(fam, base=eager)
        _PAIRS[name] = (eager, twin)
    return _PAIRS[name]


def prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of ``PROMPT`` token ids, the second left-padded by 3 (as generate() pads a batch)."""
    ids = torch.randint(3, 100, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    pad = torch.tensor([[1] * PROMPT, [0, 0, 0] + [1] * (PROMPT - 3)])
    return ids, pad


def generate(model: Any, cache: str) -> Any:
    """Greedy generation of exactly ``NEW_TOKENS`` tokens for ``prompt()``, with each step's raw logits."""
    ids, pad = prompt()
    with torch.inference_mode():
        return model.generate(ids, attention_mask=pad, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
                              cache_implementation="static" if cache == "static" else None)


def reference(name: str, cache: str) -> Any:
    """Eager's generation, once per family and cache kind."""
    if (name, cache) not in _REFERENCE:
        _REFERENCE[name, cache] = generate(pair(name)[0], cache)
    return _REFERENCE[name, cache]


def on_attngraph(name: str, backend: str) -> Any:
    """The family's twin switched to ``backend`` (compiled graphs are shared by the whole session)."""
    twin = pair(name)[1]
    agt.use(twin, backend)
    return twin


def logits(out: Any) -> np.ndarray:
    """(steps, batch, vocab) float64."""
    return np.stack([t.double().numpy() for t in out.logits])


def fresh(name: str) -> Any:
    """A new eager model of a family with the shared weights (for tests that change it)."""
    eager = pair(name)[0]
    model = getattr(tf, family(name).model)._from_config(copy.deepcopy(eager.config), attn_implementation="eager")
    model.load_state_dict(eager.state_dict())
    return model.eval()
