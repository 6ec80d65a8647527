"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer). Run by hand, not in CI:

    pip install atheris
    python tests/fuzz/fuzz_decoder.py -max_total_time=1800 -rss_limit_mb=2048 -timeout=10 \\
        fuzz_corpus conformance_vectors/v1.0/valid

Half the inputs get their unit CRCs recomputed so mutations reach the payload parsers. Any exception
outside nncodec's hierarchy is a crash (libFuzzer saves the input as crash-*); a decode taking more than
-timeout seconds is a hang; -rss_limit_mb catches allocations beyond the (small) limits used here.
Turn anything found into an invalid conformance vector.
"""

import sys

import atheris

with atheris.instrument_imports(include=["nncodec"]):
    from nncodec.conformance.forge import refresh_crcs
    from nncodec.decoder import iter_tensors
    from nncodec.errors import NNCodecError
    from nncodec.limits import Limits

LIMITS = Limits(max_unit_bytes=1 << 24, max_tensor_elements=1 << 22, max_total_decoded_bytes=1 << 26)


def test_one_input(data: bytes) -> None:
    if data and data[0] & 1:
        data = refresh_crcs(data)
    try:
        for _ in iter_tensors(data, limits=LIMITS):
            pass
    except NNCodecError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
