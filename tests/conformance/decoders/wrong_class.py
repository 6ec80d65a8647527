"""A broken decoder: rejects bad input but reports the parent class (FormatError) instead of the exact one."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError as exc:
    print(exc, file=sys.stderr)
    print("FormatError", file=sys.stderr)
    sys.exit(2)
np.savez(sys.argv[2], **arrays)
