"""Lossless coding stages (stack compression, bit packing, shuffle, entropy) behind one registry."""

from .acode_stage import Acode
from .ans_stage import Ans, ans_available
from .bitpack import BitPack
from .dependent_stage import Dependent
from .rans_stage import Rans, rans_available
from .shuffle import Shuffle
from .stage import REGISTRY, Stage, entropy_stages, register_stage, stage_class, stage_from_config
from .zero_words import ZeroWords
from .zstd_stage import Zstd

__all__ = ["Stage", "REGISTRY", "register_stage", "stage_class", "stage_from_config", "entropy_stages",
           "ZeroWords", "BitPack", "Dependent", "Shuffle", "Zstd", "Ans", "ans_available", "Rans",
           "rans_available", "Acode"]
