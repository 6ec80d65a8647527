"""A broken decoder: never reports an error (writes what it could decode, or nothing)."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError:
    arrays = {}
np.savez(sys.argv[2], **arrays)
