"""Symbolic sizes: polynomials in the model's named dims, so a proof about shapes holds at every size.

A dim of an exported model is an int, a name (``"batch"``), or an expression shape inference wrote
(``"batch*seq"``, ``"past + seq"``). ``Poly`` keeps such a size as a sum of monomials with integer
coefficients; two sizes are equal when their polynomials are, which is what the layout proofs compare.
An expression outside sums of products (``"floor(s1/s2)"``, ``"Min(512, seq)"``) is kept as one opaque
symbol: equal only to itself, so nothing is ever concluded from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Poly:
    """An integer polynomial in symbol names: ``{monomial (sorted names): coefficient}``. Immutable."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[tuple[str, ...], int]):
        object.__setattr__(self, "terms", {m: c for m, c in sorted(terms.items()) if c})

    def __setattr__(self, *_):
        raise AttributeError("Poly is immutable")

    @staticmethod
    def of(value) -> Poly:
        """An int, a Poly, or a symbol name as a Poly."""
        if isinstance(value, Poly):
            return value
        if isinstance(value, int | bool) or hasattr(value, "__index__"):
            return Poly({(): int(value)})
        return Poly({(str(value),): 1})

    @property
    def is_const(self) -> bool:
        return all(not m for m in self.terms)

    @property
    def value(self) -> int:
        """The int value of a constant (``ValueError`` for a symbolic size)."""
        if not self.is_const:
            raise ValueError(f"{self} is symbolic")
        return self.terms.get((), 0)

    def __add__(self, other) -> Poly:
        other = Poly.of(other)
        terms = dict(self.terms)
        for m, c in other.terms.items():
            terms[m] = terms.get(m, 0) + c
        return Poly(terms)

    __radd__ = __add__

    def __neg__(self) -> Poly:
        return Poly({m: -c for m, c in self.terms.items()})

    def __sub__(self, other) -> Poly:
        return self + (-Poly.of(other))

    def __rsub__(self, other) -> Poly:
        return Poly.of(other) - self

    def __mul__(self, other) -> Poly:
        other = Poly.of(other)
        terms: dict[tuple[str, ...], int] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return Poly(terms)

    __rmul__ = __mul__

    def divide(self, other) -> Poly | None:
        """``self / other`` when it is exact for every value of the symbols, else None."""
        other = Poly.of(other)
        if self == other:
            return Poly.of(1)
        if len(other.terms) != 1:
            return None
        (mono, coeff), = other.terms.items()
        if coeff == 0:
            return None
        out: dict[tuple[str, ...], int] = {}
        for m, c in self.terms.items():
            rest = list(m)
            for s in mono:
                if s not in rest:
                    return None
                rest.remove(s)
            if c % coeff:
                return None
            out[tuple(rest)] = c // coeff
        return Poly(out)

    def __eq__(self, other) -> bool:
        try:
            other = Poly.of(other)
        except (TypeError, ValueError):
            return NotImplemented
        return self.terms == other.terms

    def __hash__(self) -> int:
        return hash(tuple(self.terms.items()))

    def __repr__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for m, c in self.terms.items():
            factor = "*".join(m)
            if not m:
                parts.append(str(c))
            elif c == 1:
                parts.append(factor)
            else:
                parts.append(f"{c}*{factor}")
        return " + ".join(parts)


def parse_dim(dim) -> Poly | None:
    """A dim as shape inference wrote it (int, name, ``a*b``, ``a + b``), or None when unknown."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return Poly.of(dim) if dim >= 0 else None
    text = str(dim).strip()
    if not text:
        return None
    total = Poly.of(0)
    for term in text.split("+"):
        product = Poly.of(1)
        for factor in term.split("*"):
            factor = factor.strip()
            if factor.isdigit():
                product = product * int(factor)
            elif _NAME.match(factor):
                product = product * Poly.of(factor)
            else:  # floor(...), Min(...): one opaque symbol, equal only to itself
                return Poly.of(f"<{text}>")
        total = total + product
    return total
