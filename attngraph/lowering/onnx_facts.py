"""Facts about ONNX that attngraph's ONNX export and the code that edits ONNX models share.

``MIN_OPSET``: the oldest default-domain opset each export style needs; ``IR_VERSION``: the IR version an
export is stamped with; ``ONNX_TYPES``: the ONNX element type of each IR dtype. The ONNX backend
(``attngraph_backends.onnx``) exports with them, and ``optimize`` (``frontends.onnx_discovery``), which puts
those exports into other models, reads them here: the core never imports the backends by name.

Imports ``onnx``: import this module only where onnx is used (``import attngraph`` never does).
"""

from __future__ import annotations

from onnx import TensorProto

from attngraph.ir import DType

MIN_OPSET = {"decomposed": 17, "attention": 23, "contrib": 17}
IR_VERSION = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 rejects
ONNX_TYPES = {DType.FLOAT16: TensorProto.FLOAT16, DType.BFLOAT16: TensorProto.BFLOAT16,
              DType.FLOAT32: TensorProto.FLOAT, DType.FLOAT64: TensorProto.DOUBLE, DType.BOOL: TensorProto.BOOL,
              DType.INT32: TensorProto.INT32, DType.INT64: TensorProto.INT64, DType.INT8: TensorProto.INT8}
