"""A correct external decoder (nncodec's numpy API) writing .npz, for the runner tests."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
np.savez(sys.argv[2], **arrays)
