"""The nncodec container format: constants, units, reader. Imports nothing above ``coding``."""

from . import constants
from .descriptor import QuantDescriptor
from ..coding.pipeline import Pipeline
from .units import TensorHeader

__all__ = ["constants", "QuantDescriptor", "Pipeline", "TensorHeader"]
