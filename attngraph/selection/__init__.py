"""Backend selection: hardware detection, capabilities derived from each backend, the ranking table, autotune."""

from attngraph.selection.capabilities import ALL, FEATURES, Capabilities, capabilities_of, graph_features
from attngraph.selection.hardware import CudaDevice, Hardware, current_hardware, detect_hardware
from attngraph.selection.rules import RANKING, Selection, problem_of, select_backend

__all__ = ["ALL", "FEATURES", "RANKING", "Capabilities", "CudaDevice", "Hardware", "Selection", "capabilities_of",
           "current_hardware", "detect_hardware", "graph_features", "problem_of", "select_backend"]
