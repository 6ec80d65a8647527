"""The nncodec wire layer: constants, the bounded reader, units and descriptors. Imports nothing above it
(stages and pipelines live in ``nncodec.coding``, which builds on this package)."""

from . import constants
from .descriptor import QuantDescriptor
from .units import TensorHeader

__all__ = ["constants", "QuantDescriptor", "TensorHeader"]
