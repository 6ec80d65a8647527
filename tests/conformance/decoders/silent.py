"""A broken decoder: exits non-zero on bad input but reports no error class."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError:
    sys.exit(1)
np.savez(sys.argv[2], **arrays)
