"""torch's mask conventions, converted explicitly and by name.

In ``torch.nn.MultiheadAttention`` and ``F.scaled_dot_product_attention`` the two bool masks disagree:

* ``key_padding_mask`` (N, S) and MHA's bool ``attn_mask``: **True = ignore** this key;
* SDPA's bool ``attn_mask``: **True = attend**.

attngraph's bool masks always mean **True = attend** (as SDPA and ONNX ``Attention``). Float masks
are added to the scores everywhere, so they need no flip. These helpers take NumPy arrays or
tensors and return NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attngraph.errors import InputError


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def keep_from_ignore(mask: Any, name: str = "mask") -> np.ndarray:
    """A torch-style bool mask (True = ignore) as attngraph's keep mask (True = attend)."""
    a = _array(mask)
    if a.dtype != np.bool_:
        raise InputError(f"{name} must be a bool mask to flip, got {a.dtype}; float masks are additive and "
                         "are passed as they are")
    return ~a


def key_padding_to_keep(key_padding_mask: Any) -> np.ndarray:
    """torch ``key_padding_mask`` (N, S), True = padding, as a keep mask of shape (N, 1, 1, S)."""
    keep = keep_from_ignore(key_padding_mask, "key_padding_mask")
    if keep.ndim != 2:
        raise InputError(f"key_padding_mask must be (batch, kv_len), got shape {keep.shape}")
    return keep[:, None, None, :]


def key_padding_to_bias(key_padding_mask: Any, dtype=np.float32) -> np.ndarray:
    """torch ``key_padding_mask`` (N, S), bool (True = padding) or float (added), as a bias (N, 1, 1, S)."""
    a = _array(key_padding_mask)
    if a.ndim != 2:
        raise InputError(f"key_padding_mask must be (batch, kv_len), got shape {a.shape}")
    bias = np.where(a, -np.inf, 0.0) if a.dtype == np.bool_ else a
    return bias.astype(dtype)[:, None, None, :]


def attn_mask_to_rank4(attn_mask: Any, num_heads: int) -> np.ndarray:
    """MHA's ``attn_mask``, (L, S) or (N*num_heads, L, S), as (L, S) or (N, num_heads, L, S); no flip."""
    a = _array(attn_mask)
    if a.ndim == 2:
        return a
    if a.ndim != 3 or a.shape[0] % num_heads:
        raise InputError(f"attn_mask must be (L, S) or (N*num_heads, L, S) with num_heads={num_heads}, "
                         f"got shape {a.shape}")
    return a.reshape(a.shape[0] // num_heads, num_heads, a.shape[1], a.shape[2])


def attn_mask_to_keep(attn_mask: Any, num_heads: int) -> np.ndarray:
    """MHA's bool ``attn_mask`` (True = ignore) as a keep mask, (L, S) or (N, H, L, S)."""
    return keep_from_ignore(attn_mask_to_rank4(attn_mask, num_heads), "attn_mask")


def attn_mask_to_bias(attn_mask: Any, num_heads: int, dtype=np.float32) -> np.ndarray:
    """MHA's ``attn_mask``, bool (True = ignore) or float (added), as a bias, (L, S) or (N, H, L, S)."""
    a = attn_mask_to_rank4(attn_mask, num_heads)
    return (np.where(a, -np.inf, 0.0) if a.dtype == np.bool_ else a).astype(dtype)
