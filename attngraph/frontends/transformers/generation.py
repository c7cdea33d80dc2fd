"""Timed greedy generation with transformers' own ``generate()``, for ``attngraph generate`` and
``python -m bench.generate``: the same model switched between attention implementations, prefill and decode
timed apart, and the greedy tokens compared.

The split: a logits processor records the clock each time ``generate()`` asks for the next token, so the first
reading ends the prefill (the prompt's forward pass) and the others end one decode step each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attngraph.errors import UnsupportedConfig

CACHES = ("dynamic", "static")


@dataclass
class GenerationRun:
    """One greedy generation: its new tokens (batch, new) and the seconds spent in prefill and in decode."""

    implementation: str
    tokens: Any
    prefill_s: float
    decode_s: float
    prompt_tokens: int  # batch x prompt length

    @property
    def new_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s

    @property
    def decode_tok_s(self) -> float:
        """Decode steps per second (times the batch): the first new token comes from the prefill."""
        steps = (self.new_tokens - 1) * int(self.tokens.shape[0])
        return steps / self.decode_s if self.decode_s > 0 else float("nan")


def switch(model: Any, implementation: str) -> str:
    """Run ``model`` on ``implementation``: "attngraph" / "attngraph-<backend>" through ``use`` (every layer
    checked), anything else through ``set_attn_implementation``; returns the name transformers now runs."""
    from attngraph.frontends.transformers.integration import IMPLEMENTATIONS, use

    if implementation in IMPLEMENTATIONS:
        return use(model, IMPLEMENTATIONS[implementation]).implementation
    model.set_attn_implementation(implementation)
    if model.config._attn_implementation != implementation:
        raise UnsupportedConfig(f"{type(model).__name__} kept attn_implementation="
                                f"{model.config._attn_implementation!r} instead of {implementation!r}")
    return implementation


def greedy(model: Any, ids: Any, new_tokens: int, *, attention_mask: Any = None, cache: str = "dynamic",
           progress: Callable[[int, int], None] | None = None) -> GenerationRun:
    """Exactly ``new_tokens`` greedy tokens after ``ids`` with ``model.generate`` (its current implementation),
    timed; ``progress(step, new_tokens)`` after each token."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    if cache not in CACHES:
        raise UnsupportedConfig(f"cache {cache!r} is unknown; choose one of {CACHES}")
    stamps: list[float] = []

    class _Clock(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            if progress is not None:
                progress(len(stamps), new_tokens)
            return scores

    if attention_mask is None:  # explicit, so generate() never guesses padding from pad_token_id
        attention_mask = torch.ones_like(ids)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             logits_processor=LogitsProcessorList([_Clock()]),
                             cache_implementation="static" if cache == "static" else None)
    tokens = out[:, ids.shape[1]:]
    return GenerationRun(model.config._attn_implementation, tokens, stamps[0] - start, stamps[-1] - stamps[0],
                         int(ids.numel()))


def first_mismatch(tokens: Any, reference: Any) -> tuple[int, int] | None:
    """(row, position) of the first generated token that differs from ``reference``'s, or None."""
    differ = (tokens != reference).nonzero()
    if len(differ) == 0:
        return None
    position = int(differ[:, 1].min())
    row = int(differ[differ[:, 1] == position][0, 0])
    return row, position


def random_prompt(batch: int, length: int, vocab: int, seed: int) -> Any:
    """Seeded random token ids (batch, length) below ``vocab``, avoiding the first three ids (special tokens in
    most vocabularies)."""
    import torch

    low = 3 if vocab > 3 else 0
    return torch.randint(low, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
