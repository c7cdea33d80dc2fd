"""The eager backends' shared math, written once against the array API (array-api-compat): the keep
mask, the safe softmax, the GQA mapping, chunked attention, and a rule for every op (``ARRAY_RULES``).

The NumPy and torch backends run it; a plug-in backend for any array-API library can too. Numba and
ONNX keep their own kernels and emitters; the float64 conformance reference and the tests' oracle stay
independent of it on purpose.
"""

from attngraph.array_math.rules import ARRAY_RULES
from attngraph.array_math.state import ArrayState, namespace, numpy_dtypes

__all__ = ["ARRAY_RULES", "ArrayState", "namespace", "numpy_dtypes"]
