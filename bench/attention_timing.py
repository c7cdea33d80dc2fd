"""Time the attention function of any transformers attention implementation while a model runs: the share of
prefill and decode that attention is (``python -m bench.generate`` reports it).

``timed_attention(model, name)`` registers, for the duration of the ``with`` block, a copy of ``name``'s attention
and mask functions under ``"bench-timed-<name>"`` whose attention function adds its wall time to
``spent["prefill"]`` (calls with more than one query) or ``spent["decode"]``, and switches the model to it.
"""

from __future__ import annotations

import contextlib
import time


def _functions(model, name: str):
    """(attention function, mask function) that ``name`` runs for this model's layers."""
    import importlib

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if name == "eager":  # the model's own module-level eager_attention_forward
        attention = importlib.import_module(type(model).__module__).eager_attention_forward
    else:
        attention = AttentionInterface._global_mapping[name]
    return attention, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[name]


@contextlib.contextmanager
def timed_attention(model, name: str):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    attention, mask = _functions(model, name)
    spent = {"prefill": 0.0, "decode": 0.0}

    def timed(module, query, *args, **kwargs):
        t0 = time.perf_counter()
        out = attention(module, query, *args, **kwargs)
        spent["prefill" if query.shape[2] > 1 else "decode"] += time.perf_counter() - t0
        return out

    timed_name = f"bench-timed-{name}"
    AttentionInterface.register(timed_name, timed)
    AttentionMaskInterface.register(timed_name, mask)
    model.config._attn_implementation_internal = timed_name  # set_attn_implementation would re-check "sdpa" by name
    try:
        yield spent
    finally:
        model.config._attn_implementation_internal = name
