"""Fresh value names: ``hint``, else ``hint_1``, ``hint_2``... (used by the builder, passes and emitters)."""

from __future__ import annotations


def fresh_name(taken: set[str], hint: str) -> str:
    """The first free name among ``hint``, ``hint_1``, ...; it is then marked taken."""
    name, i = hint, 1
    while name in taken:
        name, i = f"{hint}_{i}", i + 1
    taken.add(name)
    return name
