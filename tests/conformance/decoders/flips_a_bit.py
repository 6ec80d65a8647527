"""A broken decoder: decodes correctly, then flips one bit of the first non-empty tensor."""
import sys

import numpy as np

import nncodec

try:
    arrays = nncodec.decode_arrays(sys.argv[1])
except nncodec.NNCodecError as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(2)
for name, a in arrays.items():
    if a.nbytes:
        raw = bytearray(a.tobytes())
        raw[0] ^= 1
        arrays[name] = np.frombuffer(bytes(raw), dtype=a.dtype).reshape(a.shape)
        break
np.savez(sys.argv[2], **arrays)
