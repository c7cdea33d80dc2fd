"""Default decompositions (JAX's ``lower_fun``): each attention op written with simpler ops.

A backend runs an op with its own rule when it has one; otherwise ``decompose`` expands the op by
this table, again and again, until only ops with rules remain. Every op is either a primitive
(every backend has a rule) or has an entry here, so every op runs on every backend; a test holds
that. Each function gets the node and an ``Emitter`` and defines the node's own output values.

Float math runs in the compute dtype (float32, or float64 for float64 graphs): inputs are cast up
first and results cast back to the node's output dtype, the IR's precision rule.
"""

from attngraph.passes import attention_decompositions, latent_decompositions, position_decompositions  # noqa: F401
from attngraph.passes import varlen_decompositions  # noqa: F401
from attngraph.passes import quant_decompositions  # noqa: F401
from attngraph.passes import paged_decompositions  # noqa: F401
from attngraph.passes.attention_decompositions import exact_dot, grouped_dot, keep_mask
from attngraph.passes.decomposition_registry import DECOMPOSITIONS, USES, Decomposition, decomposes

__all__ = ["DECOMPOSITIONS", "USES", "Decomposition", "decomposes", "exact_dot", "grouped_dot", "keep_mask"]
