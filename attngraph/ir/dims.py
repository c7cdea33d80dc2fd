"""Symbolic dimensions: an ``int``, a symbol name (``"batch"``), or a sum (``"past_len+q_len"``).

Graphs are built once and run at many sequence lengths, so axes such as the batch size and the
query/key lengths are named instead of fixed. Only sums are needed: a KV cache concatenates
``past_len`` and ``q_len`` keys; head counts and head sizes are always concrete integers.
A sum is kept in one canonical spelling (symbols sorted, constant last) so two equal dims
compare equal as strings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Union

Dim = Union[int, str]

_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _terms(dim: Dim) -> tuple[list[str], int]:
    if isinstance(dim, bool):
        raise TypeError(f"a dimension must be an int or a symbol name, got {dim!r}")
    if isinstance(dim, int):
        return [], dim
    symbols, constant = _parsed(dim)
    return list(symbols), constant


@functools.lru_cache(maxsize=4096)
def _parsed(dim: str) -> tuple[tuple[str, ...], int]:
    """The symbols and constant of a string dim. Cached: every call of a compiled graph checks its inputs'
    dims, and a graph spells only a handful of them."""
    symbols, constant = [], 0
    for part in str(dim).split("+"):
        part = part.strip()
        if part.isdigit():
            constant += int(part)
        elif _SYMBOL.match(part):
            symbols.append(part)
        else:
            raise ValueError(f"bad dimension {dim!r}: use an int, a name like 'q_len', or a sum 'a+b'")
    return tuple(symbols), constant


def canonical(dim: Dim) -> Dim:
    """The canonical spelling of ``dim`` (an ``int`` when it has no symbols)."""
    symbols, constant = _terms(dim)
    if not symbols:
        return constant
    parts = sorted(symbols) + ([str(constant)] if constant else [])
    return "+".join(parts)


def add(a: Dim, b: Dim) -> Dim:
    """``a + b`` as a canonical dim."""
    sa, ca = _terms(a)
    sb, cb = _terms(b)
    if not sa and not sb:
        return ca + cb
    return canonical("+".join(sa + sb + [str(ca + cb)]))


def sub(a: Dim, b: Dim) -> Dim:
    """``a - b`` as a canonical dim; ``b``'s symbols must all appear in ``a`` (dims never go negative)."""
    sa, ca = _terms(a)
    sb, cb = _terms(b)
    left = list(sa)
    for s in sb:
        if s not in left:
            raise ValueError(f"cannot subtract dim {b!r} from {a!r}: {s!r} does not appear in {a!r}")
        left.remove(s)
    if ca - cb < 0:  # a sum of symbols minus a constant has no spelling (and may be negative)
        raise ValueError(f"dim {a!r} - {b!r} cannot be written as a dim (negative constant part)")
    return canonical("+".join(left + [str(ca - cb)])) if left else ca - cb


def symbols(dim: Dim) -> list[str]:
    """The symbol names in ``dim``."""
    return _terms(dim)[0]


def evaluate(dim: Dim, env: Mapping[str, int]) -> int:
    """The value of ``dim`` with symbols bound by ``env``; ``KeyError`` names an unbound symbol."""
    syms, constant = _terms(dim)
    return constant + sum(env[s] for s in syms)


def is_static(dim: Dim) -> bool:
    """True when ``dim`` has no symbols."""
    return not _terms(dim)[0]
