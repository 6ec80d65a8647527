"""A correct external decoder (nncodec's numpy API) writing .npz, for the runner tests.

On bad input it exits 2 with the error class as the last line of stderr (the runner's protocol)."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError as exc:
    print(exc, file=sys.stderr)
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(2)
np.savez(sys.argv[2], **arrays)
