"""Helpers to take a stream apart into units and put forged ones back together (valid CRCs)."""

from __future__ import annotations

import struct
import zlib

from nncodec.bitstream.constants import FILE_HEADER_SIZE, UNIT_HEADER, UNIT_HEADER_SIZE


def split_units(data: bytes) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """``(file header, [(type, flags, reserved, payload), ...])`` of a well-formed stream."""
    units, pos = [], FILE_HEADER_SIZE
    while pos < len(data):
        utype, flags, reserved, length, _ = UNIT_HEADER.unpack_from(data, pos)
        payload = data[pos + UNIT_HEADER_SIZE:pos + UNIT_HEADER_SIZE + length]
        units.append((utype, flags, reserved, payload))
        pos += UNIT_HEADER_SIZE + length
    return data[:FILE_HEADER_SIZE], units


def unit_bytes(utype: int, flags: int, reserved: int, payload: bytes, length: int | None = None) -> bytes:
    head = UNIT_HEADER.pack(utype, flags, reserved, len(payload) if length is None else length, 0)[:12]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def join_units(file_header: bytes, units: list[tuple[int, int, int, bytes]]) -> bytes:
    return file_header + b"".join(unit_bytes(*u) for u in units)
