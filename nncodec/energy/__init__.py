"""Energy model: Horowitz op costs, QTools-compatible accounting, per-layer reports and plots."""

from .costs import HOROWITZ, OpCosts
from .estimate import EnergyReport, LayerEnergy, estimate_energy
from .graph import GraphOp, UnsupportedLayerError, UnsupportedOperatorError, capture_graph
from .operators import QType, make_multiplier, qtype

__all__ = ["estimate_energy", "EnergyReport", "LayerEnergy", "OpCosts", "HOROWITZ", "QType", "qtype",
           "make_multiplier", "UnsupportedLayerError", "UnsupportedOperatorError", "capture_graph",
           "GraphOp"]
