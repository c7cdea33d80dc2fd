"""Ways to get a graph: the attention constructors, ``from_onnx``, ``from_torch``."""
