"""Does bitarray (C bit operations, sparse bitmap compression) beat what the codec does with numpy/zstd?

    pip install bitarray && python tests/benchmarks/bench_bitarray.py

Three uses measured on zero-word maps of pruned tensors (4 M words, zeros spread at random with the given
density; a pruned tensor's map is about that): (1) unpacking a little-endian map into booleans (the
decoder's ``np.unpackbits``) vs ``bitarray`` -> ``numpy`` through ``frombuffer``; (2) the positions of the
non-zero words (``np.flatnonzero`` on the booleans vs ``bitarray.search``); (3) the map's size: packed bits
+ zstd-19 (what stack compression + the zstd stage store) vs ``bitarray.util.sc_encode`` (sparse
compression). Best of 5 runs; prints a table.
"""

from __future__ import annotations

import time

import numpy as np
import zstandard
from bitarray import bitarray
from bitarray.util import sc_encode

N = 1 << 22


def best(fn, repeat: int = 5) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'non-zero':>9s} {'unpack np ms':>12s} {'unpack ba ms':>12s} {'where np ms':>11s} "
          f"{'search ba ms':>12s} {'zstd-19 B':>10s} {'sc_encode B':>11s}")
    for density in (0.01, 0.05, 0.25, 0.5, 0.9):
        bits = rng.random(N) < density
        packed = np.packbits(bits, bitorder="little").tobytes()
        ba = bitarray(endian="little")
        ba.frombytes(packed)
        unpack_np = best(lambda: np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little", count=N))
        unpack_ba = best(lambda: np.frombuffer(bitarray(ba).unpack(), dtype=bool))
        where_np = best(lambda: np.flatnonzero(np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little",
                                                             count=N)))
        search_ba = best(lambda: np.fromiter(ba.search(1), dtype=np.int64, count=ba.count()), repeat=2)
        zstd_size = len(zstandard.ZstdCompressor(level=19).compress(packed))
        sc_size = len(sc_encode(ba))
        print(f"{density:9.2f} {unpack_np * 1e3:12.2f} {unpack_ba * 1e3:12.2f} {where_np * 1e3:11.2f} "
              f"{search_ba * 1e3:12.2f} {zstd_size:10d} {sc_size:11d}")


if __name__ == "__main__":
    main()
