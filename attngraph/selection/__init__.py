"""Backend selection: hardware detection, capability declarations, the ranking table, autotune."""

from attngraph.selection.capabilities import CAPABILITIES, Capabilities, graph_features
from attngraph.selection.hardware import CudaDevice, Hardware, detect_hardware
from attngraph.selection.rules import RANKING, Selection, problem_of, select_backend

__all__ = ["CAPABILITIES", "RANKING", "Capabilities", "CudaDevice", "Hardware", "Selection", "detect_hardware",
           "graph_features", "problem_of", "select_backend"]
