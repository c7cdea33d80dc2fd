"""The NumPy backend's rules: the shared array rules, unchanged (NumPy is the array API's home)."""

from __future__ import annotations

from attngraph.array_math.rules import ARRAY_RULES

rules = ARRAY_RULES.extended("numpy")
