"""Element types and tensor types. Attention math runs in float32 or wider; float16/bfloat16 are storage types."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from attngraph.ir.dims import Dim


class DType(enum.StrEnum):
    """Element types. Attention math runs in float32 or wider; float16/bfloat16 are storage types."""

    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    INT32 = "int32"
    INT64 = "int64"
    # quantized storage (a KV cache written by ``quantize``, read by ``dequantize``): no math runs in them
    INT8 = "int8"
    FLOAT8_E4M3FN = "float8_e4m3fn"

    @property
    def short(self) -> str:
        """The short spelling used by the text form (``f32``)."""
        return _SHORT[self]

    @property
    def is_float(self) -> bool:
        return self in FLOAT_DTYPES

    @property
    def compute(self) -> DType:
        """The dtype attention math runs in: float64 for float64, float32 for every other float."""
        return DType.FLOAT64 if self is DType.FLOAT64 else DType.FLOAT32

    @classmethod
    def parse(cls, text: str) -> DType:
        """Accept ``"float32"``, ``"f32"`` or a NumPy dtype name; raise ``ValueError`` naming the choices."""
        text = str(text)
        for member in cls:
            if text in (member.value, member.short):
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown dtype {text!r}; choose one of: {choices}")


_SHORT = {
    DType.FLOAT16: "f16", DType.BFLOAT16: "bf16", DType.FLOAT32: "f32", DType.FLOAT64: "f64",
    DType.BOOL: "bool", DType.INT32: "i32", DType.INT64: "i64",
    DType.INT8: "i8", DType.FLOAT8_E4M3FN: "f8e4m3fn",
}
FLOAT_DTYPES = frozenset({DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64})
INT_DTYPES = frozenset({DType.INT32, DType.INT64})
# storage of a quantized KV cache: int8 (round half to even, saturate to +-127) or float8 e4m3fn (ml_dtypes)
QUANT_DTYPES = frozenset({DType.INT8, DType.FLOAT8_E4M3FN})


@dataclass(frozen=True, slots=True)
class TensorType:
    """A dtype and a shape whose dims are ints or symbols (see ``attngraph.ir.dims``)."""

    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(str(d) for d in self.shape)}]"
