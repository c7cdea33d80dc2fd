"""The ONNX backend: export and onnxruntime."""
