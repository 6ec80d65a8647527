"""Every malformed stream raises the library's own error, names where, and never over-allocates."""

import struct

import numpy as np
import pytest

import nncodec
from nncodec.bitstream.constants import (FILE_HEADER, MAGIC, UNIT_END, UNIT_STREAM_HEADER, UNIT_TENSOR,
                                         UNIT_TOPOLOGY)
from nncodec.errors import (BadMagicError, ChecksumError, CorruptError, LimitExceededError, NNCodecError,
                            TruncatedError, UnknownUnitError, UnsupportedFeatureError, UnsupportedVersionError)
from nncodec.conformance.forge import join_units, refresh_crcs, split_units, unit_bytes


@pytest.fixture(scope="module")
def small_stream() -> bytes:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 5)) * (rng.random((6, 5)) < 0.4)).astype(np.float32)
    return nncodec.encode_arrays({"w": w, "b": np.arange(4, dtype=np.int16), "m": np.array([True, False])}, bits=None)


def test_small_stream_decodes(small_stream):
    out = nncodec.decode_arrays(small_stream)
    assert list(out) == ["b", "m", "w"]


def test_every_single_bit_flip_is_detected(small_stream):
    n_bits = len(small_stream) * 8
    assert n_bits < 20000
    for bit in range(n_bits):
        data = bytearray(small_stream)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(NNCodecError):
            nncodec.decode_arrays(bytes(data))


def test_every_truncation_is_detected(small_stream):
    for cut in range(len(small_stream)):
        with pytest.raises(NNCodecError) as exc:
            nncodec.decode_arrays(small_stream[:cut])
        assert isinstance(exc.value, (TruncatedError, BadMagicError))


def test_truncation_at_a_unit_boundary_names_missing_end(small_stream):
    header, units = split_units(small_stream)
    assert units[-1][0] == UNIT_END
    with pytest.raises(TruncatedError, match="end-of-stream"):
        nncodec.decode_arrays(join_units(header, units[:-1]))


def test_trailing_bytes_are_rejected(small_stream):
    with pytest.raises(NNCodecError):
        nncodec.decode_arrays(small_stream + b"\0")
    header, units = split_units(small_stream)
    extra = unit_bytes(0x40, 0, 0, b"junk")  # an ancillary unit after end-of-stream
    with pytest.raises(CorruptError, match="after the end-of-stream"):
        nncodec.decode_arrays(small_stream + extra)


def test_bad_magic_and_versions(small_stream):
    with pytest.raises(BadMagicError):
        nncodec.decode_arrays(b"PK\x03\x04" + small_stream[4:])
    newer = FILE_HEADER.pack(MAGIC, 2, 0) + small_stream[12:]
    with pytest.raises(UnsupportedVersionError, match="upgrade nncodec"):
        nncodec.decode_arrays(newer)


def test_reserved_bits_with_valid_crc_are_rejected(small_stream):
    header, units = split_units(small_stream)
    for flags, reserved in ((0x03, 0), (0x01, 1)):
        forged = [units[0], (units[1][0], flags, reserved, units[1][3]), *units[2:]]
        with pytest.raises(CorruptError, match="reserved") as exc:
            nncodec.decode_arrays(join_units(header, forged))
        assert exc.value.unit_index == 1


def test_checksum_error_names_unit_and_offset(small_stream):
    header, units = split_units(small_stream)
    data = bytearray(small_stream)
    data[-1] ^= 0xFF  # last payload byte of the end-of-stream unit
    with pytest.raises(ChecksumError) as exc:
        nncodec.decode_arrays(bytes(data))
    assert exc.value.unit_index == len(units) - 1 and exc.value.offset is not None


def test_unknown_units_critical_vs_ancillary(small_stream):
    header, units = split_units(small_stream)
    anc = [units[0], (0x55, 0, 0, b"future data"), *units[1:]]
    end = anc[-1]
    anc[-1] = (end[0], end[1], end[2], struct.pack("<II", len(anc) - 1, 3))
    assert list(nncodec.decode_arrays(join_units(header, anc))) == ["b", "m", "w"]
    crit = [units[0], (0x55, 1, 0, b"future data"), *units[1:]]
    with pytest.raises(UnknownUnitError, match="0x55"):
        nncodec.decode_arrays(join_units(header, crit))


def _tensor_payload(name: bytes, dtype_id: int, dims: list[int], desc: bytes | None = None,
                    pipeline: bytes = b"\x00", data: bytes = b"") -> bytes:
    out = struct.pack("<H", len(name)) + name + bytes([dtype_id, len(dims)])
    out += b"".join(struct.pack("<Q", d) for d in dims)
    if desc is None:  # lossless descriptor for the dtype
        desc = struct.pack("<BBbBBBBBhI", 0, dtype_id, 0, 0, 0, 8, 0, 0, 0, 0)
    return out + desc + pipeline + data


def _stream(*tensor_payloads: bytes, count: int | None = None) -> bytes:
    n = len(tensor_payloads)
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 0, 0, 0, 0, n if count is None else count, 0))]
    units += [(UNIT_TENSOR, 1, 0, p) for p in tensor_payloads]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), n)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 0), units)


def test_forged_stream_helper_is_valid():
    out = nncodec.decode_arrays(_stream(_tensor_payload(b"x", 2, [3], data=b"\1\2\3")))
    np.testing.assert_array_equal(out["x"], [1, 2, 3])


def test_huge_tensor_claim_is_refused_before_allocating():
    payload = _tensor_payload(b"big", 12, [1 << 20, 1 << 20, 1 << 20])
    with pytest.raises(LimitExceededError, match="element count"):
        nncodec.decode_arrays(_stream(payload))
    small = nncodec.Limits(max_total_decoded_bytes=100)
    with pytest.raises(LimitExceededError, match="total decoded bytes"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"x", 12, [1000], data=b"\0" * 4000)), limits=small)


def test_shape_product_overflow_is_refused():
    payload = _tensor_payload(b"of", 2, [1 << 63, 1 << 63, 0])
    with pytest.raises(LimitExceededError):
        nncodec.decode_arrays(_stream(payload))


def test_length_field_past_the_end():
    good = _stream(_tensor_payload(b"x", 2, [3], data=b"\1\2\3"))
    header, units = split_units(good)
    lying = header + unit_bytes(*units[0]) + unit_bytes(UNIT_TENSOR, 1, 0, units[1][3], length=1 << 30)
    with pytest.raises(TruncatedError):
        nncodec.decode_arrays(lying)
    with pytest.raises(LimitExceededError):
        nncodec.decode_arrays(lying, limits=nncodec.Limits(max_unit_bytes=1 << 20))


def test_duplicate_names_and_invalid_utf8():
    p = _tensor_payload(b"x", 2, [1], data=b"\1")
    with pytest.raises(CorruptError, match="duplicate"):
        nncodec.decode_arrays(_stream(p, p))
    with pytest.raises(CorruptError, match="UTF-8"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"\xff\xfe", 2, [1], data=b"\1")))


def test_unknown_stage_and_wrong_length():
    with pytest.raises(UnsupportedFeatureError, match="stage id 77"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"x", 2, [1], pipeline=b"\x01\x4d\x00", data=b"\1")))
    with pytest.raises(CorruptError, match="expected"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"x", 2, [4], data=b"\1\2")))
    frame = __import__("zstandard").ZstdCompressor(write_checksum=True).compress(b"\1\2\3")
    with pytest.raises(CorruptError, match="expected"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"x", 2, [4], pipeline=b"\x01\x04\x00", data=frame)))


def test_tensor_count_mismatch_and_bad_bool():
    with pytest.raises(CorruptError, match="declares"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"x", 2, [1], data=b"\1"), count=2))
    with pytest.raises(CorruptError, match="bool"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"b", 1, [2], data=b"\1\2")))


def test_quantized_codes_out_of_range():
    desc = struct.pack("<BBbBBBBBhI", 4, 3, -1, 0, 1, 2, 0, 0, 0, 1) + struct.pack("<f", 0.5)  # ternary int8
    with pytest.raises(CorruptError, match="ternary"):
        nncodec.decode_arrays(_stream(_tensor_payload(b"t", 12, [3], desc=desc, data=b"\x01\x00\x02")))
    out = nncodec.decode_arrays(_stream(_tensor_payload(b"t", 12, [3], desc=desc, data=b"\x01\x00\xff")))
    np.testing.assert_array_equal(out["t"], [0.5, 0.0, -0.5])


def test_topology_must_be_json_object():
    good = _stream(_tensor_payload(b"x", 2, [1], data=b"\1"))
    header, units = split_units(good)
    units = [units[0], (UNIT_TOPOLOGY, 0, 0, b"[1,2]"), *units[1:]]
    units[-1] = (UNIT_END, 1, 0, struct.pack("<II", len(units) - 1, 1))
    with pytest.raises(CorruptError, match="topology"):
        nncodec.decode_arrays(join_units(header, units))


def test_errors_are_value_errors_and_never_raw_exceptions(small_stream):
    assert issubclass(CorruptError, ValueError) and issubclass(LimitExceededError, ValueError)
    rng = np.random.default_rng(7)
    for _ in range(300):  # random multi-byte damage in headers and payloads
        data = bytearray(small_stream)
        for pos in rng.integers(12, len(data), 3):
            data[pos] = rng.integers(0, 256)
        crc_fixed = refresh_crcs(bytes(data))
        try:
            nncodec.decode_arrays(crc_fixed)
        except NNCodecError:
            pass
