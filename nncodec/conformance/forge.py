"""Taking a stream apart into units and putting (possibly forged) units back, with valid CRCs.

Used to write the invalid conformance vectors and by the fuzz tests; never by the decoder.
"""

from __future__ import annotations

import struct
import zlib

from ..bitstream.constants import FILE_HEADER_SIZE, UNIT_CRC_COVERED, UNIT_HEADER, UNIT_HEADER_SIZE

__all__ = ["Unit", "split_units", "unit_bytes", "join_units", "refresh_crcs"]

Unit = tuple[int, int, int, bytes]  #: (type, flags, reserved, payload)


def split_units(data: bytes) -> tuple[bytes, list[Unit]]:
    """``(file header, units)`` of a well-formed stream."""
    units, pos = [], FILE_HEADER_SIZE
    while pos < len(data):
        utype, flags, reserved, length, _ = UNIT_HEADER.unpack_from(data, pos)
        units.append((utype, flags, reserved, data[pos + UNIT_HEADER_SIZE:pos + UNIT_HEADER_SIZE + length]))
        pos += UNIT_HEADER_SIZE + length
    return data[:FILE_HEADER_SIZE], units


def unit_bytes(utype: int, flags: int, reserved: int, payload: bytes, length: int | None = None) -> bytes:
    """One unit with a correct CRC (``length`` may lie about the payload size)."""
    head = UNIT_HEADER.pack(utype, flags, reserved, len(payload) if length is None else length, 0)[:UNIT_CRC_COVERED]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def join_units(file_header: bytes, units: list[Unit]) -> bytes:
    return file_header + b"".join(unit_bytes(*u) for u in units)


def refresh_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every unit whose declared length fits, so damage reaches the payload parsers."""
    out = bytearray(data)
    pos = FILE_HEADER_SIZE
    while pos + UNIT_HEADER_SIZE <= len(out):
        length = struct.unpack_from("<Q", out, pos + 4)[0]
        end = pos + UNIT_HEADER_SIZE + length
        if end > len(out):
            break
        crc = zlib.crc32(bytes(out[pos + UNIT_HEADER_SIZE:end]), zlib.crc32(bytes(out[pos:pos + UNIT_CRC_COVERED])))
        struct.pack_into("<I", out, pos + UNIT_CRC_COVERED, crc)
        pos = end
    return bytes(out)
