"""Constants of the nncodec bitstream, format version 1.6 (1.0 plus the tensor-aliases unit, operating points,
grid-aligned deltas, the tensor-group unit, dependent quantization and the adaptive arithmetic coding stage). Mirrors the tables in ``FORMAT.md``."""

from __future__ import annotations

import struct

#: 8 bytes. 0x89 is not valid as the first byte of ASCII or UTF-8 text; CR LF / SUB / LF catch
#: line-ending conversion and text-mode transfers (the same trick as PNG).
MAGIC = b"\x89NNC\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
#: the minor version that added the tensor-aliases unit; an encoder writes it only for streams that hold one
FORMAT_MINOR_ALIASES = 1
#: the minor version that added operating points (units 0x06 and 0x11); written only for scalable streams
FORMAT_MINOR_OPERATING_POINTS = 2
#: the minor version that added grid-aligned quantized deltas (base reference flag bit 0); written only for them
FORMAT_MINOR_GRID_DELTA = 3
#: the minor version that added the tensor-group unit (0x12); written only for streams that hold one
FORMAT_MINOR_TENSOR_GROUP = 4
#: the minor version that added the dependent-quantization stage (stage id 7); written only for streams that use it
FORMAT_MINOR_DEPENDENT = 5
#: the minor version that added the adaptive arithmetic coding stage (stage id 8); written only for streams that use it
FORMAT_MINOR_ACODE = 6

#: file header: magic (8) | major u16 | minor u16
FILE_HEADER = struct.Struct("<8sHH")
FILE_HEADER_SIZE = FILE_HEADER.size  # 12

#: unit header: type u8 | flags u8 | reserved u16 | payload_length u64 | crc32 u32
UNIT_HEADER = struct.Struct("<BBHQI")
UNIT_HEADER_SIZE = UNIT_HEADER.size  # 16
UNIT_CRC_COVERED = 12  # header bytes covered by the CRC (everything before the crc field)

FLAG_CRITICAL = 0x01
UNIT_FLAGS_RESERVED = 0xFE

# unit types
UNIT_STREAM_HEADER = 0x01
UNIT_MODEL_PARAMETER_SET = 0x02
UNIT_TOPOLOGY = 0x03
UNIT_TENSOR_ALIASES = 0x04  #: format 1.1
UNIT_BASE_REFERENCE = 0x05  #: delta streams (FORMAT.md §12), critical
UNIT_OPERATING_POINTS = 0x06  #: format 1.2, ancillary
UNIT_TENSOR = 0x10
UNIT_REFINEMENT = 0x11  #: format 1.2, ancillary
UNIT_TENSOR_GROUP = 0x12  #: format 1.4, critical: many small tensors, one directory, one shared data pipeline
UNIT_END = 0x7F

UNIT_NAMES = {
    UNIT_STREAM_HEADER: "stream_header",
    UNIT_MODEL_PARAMETER_SET: "model_parameter_set",
    UNIT_TOPOLOGY: "topology",
    UNIT_TENSOR_ALIASES: "tensor_aliases",
    UNIT_BASE_REFERENCE: "base_reference",
    UNIT_OPERATING_POINTS: "operating_points",
    UNIT_TENSOR: "tensor",
    UNIT_REFINEMENT: "refinement",
    UNIT_TENSOR_GROUP: "tensor_group",
    UNIT_END: "end_of_stream",
}

PROFILE_MAIN = 0

#: stream header payload: major u16 | minor u16 | profile u8 | reserved u8 | reserved u16 | tensor_count u32 |
#: metadata_len u32. The version repeats the file header's under the unit CRC, and must equal it.
STREAM_HEADER = struct.Struct("<HHBBHII")
#: end-of-stream payload: unit_count u32 (units before this one) | tensor_count u32
END_OF_STREAM = struct.Struct("<II")

#: pipeline count value meaning "use the model parameter set's default pipeline"
PIPELINE_DEFAULT = 0xFF
MAX_PIPELINE_STAGES = 8

# quantization schemes (tensor data unit, descriptor field `scheme`)
SCHEME_NONE = 0          # lossless: codes are the tensor's own words
SCHEME_UNIFORM = 1       # fixed point / m-quant: value = code * scale
SCHEME_BINARY = 2        # codes in {-1, +1}: value = code * scale
SCHEME_MOD_BINARY = 3    # codes in {0, 1}: value = code * scale
SCHEME_TERNARY = 4       # codes in {-1, 0, +1}: value = code * scale
SCHEME_PO2 = 5           # e-quant: value = sign(c) * 2^(|c| - 1 + exp_min) * scale, c = 0 -> 0
SCHEME_FLOAT_CAST = 6    # codes are floats of another width: value = cast(code)

SCHEME_NAMES = {
    SCHEME_NONE: "none",
    SCHEME_UNIFORM: "uniform",
    SCHEME_BINARY: "binary",
    SCHEME_MOD_BINARY: "modified_binary",
    SCHEME_TERNARY: "ternary",
    SCHEME_PO2: "po2",
    SCHEME_FLOAT_CAST: "float_cast",
}

#: quantization descriptor fixed part:
#: scheme u8 | code_dtype u8 | sign_bits i8 | exponent_bits u8 | mantissa_bits u8 | bits u8 |
#: flags u8 | axis u8 | exp_min i16 | n_scales u32
QUANT_DESCRIPTOR = struct.Struct("<BBbBBBBBhI")
QFLAG_PER_CHANNEL = 0x01
QFLAG_PO2_SCALE = 0x02
QFLAGS_RESERVED = 0xFC

# stage ids (pipeline entries)
STAGE_ZERO_WORDS = 1
STAGE_BITPACK = 2
STAGE_SHUFFLE = 3
STAGE_ZSTD = 4
STAGE_ANS = 5  # experimental
STAGE_RANS = 6
STAGE_DEPENDENT = 7  #: format 1.5: dependent (trellis-coded) quantization, FORMAT.md §15
STAGE_ACODE = 8  #: format 1.6: context-adaptive binary arithmetic coding of segments, FORMAT.md §16

#: tensor-group unit (FORMAT.md §14) fixed head: member_count u32 | directory_length u32
GROUP_HEAD = struct.Struct("<II")
#: smallest directory entry: shared u8, suffix_length u16, 1 suffix byte, dtype u8, ndim u8, descriptor 14, layout u8
GROUP_ENTRY_MIN = 21
GROUP_LAYOUT_DENSE = 0  #: numel code words in the group's data
GROUP_LAYOUT_FILL = 1   #: one code word in the data, repeated numel times
