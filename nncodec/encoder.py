"""Encoding numpy tensors into an nncodec stream: optional quantization, pipeline choice, units.

Lossless by default. The pipeline of each tensor is the candidate that codes smallest (measured on
an evenly spread sample for large tensors); storing the words as they are is always a candidate, so a
unit is never larger than the raw words plus its header.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
import json
import logging
import math
import os
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .atomic import atomic_file
from .bitstream.constants import (FILE_HEADER, FLAG_CRITICAL, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_MINOR_ACODE,
                                  FORMAT_MINOR_ALIASES,
                                  FORMAT_MINOR_TENSOR_GROUP, GROUP_LAYOUT_DENSE, GROUP_LAYOUT_FILL, MAGIC,
                                  SCHEME_BINARY, SCHEME_FLOAT_CAST, SCHEME_NONE, STREAM_HEADER, SCHEME_UNIFORM, UNIT_CRC_COVERED,
                                  UNIT_END, UNIT_HEADER, UNIT_HEADER_SIZE, UNIT_MODEL_PARAMETER_SET,
                                  UNIT_STREAM_HEADER, UNIT_TENSOR, UNIT_TENSOR_ALIASES, UNIT_TENSOR_GROUP,
                                  UNIT_TOPOLOGY)
from .bitstream.group import GroupUnit, directory_bytes
from .bitstream.descriptor import CodedTensor, QuantDescriptor, bfloat16_bits_to_float32, dequantize_into
from .coding.pipeline import HandedWords, Pipeline
from .bitstream.units import EndOfStream, StreamHeader, TensorAliases, TensorHeader, frame_unit
from .coding import Acode, BitPack, Shuffle, ZeroWords, Zstd, entropy_stages, stage_from_config
from .coding.acode_portable import TYPE_WIDTH
from .coding.acode_stage import SEGMENT_TYPES, Segment, acode_compiled
from .coding.stage import WORD_DTYPES, Stage
from .dtypes import DType, dtype_by_name, dtype_of_array
from .dtypes import contiguous as _contiguous
from .errors import ConfigError
from .limits import DEFAULT_LIMITS, Limits
from .quant.uniform import UniformCodes, quantize_by_bits, quantize_by_step

__all__ = ["Encoder", "EncodeReport", "TensorReport", "encode_arrays", "find_aliases", "choose_pipeline",
           "encoder_from_options", "ungrouped"]

log = logging.getLogger(__name__)

_SAMPLE_THRESHOLD = 1 << 20    # bytes: larger word arrays choose their pipeline on a sample
_SAMPLE_SLICES = 16
_SAMPLE_SLICE_BYTES = 64 << 10
_BLOCK_WORDS = 64              # two-level map block size
_ENTROPY_ONLY_WORDS = 1 << 16  # from this many words on, an order-0 coder makes packing-only pipelines moot
_PROGRESS_BYTES = 64 << 20
_BLOCK_ELEMENTS = 1 << 18      # elements per block of the float64 statistics (std, errors)
#: tensors of at most this many elements may go into a tensor-group unit; the encoder tries these bounds
_GROUP_BOUNDS = (16, 256, 4096, 65536)
#: the largest bound of the first 1.4 encoder (its one group always competes); larger tensors are "mid-size"
_GROUP_SMALL = 4096
#: code words of a group's members, in bytes: over this, the group is not split by kind (:func:`_split_groups`);
#: tensors over 4096 elements join a group only while its words stay within this (:func:`_bound_members`; a
#: member of a group is decoded with the whole group)
_GROUP_SPLIT_BYTES = 256 << 10
#: screening of the candidates of arrays of >= _ENTROPY_ONLY_WORDS words: tried first on a quarter of the
#: sample (4 evenly spread pieces, together at least _SCREEN_MIN_BYTES), a candidate coding it over
#: _SCREEN_MARGIN times the smallest is not tried on the whole sample
_SCREEN_PIECES = 4
_SCREEN_MIN_BYTES = 64 << 10
_SCREEN_MARGIN = 1.05
_GROUP_LEVEL = 19              # zstd level of a group's directory and data (small: the best level costs little)
#: groups split by kind (not the single group) code data blocks over this many bytes at _SPLIT_LEVEL instead
_SPLIT_LEVEL_BYTES = 64 << 10
_SPLIT_LEVEL = 9
#: largest group data block the adaptive arithmetic coding stage (id 8) is tried on, with the compiled coder and
#: without it (the portable coder codes about 1 M words/s, and a block is coded 16 times); its context-set
#: assignments, shifts and K tried
_ACODE_MAX_BYTES = 1 << 20
_ACODE_PORTABLE_MAX_BYTES = 16 << 10
_ACODE_SHIFTS = (4, 5)
_ACODE_KS = (4, 8)  #: numbers of "abs > k" flags tried (FORMAT.md §16.1's K)
#: a tensor unit's quantized codes (int8, uint8, int16, uint16 words) of at most this many words also try stage 8
#: (compiled coder only), one segment, K 8, shifts 4 and 5; it is kept only when at most _ACODE_UNIT_MARGIN times
#: the size of the pipeline chosen otherwise: its decoding is sequential (tens of MB/s, rANS hundreds)
_ACODE_UNIT_MAX_WORDS = 1 << 18
_ACODE_UNIT_MARGIN = 0.95
#: tensor groups whose data stage 8 codes, and units of tensors kept for a group that it codes once they are known
#: to stay units, are kept, when no other tensor unit uses stage 8, only when the stream's tensor bytes (group
#: and tensor units) are at most this many times, and at least _ACODE_MIN_GAIN bytes under, those of the best
#: layout without them: a gain of a few bytes does not make a stream need a format 1.6 decoder
_ACODE_GROUP_MARGIN = 0.98
_ACODE_MIN_GAIN = 16
#: with at most this many tensors kept for a group whose units stage 8 could code, their stage-8 units are
#: weighed in every layout compared (with more, only in the layouts chosen: each costs two codings)
_ACODE_EAGER_UNITS = 8


@dataclass
class TensorReport:
    """What encoding did to one tensor. Errors are 0 for lossless tensors."""

    name: str
    dtype: str
    shape: list[int]
    scheme: str
    bits: int
    pipeline: list[str]
    unit_bytes: int                #: header + payload of its unit (a group member: its share of the group unit)
    bits_per_param: float | None   #: 8 * unit_bytes / elements (None for empty tensors)
    max_abs_error: float = 0.0
    rms_error: float = 0.0


@dataclass
class EncodeReport:
    tensors: list[TensorReport] = field(default_factory=list)
    total_bytes: int = 0
    seconds: float = 0.0
    aliases: dict[str, str] = field(default_factory=dict)  #: tied tensors: alias -> the tensor stored once
    grouped: list[str] = field(default_factory=list)  #: tensors stored in tensor-group units (FORMAT.md §14)

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def bits_per_param(self) -> float | None:
        n = self.parameters
        return 8.0 * self.total_bytes / n if n else None

    def to_json(self) -> str:
        return json.dumps({"total_bytes": self.total_bytes, "seconds": self.seconds,
                           "parameters": self.parameters, "bits_per_param": self.bits_per_param,
                           "tensors": [asdict(t) for t in self.tensors], "aliases": self.aliases,
                           "grouped": self.grouped}, indent=2)

    def table(self) -> str:
        rows = [f"{'tensor':40s} {'dtype':8s} {'scheme':8s} {'bits/param':>10s} {'max err':>10s} {'rms err':>10s}"]
        for t in self.tensors:
            bpp = f"{t.bits_per_param:.3f}" if t.bits_per_param is not None else "-"
            rows.append(f"{t.name[:40]:40s} {t.dtype:8s} {t.scheme[:8]:8s} {bpp:>10s} "
                        f"{t.max_abs_error:10.3g} {t.rms_error:10.3g}")
        bpp = f"{self.bits_per_param:.3f}" if self.bits_per_param is not None else "-"
        rows.append(f"total: {self.total_bytes} bytes, {self.parameters} parameters, {bpp} bits/param, "
                    f"{self.seconds:.2f} s")
        return "\n".join(rows)


def _candidates(word_size: int, bits: int, signed: bool, zero_fraction: float, level: int,
                n_words: int = 0) -> list[Pipeline]:
    """Pipelines worth trying. For large arrays with an order-0 entropy coder available, pipelines that
    cannot beat the order-0 entropy (bit packing or zero-word removal without zstd after them) are
    skipped, and zero-word removal is tried only on mostly-zero words."""
    z = Zstd(level)
    entropy: Stage | None = None
    if word_size <= 2 and (0 < bits < 8 * word_size or word_size == 1):
        coders = entropy_stages(word_size)  # registered stages declaring ``entropy``, most preferred first
        entropy = coders[0](word_size, signed) if coders else None  # type: ignore[call-arg]
    pruned = entropy is not None and n_words >= _ENTROPY_ONLY_WORDS
    cands: list[tuple] = [(), (z,)]
    if word_size > 1:
        cands.append((Shuffle(word_size), z))
    packable = 0 < bits < 8 * word_size
    if packable:
        pack = BitPack(word_size, bits, signed)
        cands += [(pack, z)] if pruned else [(pack,), (pack, z)]
    if zero_fraction > (0.5 if pruned else 0.0):
        for pack_bits in ((0, bits) if packable else (0,)):
            for levels, block in ((1, 0), (2, _BLOCK_WORDS)):
                zw = ZeroWords(word_size, levels, block, pack_bits, signed and pack_bits > 0)
                cands += [(zw, z)] if pruned else [(zw, z), (zw,)]
    if entropy is not None:
        cands.append((entropy,))
    return [Pipeline(c) for c in cands]


def _sample(words: np.ndarray, word_size: int) -> np.ndarray:
    nbytes = words.size
    if nbytes <= _SAMPLE_THRESHOLD:
        return words
    step = nbytes // _SAMPLE_SLICES
    align = word_size * _BLOCK_WORDS
    starts = [(i * step) // align * align for i in range(_SAMPLE_SLICES)]
    return np.concatenate([words[s:s + _SAMPLE_SLICE_BYTES] for s in starts])


def _screen(sample: np.ndarray, word_size: int) -> np.ndarray | None:
    """A quarter of ``sample`` (uint8) in :data:`_SCREEN_PIECES` evenly spread pieces of whole two-level-map
    blocks (for a sample of slices: every fourth slice), or None when that is under :data:`_SCREEN_MIN_BYTES`."""
    align = word_size * _BLOCK_WORDS
    piece = sample.size // (4 * _SCREEN_PIECES) // align * align
    if piece * _SCREEN_PIECES < _SCREEN_MIN_BYTES:
        return None
    starts = [(i * sample.size // _SCREEN_PIECES) // align * align for i in range(_SCREEN_PIECES)]
    return np.concatenate([sample[s:s + piece] for s in starts])


def _trial(pipeline: Pipeline, sample: memoryview) -> bytes | None:
    """``pipeline``'s payload of ``sample``, or None when it cannot code it (e.g. too many distinct words for
    an entropy coder)."""
    try:
        return pipeline.encode(sample)
    except ConfigError:
        return None


def choose_pipeline(words: "np.ndarray | HandedWords", word_size: int, bits: int, signed: bool, level: int = 3
                    ) -> tuple[Pipeline, bytes]:
    """Pick the pipeline that codes the word array ``words`` (uint8, 1-D) smallest; return it and its payload.

    ``bits`` is the significant width of a word (for packing), ``signed`` whether words are two's
    complement. Large arrays are judged on an evenly spread sample; the stored form always competes.
    From :data:`_ENTROPY_ONLY_WORDS` words on, the candidates are screened first on a quarter of the sample:
    those coding it over :data:`_SCREEN_MARGIN` times the smallest are not tried on the whole sample. This can
    change a tensor's chosen pipeline: a candidate that would have won on the whole sample (or come within 5 %
    of the winner) but codes the quarter over 5 % above the smallest is never tried, and a larger one is
    chosen. The stream stays valid and decodes to the same values; only its size can differ. On the MiniLM
    benchmark's tensors every choice is the same (the dropped candidates were 14-55 % larger; the streams
    hash equal to those chosen without screening). An array tried whole keeps the chosen trial's output as
    its payload. :class:`HandedWords` are let go once the chosen pipeline's first
    stage has coded them.
    """
    array = words.array if isinstance(words, HandedWords) else words
    if array is None:
        raise ConfigError("code words were handed on already")
    size = array.size
    as_words = array.view(WORD_DTYPES[word_size])
    n_words = as_words.size
    zero_fraction = float(np.count_nonzero(as_words == 0)) / n_words if n_words else 0.0
    sample = _sample(array, word_size)
    whole = sample is array  # then the chosen trial's output is the payload
    del as_words, array  # a handed tensor is referenced by ``words`` alone from here
    candidates = [p for p in _candidates(word_size, bits, signed, zero_fraction, level, n_words) if p.stages]
    screen = _screen(sample, word_size) if n_words >= _ENTROPY_ONLY_WORDS and len(candidates) > 1 else None
    if screen is not None:  # drop the candidates a quarter of the sample shows to be clearly larger
        sizes = [_trial(p, memoryview(screen)) for p in candidates]
        bound = _SCREEN_MARGIN * min([screen.size] + [len(t) for t in sizes if t is not None])
        candidates = [p for p, t in zip(candidates, sizes) if t is not None and len(t) <= bound]
        del screen, sizes
    chosen, best, best_size = Pipeline(), None, sample.size  # storing the words as they are always competes
    for p in candidates:  # in candidate order: the first of equal sizes wins
        trial = _trial(p, memoryview(sample))
        if trial is not None and len(trial) < best_size:
            chosen, best, best_size = p, trial, len(trial)
    del sample
    if whole and best is not None:
        if isinstance(words, HandedWords):
            words.take()  # let go as the encode would have
        payload = best
    else:
        del best
        payload = chosen.encode(words)
    if len(payload) > size:  # the sample misjudged: store the words (decoded back if they were let go)
        if isinstance(words, HandedWords):
            stored = np.empty(size, dtype=np.uint8)
            chosen.decode_into(memoryview(payload), stored, DEFAULT_LIMITS)
            del payload
            return Pipeline(), stored.tobytes()
        chosen, payload = Pipeline(), Pipeline().encode(words)
    return chosen, payload


@dataclass
class _Prepared:
    header: TensorHeader
    payload: bytes
    pipeline: Pipeline
    report: TensorReport
    words: bytes | None = None  #: the code words of a tensor small enough for a tensor group
    size: int = -1              #: bytes of the payload (when it was spooled to a file)
    acode_later: bool = False   #: stage 8 is tried on the unit once it is known not to be in a group
    spooled: int = -1           #: bytes of the payload in the spool file, when ``payload`` replaced them

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)


def _stage_configs(pipeline: Any) -> list[Mapping[str, Any]]:
    """A fixed pipeline option as a list of stage configs; anything else is a :class:`ConfigError`."""
    wrong = isinstance(pipeline, (str, bytes, Mapping)) or not isinstance(pipeline, Iterable)
    configs = [] if wrong else list(pipeline)
    if wrong or not all(isinstance(c, Mapping) for c in configs):
        raise ConfigError(f"pipeline must be a list of stage configs such as [{{'id': 'zstd'}}], got {pipeline!r}")
    return configs


class Encoder:
    """Reusable encoder settings.

    - ``bits`` / ``step``: quantize float tensors of rank >= 1 (see :mod:`nncodec.quant.uniform`);
      ``bits_1d`` (default 16) and ``step / 256`` apply to rank-1 tensors (biases, norms). Not both.
    - ``rel_step``: instead, a uniform step of ``rel_step * std(tensor)`` per tensor (``/ 16`` for rank 1),
      multiplied by the factor of ``step_scales`` for its exact name, else of the first matching glob pattern;
      with an entropy stage this is the rate-distortion-efficient choice (about ``log2(1/rel_step) + 2``
      bits/param). :func:`nncodec.calibrate_step_scales` measures factors that put the bits where the
      model's output needs them.
    - ``lossless``: glob patterns of tensor names kept exact even when quantizing.
    - ``level``: zstd level of the entropy stage (-7..22; 3 is fast, 19 smallest).
    - ``metadata``: str -> str pairs stored in the stream header.
    - ``progress``: show a tqdm bar (None: only on a terminal for inputs over 64 MiB).
    - ``pipeline``: stage configs (``[{"id": "zero_words", "word_size": 1, ...}, {"id": "zstd"}]``)
      applied to every tensor instead of choosing the smallest; for experts and conformance vectors.
    - ``limits``: the decoder limits the stream must respect (default: the decoder's defaults). A name,
      rank, size or metadata over them is refused with :class:`LimitExceededError` at encode time, so a
      stream that encodes also decodes with the same limits.
    - ``group_tensors``: store small tensors (at most 4096 elements: biases, norms, batch-norm statistics;
      up to 65536 while their code words total at most 256 KiB) together in tensor-group units (format 1.4,
      FORMAT.md §14), one or several split by kind (§14.5), when that makes the stream smaller
      (None, the default: unless a fixed ``pipeline`` is given; True with one is a :class:`ConfigError`).
      False: one unit per tensor, as before 1.4 (a stream any 1.0–1.3 decoder reads, and each
      tensor read alone by ``nncodec.open``; grouped tensors are decoded with their group).
    - ``adaptive_coding``: let the encoder choose the adaptive arithmetic coding stage (id 8, format 1.6,
      FORMAT.md §16) for a tensor unit when it codes it in at most 0.95 times the bytes of the best other
      pipeline, and for tensor groups' data when the stream's tensor bytes are then at most 0.98 times those
      without it (default True). False: no stage 8, so the stream needs no format 1.6 decoder; with a fixed
      ``pipeline`` naming ``acode`` a :class:`ConfigError`.

    Encoding to a file (:meth:`encode` with ``dst``, :meth:`encode_file`) streams tensor by tensor and
    writes the same bytes as encoding to memory.

    Thread-safe: an instance holds settings only.
    """

    def __init__(self, *, bits: int | None = None, step: float | None = None, bits_1d: int = 16,
                 lossless: Iterable[str] = (), level: int = 3, metadata: Mapping[str, str] | None = None,
                 progress: bool | None = None, pipeline: "Sequence[dict[str, Any]] | None" = None,
                 rel_step: float | None = None, step_scales: Mapping[str, float] | None = None,
                 limits: Limits = DEFAULT_LIMITS, group_tensors: bool | None = None, adaptive_coding: bool = True):
        if not isinstance(limits, Limits):
            raise ConfigError(f"limits must be an nncodec.Limits, got {type(limits).__name__}")
        if sum(v is not None for v in (bits, step, rel_step)) > 1:
            raise ConfigError("give one of bits, step and rel_step")
        if rel_step is not None and not (isinstance(rel_step, (int, float)) and 0 < rel_step < 1e6):
            raise ConfigError(f"rel_step must be a positive number, got {rel_step!r}")
        if isinstance(step_scales, str):
            raise ConfigError(f"step_scales={step_scales!r} needs calibration= batches (a torch module encode with "
                              "rate-distortion options); else give a dict of factors" if step_scales == "fisher"
                              else f"step_scales must be a dict of factors or 'fisher', got {step_scales!r}")
        if step_scales and not all(isinstance(v, (int, float)) and v > 0 for v in step_scales.values()):
            raise ConfigError("step_scales must map glob patterns to positive numbers")
        if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 16):
            raise ConfigError(f"bits must be an integer 1..16, got {bits!r}")
        if not (isinstance(bits_1d, int) and 1 <= bits_1d <= 16):
            raise ConfigError(f"bits_1d must be an integer 1..16, got {bits_1d!r}")
        if step is not None and not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            raise ConfigError(f"step must be a positive number, got {step!r}")
        if not isinstance(group_tensors, (bool, type(None))):
            raise ConfigError(f"group_tensors must be True or False, got {group_tensors!r}")
        if group_tensors and pipeline is not None:
            raise ConfigError("group_tensors does not apply with a fixed pipeline: it codes every tensor in a unit "
                              "of its own")
        if isinstance(lossless, str):
            lossless = [lossless]
        if not isinstance(lossless, Iterable):
            raise ConfigError(f"lossless must be a glob pattern or a list of them (str), got {lossless!r}")
        lossless = tuple(lossless)
        if not all(isinstance(p, str) for p in lossless):
            raise ConfigError(f"lossless must be a glob pattern or a list of them (str), got {lossless!r}")
        if not isinstance(adaptive_coding, bool):
            raise ConfigError(f"adaptive_coding must be True or False, got {adaptive_coding!r}")
        if pipeline is not None:
            pipeline = _stage_configs(pipeline)
        Zstd(level)  # validates the level
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ConfigError("metadata keys and values must be strings")
        self.bits, self.step, self.bits_1d = bits, step, bits_1d
        self.rel_step, self.step_scales = rel_step, dict(step_scales or {})
        self.lossless = tuple(lossless)
        self.level = level
        self.metadata = meta
        self.limits = limits
        self.group_tensors = group_tensors is not False and pipeline is None
        self.progress = progress
        self.pipeline = None if pipeline is None else Pipeline(tuple(stage_from_config(c) for c in pipeline))
        self.adaptive_coding = adaptive_coding
        if not adaptive_coding and self.pipeline is not None and any(
                isinstance(st, Acode) for st in self.pipeline.stages):
            raise ConfigError("the pipeline names stage acode while adaptive_coding=False")

    # -- per tensor -------------------------------------------------------------------------
    def _quantizes(self, name: str, dtype: DType, shape: tuple[int, ...]) -> bool:
        if self.bits is None and self.step is None and self.rel_step is None:
            return False
        if not dtype.is_float or len(shape) == 0 or math.prod(shape) == 0:
            return False
        return not any(fnmatch.fnmatchcase(name, pat) for pat in self.lossless)

    def _quantize(self, name: str, values: np.ndarray) -> UniformCodes:
        if self.rel_step is not None:
            std = _std(values)
            factor = self.step_scales.get(name) or next(
                (f for pat, f in self.step_scales.items() if fnmatch.fnmatchcase(name, pat)), 1.0)
            step = self.rel_step * (std if std > 0 and math.isfinite(std) else 1.0) * factor
            return quantize_by_step(values, step / 16 if values.ndim == 1 else step, name=name)
        if self.step is not None:
            step = self.step / 256 if values.ndim == 1 else self.step
            return quantize_by_step(values, step, name=name)
        bits = self.bits_1d if values.ndim == 1 else self.bits
        return quantize_by_bits(values, bits, name=name)  # type: ignore[arg-type]

    def grid(self, name: str, value: "tuple[np.ndarray, DType]") -> UniformCodes | None:
        """The plain (nearest) quantization of a ``(storage, dtype)`` tensor under these settings, or None
        when it stays lossless; other quantizers choose other codes on its grid."""
        storage, dtype = value
        if not self._quantizes(name, dtype, tuple(int(d) for d in storage.shape)):
            return None
        return self._quantize(name, bfloat16_bits_to_float32(storage) if dtype.name == "bfloat16" else storage)

    def code_words(self, name: str, value: "tuple[np.ndarray, DType] | CodedTensor") -> tuple:
        """``(dtype, shape, descriptor, code words as bytes, word size, bits, signed, max error, rms error)``
        of one tensor under these settings, before any stage."""
        max_err = rms_err = 0.0
        if isinstance(value, CodedTensor):
            storage, dtype, desc = value.codes, value.dtype, value.quant
            shape = tuple(int(d) for d in storage.shape)
            words = _contiguous(storage.astype(desc.code_dtype.storage, copy=False)).reshape(-1).view(np.uint8)
            word_size = desc.code_dtype.itemsize
            signed = desc.code_dtype.storage.kind == "i" and bool(storage.size) and int(storage.min()) < 0
            bits = desc.bits if 0 < desc.bits <= 8 * word_size else 8 * word_size
            return dtype, shape, desc, words, word_size, bits, signed, 0.0, 0.0
        storage, dtype = value
        shape = tuple(int(d) for d in storage.shape)
        if self._quantizes(name, dtype, shape):
            values = bfloat16_bits_to_float32(storage) if dtype.name == "bfloat16" else storage
            q = self._quantize(name, values)
            code_dtype = dtype_by_name(q.codes.dtype.name)
            scheme = SCHEME_BINARY if q.binary else SCHEME_UNIFORM
            desc = QuantDescriptor(scheme=scheme, code_dtype=code_dtype, sign_bits=1, exponent_bits=0,
                                   mantissa_bits=q.bits - 1, bits=q.bits, per_channel=q.per_channel,
                                   axis=0, scales=q.scales)
            words = _contiguous(q.codes).reshape(-1).view(np.uint8)
            word_size, bits, signed = code_dtype.itemsize, q.bits, not q.binary
            max_err, rms_err = _errors(values, q.codes, desc, dtype)
        else:
            desc = QuantDescriptor.lossless(dtype)
            words = _contiguous(storage).reshape(-1).view(np.uint8)
            word_size = dtype.itemsize
            signed = dtype.is_int and dtype.storage.kind == "i"
            bits = 1 if dtype.name == "bool" else 8 * word_size
        return dtype, shape, desc, words, word_size, bits, signed, max_err, rms_err

    def _finish(self, name: str, dtype: DType, shape: tuple[int, ...], desc: QuantDescriptor,
                words: "np.ndarray | HandedWords", word_size: int, bits: int, signed: bool, max_err: float,
                rms_err: float, *, lead: Stage | None, group_bound: int) -> _Prepared:
        numel = math.prod(shape)
        kept = None
        if lead is not None:  # a stage the codes need first; the pipeline is chosen for its output, no group
            taken = words.take() if isinstance(words, HandedWords) else words
            words = HandedWords(np.frombuffer(lead.encode(memoryview(taken)), dtype=np.uint8))
            del taken
        elif self.group_tensors and numel <= group_bound:
            kept = bytes(words.array if isinstance(words, HandedWords) else words)  # type: ignore[arg-type]
        adaptive = None
        eligible = self.adaptive_coding and self.pipeline is None and lead is None and desc.scheme != SCHEME_NONE
        acode_later = eligible and kept is not None  # most such tensors end up in a group: tried in _layout if not
        if eligible and not acode_later:
            adaptive = _acode_unit(words.array if isinstance(words, HandedWords) else words, desc,
                                   self.limits.max_adaptive_words)
        if self.pipeline is not None:
            _check_adaptive_words(name, self.pipeline, words.array if isinstance(words, HandedWords) else words,
                                  self.limits)
            pipeline, payload = self.pipeline, self.pipeline.encode(words)
        else:
            pipeline, payload = choose_pipeline(words, word_size, bits, signed, self.level)
        if adaptive is not None and len(adaptive[1]) <= _ACODE_UNIT_MARGIN * len(payload):
            pipeline, payload = adaptive
        del adaptive
        if lead is not None:
            pipeline = Pipeline((lead, *pipeline.stages))
        header = TensorHeader(name, dtype, shape, desc, pipeline.entries())
        unit_bytes = UNIT_HEADER_SIZE + len(header.to_bytes()) + len(payload)
        report = TensorReport(name, dtype.name, list(shape), desc.scheme_name,
                              desc.bits if desc.scheme != SCHEME_NONE else 8 * dtype.itemsize,
                              [st.codec_id for st in pipeline.stages], unit_bytes,
                              8.0 * unit_bytes / numel if numel else None, max_err, rms_err)
        return _Prepared(header, payload, pipeline, report, kept, acode_later=acode_later)

    def _check_tensor_limits(self, name: str, array: np.ndarray) -> None:
        """Refuse what the decoder (with ``self.limits``) would refuse, and what the format cannot hold."""
        name_bytes = len(name.encode("utf-8"))
        if name_bytes > 0xFFFF:
            raise ConfigError(f"tensor name {name[:40]!r}... is longer than 65535 UTF-8 bytes")
        self.limits.check(f"name length of tensor {name[:40]!r}", name_bytes, "max_name_bytes")
        if array.ndim > 255:
            raise ConfigError(f"tensor {name!r} has rank {array.ndim}, at most 255 is encodable")
        self.limits.check(f"rank of tensor {name!r}", array.ndim, "max_ndim")
        span = math.prod(max(int(d), 1) for d in array.shape)
        self.limits.check(f"element count of tensor {name!r} (zero dimensions counted as 1)", span,
                          "max_tensor_elements")

    # -- whole stream -----------------------------------------------------------------------
    def _plan(self, tensors: Mapping[str, Any], topology: Mapping[str, Any] | None) -> "_Plan":
        """Check the whole input against the format and ``self.limits``, find tied tensors; no coding.

        The values are looked at together here (tied tensors are found by their memory) and let go before
        coding, which asks the mapping again for one value at a time."""
        if not isinstance(tensors, Mapping):
            raise ConfigError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
        for name in tensors:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"tensor names must be non-empty strings, got {name!r}")
        values = {name: _as_encodable(name, value) for name, value in tensors.items()}
        for name in values:
            self._check_tensor_limits(name, _array_of(values[name]))
        aliases = find_aliases(values)
        names = sorted(n for n in values if n not in aliases)
        meta_bytes = len(StreamHeader(0, self.metadata).to_bytes()) - STREAM_HEADER.size
        self.limits.check("stream metadata size", meta_bytes, "max_metadata_bytes")
        topo = None
        if topology is not None:
            topo = json.dumps(topology, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            self.limits.check("topology size", len(topo), "max_metadata_bytes")
        decoded = sum(_decoded_bytes(values[n]) for n in names)
        self.limits.check("total decoded bytes", decoded, "max_total_decoded_bytes")
        # stream header, tensors, end of stream; a model parameter set and a topology unit at most
        self.limits.check("unit count", len(names) + 2 + (topology is not None) + (len(names) >= 2) + bool(aliases),
                          "max_units")
        return _Plan(names, aliases, topo, sum(_array_of(values[n]).nbytes for n in names))

    def _coded(self, tensors: Mapping[str, Any], plan: "_Plan") -> Iterator[_Prepared]:
        """Each tensor coded, in canonical order (sorted names), one at a time, with a progress bar."""
        show = self.progress if self.progress is not None else (plan.input_bytes > _PROGRESS_BYTES
                                                                 and sys.stderr.isatty())
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=plan.input_bytes, unit="B", unit_scale=True, desc="encode", leave=False)
        kept_larger = 0
        for name in plan.names:
            value = _as_encodable(name, tensors[name])
            nbytes = _array_of(value).nbytes
            dtype, shape, desc, words, *rest = self.code_words(name, value)
            lead = value.lead if isinstance(value, CodedTensor) else None
            # the input and its code words are let go as soon as the first stage has coded them: with a
            # mapping that loads tensors on access, the entropy stage runs without the tensor resident
            del value
            handed = HandedWords(words)
            del words
            # the words of tensors up to _GROUP_SMALL elements are kept for a tensor group, those of larger ones
            # (up to _GROUP_BOUNDS[-1]) only while they add up to at most _GROUP_SPLIT_BYTES, in name order (a
            # tensor that would go over is skipped, later smaller ones may still fit): memory stays bounded
            mid = math.prod(shape) > _GROUP_SMALL
            fits = handed.array is not None and kept_larger + handed.array.nbytes <= _GROUP_SPLIT_BYTES
            bound = _GROUP_BOUNDS[-1] if not mid or fits else _GROUP_SMALL
            p = self._finish(name, dtype, shape, desc, handed, *rest, lead=lead, group_bound=bound)
            if p.words is not None and mid:
                kept_larger += len(p.words)
            yield p
            del p
            if bar is not None:
                bar.update(nbytes)
        if bar is not None:
            bar.close()

    def _preamble(self, plan: "_Plan", layout: "_Layout") -> list[bytes]:
        """The file header, the units before the tensors and the tensor-group unit, if any."""
        default = layout.default
        # the oldest version that holds the stream
        minor = FORMAT_MINOR_TENSOR_GROUP if layout.groups else FORMAT_MINOR_ALIASES if plan.aliases else FORMAT_MINOR
        minor = max(minor, layout.stage_minor)
        chunks = [FILE_HEADER.pack(MAGIC, FORMAT_MAJOR, minor),
                  frame_unit(UNIT_STREAM_HEADER, StreamHeader(len(plan.names), self.metadata,
                                                              version=(FORMAT_MAJOR, minor)).to_bytes())]
        if default is not None:
            chunks.append(frame_unit(UNIT_MODEL_PARAMETER_SET, default.to_bytes()))
        if plan.topology is not None:
            chunks.append(frame_unit(UNIT_TOPOLOGY, plan.topology, critical=False))
        if plan.aliases:
            chunks.append(frame_unit(UNIT_TENSOR_ALIASES, TensorAliases(plan.aliases).to_bytes()))
        for group in layout.groups:
            self.limits.check("unit payload length of a tensor group", len(group), "max_unit_bytes")
            chunks.append(frame_unit(UNIT_TENSOR_GROUP, group))
        return chunks

    def _layout(self, coded: "list[_Prepared]") -> "_Layout":
        """Which small tensors go into tensor-group units, and in how many: the member set (tensors up to one
        of ``_GROUP_BOUNDS`` elements) and its split into groups (:func:`_split_groups`) that make the
        stream smallest, or none; with or without stage 8 on the groups' data and on the units of tensors kept
        for a group (``acode_later``, :meth:`_acode_units`). When the stream would need format 1.6 for these
        alone (no tensor unit coded before uses stage 8), they are kept only when the stream's tensor bytes are
        then at most :data:`_ACODE_GROUP_MARGIN` times and at least :data:`_ACODE_MIN_GAIN` bytes under those
        of the best layout without them."""
        # group payloads (and their format minor) by stage 8 tried and member names, across bounds
        cache: dict[tuple, tuple[bytes, int] | None] = {}
        acoded: dict[str, "tuple[Pipeline, bytes] | None"] = {}  # stage 8 codings of units, by name
        # with few tensors kept for a group, stage 8 on their units is weighed in every layout compared
        eager = sum(p.acode_later for p in coded) <= _ACODE_EAGER_UNITS
        best = self._smallest_layout(coded, cache, self.adaptive_coding, acoded if eager else None)
        layouts = [best]
        if best.group_minor >= FORMAT_MINOR_ACODE:
            layouts.append(self._smallest_layout(coded, cache, False, None))  # the payloads are in the cache
        options: list[tuple[int, int, _Layout, list[_Prepared]]] = []  # tensor bytes, minor, layout, units
        plain = None  # the option without stage-8 groups and re-coded units
        for layout in reversed(layouts):
            rest = [p for p in coded if p.header.name not in layout.members]
            variants = [rest]
            if any(p.acode_later for p in rest):
                variants.append(self._acode_units(rest, acoded)[0])
            for units in variants:
                default = _default_pipeline([p.pipeline for p in units])
                cost = sum(UNIT_HEADER_SIZE + len(g) for g in layout.groups) + _units_cost(units, default)
                minor = max(layout.group_minor, _stage_minor(*(p.pipeline for p in units)))
                options.append((cost, minor, dataclasses.replace(layout, default=default, stage_minor=minor), units))
                if plain is None:
                    plain = options[-1]
        assert plain is not None
        cost, minor, chosen, units = min(options, key=lambda o: o[:2])  # the first of equal costs and minors
        if minor >= FORMAT_MINOR_ACODE > plain[1] and (cost > _ACODE_GROUP_MARGIN * plain[0]
                                                         or plain[0] - cost < _ACODE_MIN_GAIN):
            cost, minor, chosen, units = plain
        by_name = {p.header.name: p for p in coded}
        for p in units:  # the units re-coded by stage 8 (copies) replace theirs
            if p is not by_name[p.header.name]:
                _adopt(by_name[p.header.name], p)
        if chosen.groups:
            _member_reports(by_name, chosen)
        return chosen

    def _acode_units(self, rest: "list[_Prepared]", acoded: "dict[str, tuple[Pipeline, bytes] | None]"
                     ) -> "tuple[list[_Prepared], int]":
        """``rest`` (the tensors in units of their own) with stage 8 tried on the units of those kept for a
        group (``acode_later``), in name order: one takes it (a copy, ``spooled`` set) when its payload is then
        at most :data:`_ACODE_UNIT_MARGIN` times and the tensor units' bytes (headers and model parameter set
        included) get smaller; and those bytes. ``acoded`` keeps the stage-8 codings by name across calls."""
        units = list(rest)
        cost = _units_cost(units, _default_pipeline([p.pipeline for p in units]))
        for i, p in enumerate(rest):
            if not p.acode_later:  # (its words are kept: acode_later is only set with them)
                continue
            name = p.header.name
            if name not in acoded:
                acoded[name] = _acode_unit(np.frombuffer(p.words, dtype=np.uint8),  # type: ignore[arg-type]
                                           p.header.quant, self.limits.max_adaptive_words)
            adaptive = acoded[name]
            if adaptive is None or len(adaptive[1]) > _ACODE_UNIT_MARGIN * p.size:
                continue
            pipeline, payload = adaptive
            h = p.header
            trial = units.copy()
            trial[i] = dataclasses.replace(p, pipeline=pipeline, payload=payload, size=len(payload),
                                           spooled=p.size,  # p is as coded (the spool holds its payload)
                                           header=TensorHeader(h.name, h.dtype, h.shape, h.quant, pipeline.entries()))
            trial_cost = _units_cost(trial, _default_pipeline([q.pipeline for q in trial]))
            if trial_cost < cost:
                units, cost = trial, trial_cost
        return units, cost

    def _smallest_layout(self, coded: "list[_Prepared]", cache: "dict[tuple, tuple[bytes, int] | None]", adaptive: bool,
                         acoded: "dict[str, tuple[Pipeline, bytes] | None] | None") -> "_Layout":
        """The layout of :meth:`_layout` making the tensor bytes smallest, with stage 8 tried on the groups'
        data or not (``adaptive``; its ``stage_minor`` is left for :meth:`_layout` to set); with ``acoded`` (and
        ``adaptive``), the units of tensors kept for a group count as :meth:`_acode_units` codes them."""
        def units_cost(units: "list[_Prepared]", default: Pipeline | None) -> int:
            if adaptive and acoded is not None and any(p.acode_later for p in units):
                return self._acode_units(units, acoded)[1]  # with the same default
            return _units_cost(units, default)

        default = _default_pipeline([p.pipeline for p in coded])
        best = _Layout((), default)
        best_cost = units_cost(coded, default)
        small = [p for p in coded if p.words is not None]
        tried: set[int] = set()
        for bound in _GROUP_BOUNDS:
            members = _bound_members(small, bound)
            if not members or len(members) in tried:
                continue
            tried.add(len(members))
            # the single group of bounds up to 4096 elements is what the first 1.4 encoder wrote
            layouts = _split_groups(members, self.limits, cache, single=bound <= _GROUP_SMALL, adaptive=adaptive)
            names = frozenset(p.header.name for p in members)
            rest = [p for p in coded if p.header.name not in names]
            rest_default = _default_pipeline([p.pipeline for p in rest])
            rest_cost = units_cost(rest, rest_default)
            for candidate in layouts:  # the first of equal costs wins: the single, un-narrowed group
                if candidate.cost + rest_cost < best_cost:
                    best = _Layout(tuple(candidate.payloads), rest_default, parts=candidate.parts,
                                   narrow=candidate.narrow, group_minor=candidate.minor)
                    best_cost = candidate.cost + rest_cost
        return best

    def encode_units(self, tensors: "Mapping[str, tuple[np.ndarray, DType] | CodedTensor]",
                     topology: Mapping[str, Any] | None = None) -> tuple[list[bytes], EncodeReport]:
        """Encode ``{name: (storage array, dtype)}`` into the stream's byte chunks and a report.

        Units are in canonical order (tensors sorted by name), so equal input gives equal bytes.
        """
        start = time.perf_counter()
        plan = self._plan(tensors, topology)
        prepared = list(self._coded(tensors, plan))
        layout = self._layout(prepared)
        default = layout.default
        chunks = self._preamble(plan, layout)
        report = EncodeReport(aliases=dict(plan.aliases), grouped=sorted(layout.members))
        for p in prepared:
            if p.header.name in layout.members:
                report.tensors.append(p.report)
                continue
            header = _tensor_header(p.header, p.pipeline, default, p.report, len(p.payload))
            payload = header.to_bytes() + p.payload
            self.limits.check(f"unit payload length of tensor {header.name!r}", len(payload), "max_unit_bytes")
            chunks.append(frame_unit(UNIT_TENSOR, payload))
            report.tensors.append(p.report)
        chunks.append(frame_unit(UNIT_END, EndOfStream(len(chunks) - 1, len(prepared)).to_bytes()))
        report.total_bytes = sum(len(c) for c in chunks)
        report.seconds = time.perf_counter() - start
        log.info("encoded %d tensors into %d bytes in %.2f s", len(prepared), report.total_bytes, report.seconds)
        return chunks, report

    def encode_file(self, tensors: "Mapping[str, tuple[np.ndarray, DType] | CodedTensor]",
                    dst: str | os.PathLike[str], topology: Mapping[str, Any] | None = None) -> EncodeReport:
        """Encode into the file ``dst`` one tensor at a time: the same bytes as :meth:`encode_units`.

        Each tensor's payload goes to a spool file in ``dst``'s folder as soon as it is coded (the model
        parameter set, which precedes the tensor units, depends on every tensor's pipeline); the units are
        then framed from the spool into a temporary file renamed to ``dst`` at the end. Memory: the
        tensor being coded and its coding buffers, never the whole stream; disk: the payloads twice.
        """
        import tempfile  # only here: keeps `import nncodec` light for decoders

        start = time.perf_counter()
        dst = Path(dst)
        plan = self._plan(tensors, topology)
        spooled: list[_Prepared] = []  # without their payloads, which are in the spool file
        with atomic_file(dst) as out, \
                tempfile.TemporaryFile(dir=dst.parent or ".", prefix=f".{dst.name}.", suffix=".spool") as spool:
            for p in self._coded(tensors, plan):
                spool.write(p.payload)
                spooled.append(dataclasses.replace(p, payload=b"", size=len(p.payload)))
                del p
            layout = self._layout(spooled)
            default = layout.default
            spool.seek(0)
            report = EncodeReport(aliases=dict(plan.aliases), grouped=sorted(layout.members))
            chunks = self._preamble(plan, layout)
            for chunk in chunks:
                out.write(chunk)
            for p in spooled:
                header, pipeline, tensor_report, size = p.header, p.pipeline, p.report, p.size
                if header.name in layout.members:
                    spool.seek(size, os.SEEK_CUR)
                    report.tensors.append(tensor_report)
                    continue
                header = _tensor_header(header, pipeline, default, tensor_report, size)
                head = header.to_bytes()
                self.limits.check(f"unit payload length of tensor {header.name!r}", len(head) + size,
                                  "max_unit_bytes")
                if p.spooled >= 0:  # coded again after the layout (stage 8): written from memory
                    spool.seek(p.spooled, os.SEEK_CUR)
                    out.write(frame_unit(UNIT_TENSOR, head + p.payload))
                else:
                    _copy_unit(out, UNIT_TENSOR, head, spool, size)
                report.tensors.append(tensor_report)
            units = len(chunks) - 1 + len(spooled) - len(layout.members)
            out.write(frame_unit(UNIT_END, EndOfStream(units, len(spooled)).to_bytes()))
            report.total_bytes = out.tell()
        report.seconds = time.perf_counter() - start
        log.info("encoded %d tensors into %s (%d bytes) in %.2f s", len(spooled), dst, report.total_bytes,
                 report.seconds)
        return report

    def encode(self, tensors: "Mapping[str, tuple[np.ndarray, DType] | CodedTensor]", dst: str | os.PathLike[str] | None = None,
               topology: Mapping[str, Any] | None = None) -> tuple[bytes | Path, EncodeReport]:
        """Encode and return ``(bytes, report)``, or ``(path, report)`` after a streamed, atomic write to ``dst``."""
        if dst is None:
            chunks, report = self.encode_units(tensors, topology)
            return b"".join(chunks), report
        return Path(dst), self.encode_file(tensors, dst, topology)


@dataclass(frozen=True)
class _Plan:
    """What :meth:`Encoder._plan` found: the names to code (sorted), tied tensors, the topology's JSON."""

    names: list[str]
    aliases: dict[str, str]
    topology: bytes | None
    input_bytes: int


@dataclass(frozen=True)
class _Layout:
    """Where the coded tensors go: the tensor-group units' payloads (none: no group), the names in each, and
    the model parameter set's pipeline (of the tensors in their own units)."""

    groups: tuple[bytes, ...]
    default: Pipeline | None
    stage_minor: int = 0  #: the newest format minor version a used stage needs
    parts: tuple[tuple[str, ...], ...] = ()  #: each group's member names, in the order of ``groups``
    narrow: bool = False  #: the groups store narrowed codes (:func:`_narrowest_codes`)
    group_minor: int = FORMAT_MINOR  #: the newest format minor version a stage of the groups' pipelines needs

    @functools.cached_property
    def members(self) -> frozenset[str]:
        """The names in all groups."""
        return frozenset(name for part in self.parts for name in part)


def _bound_members(small: "list[_Prepared]", bound: int) -> "list[_Prepared]":
    """The group members for a bound (ascending names): every tensor of ``small`` (those whose words were
    kept) up to ``_GROUP_SMALL`` elements; for larger bounds, tensors of more elements up to ``bound`` are
    added in name order while all members' words add up to at most :data:`_GROUP_SPLIT_BYTES` (one that would
    go over is skipped). No members for a larger bound when the small ones alone are over it."""
    if bound <= _GROUP_SMALL:
        return [p for p in small if math.prod(p.header.shape) <= bound]
    members = [p for p in small if math.prod(p.header.shape) <= _GROUP_SMALL]
    total = sum(len(p.words) for p in members)
    if total > _GROUP_SPLIT_BYTES:
        return []
    for p in small:
        numel = math.prod(p.header.shape)
        if _GROUP_SMALL < numel <= bound and total + len(p.words) <= _GROUP_SPLIT_BYTES:
            members.append(p)
            total += len(p.words)
    return sorted(members, key=lambda p: p.header.name)


def _units_cost(coded: "list[_Prepared]", default: Pipeline | None) -> int:
    """Bytes of the tensor units of ``coded`` and of the model parameter set holding ``default``."""
    total = UNIT_HEADER_SIZE + len(default.to_bytes()) if default is not None else 0
    for p in coded:
        total += UNIT_HEADER_SIZE + len(_unit_header(p.header, p.pipeline, default).to_bytes()) + p.size
    return total


def _adopt(p: _Prepared, coded: _Prepared) -> None:
    """Give ``p`` the stage-8 coding of its copy ``coded`` (:meth:`Encoder._acode_units`): pipeline, payload
    (kept in memory; ``spooled`` the bytes of the one spooled) and header, and update its report."""
    p.pipeline, p.payload, p.size, p.spooled, p.header = coded.pipeline, coded.payload, coded.size, coded.spooled, \
        coded.header
    p.report.pipeline = [st.codec_id for st in p.pipeline.stages]
    p.report.unit_bytes = UNIT_HEADER_SIZE + len(p.header.to_bytes()) + p.size
    numel = math.prod(p.header.shape)
    p.report.bits_per_param = 8.0 * p.report.unit_bytes / numel if numel else None


def _smallest(raw: bytes, level: int = _GROUP_LEVEL) -> tuple[Pipeline, bytes]:
    """The smallest coding of a byte string among the candidate pipelines (stored included), zstd at ``level``."""
    if not raw:
        return Pipeline(), b""
    return choose_pipeline(np.frombuffer(raw, dtype=np.uint8), 1, 8, False, level)


def _narrowest_codes(header: TensorHeader, words: bytes) -> tuple[TensorHeader, bytes]:
    """A quantized tensor's integer code words in the narrowest integer type that holds them (int8, uint8,
    int16, ...), with its descriptor's ``code_dtype`` changed to match; anything else unchanged.

    Lossless: integer codes map to values by their value alone (FORMAT.md §5.1), so the decoded tensor is the
    same. Kept when the descriptor's ``bits`` would exceed the narrower word, or the codes are not integers."""
    desc = header.quant
    code = desc.code_dtype
    if desc.scheme in (SCHEME_NONE, SCHEME_FLOAT_CAST) or not code.is_int or code.itemsize == 1 or not words:
        return header, words
    codes = np.frombuffer(words, dtype=code.storage)
    lo, hi = int(codes.min()), int(codes.max())
    for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32"):
        narrow = dtype_by_name(name)
        if narrow.itemsize >= code.itemsize or desc.bits > 8 * narrow.itemsize:
            continue
        info = np.iinfo(narrow.storage)
        if info.min <= lo and hi <= info.max:
            quant = dataclasses.replace(desc, code_dtype=narrow)
            return (TensorHeader(header.name, header.dtype, header.shape, quant, header.pipeline),
                    codes.astype(narrow.storage).tobytes())
    return header, words


def _group_payload(members: "list[_Prepared]", limits: Limits, narrow: bool,
                   adaptive: bool = True) -> "tuple[tuple[bytes, int] | None, tuple[bytes, int] | None]":
    """The tensor-group payloads of ``members`` (ascending names, FORMAT.md §14), each with the newest format
    minor version its pipelines' stages need: the smallest, and the smallest without stage 8 (the same when
    stage 8 is not smaller or not tried); None when its directory would
    be over ``max_metadata_bytes`` or the payload over ``max_unit_bytes``. A member whose words are all equal
    (at least 2) is stored as one.
    With ``narrow`` (the split groups), quantized members' codes are stored in the narrowest integer type
    holding them (:func:`_narrowest_codes`), and data over :data:`_SPLIT_LEVEL_BYTES` is tried with zstd at
    :data:`_SPLIT_LEVEL` (faster; the single group, which always competes, keeps level 19). With ``adaptive``,
    stage 8 is tried on the data (:func:`_acode_smallest`)."""
    entries, data = _group_entries(members, narrow)
    directory = directory_bytes(entries)
    if len(directory) > limits.max_metadata_bytes:
        return None, None
    dir_pipeline, dir_coded = _smallest(directory)
    raw = b"".join(data)
    data_pipeline, data_coded = _smallest(raw, _SPLIT_LEVEL if narrow and len(raw) > _SPLIT_LEVEL_BYTES
                                          else _GROUP_LEVEL)
    plain = GroupUnit.to_bytes(len(entries), len(directory), dir_pipeline.to_bytes(), dir_coded,
                               data_pipeline.to_bytes(), data_coded)
    plain_fits = (plain, _stage_minor(dir_pipeline, data_pipeline)) if len(plain) <= limits.max_unit_bytes else None
    best = _acode_smallest(entries, data, raw, limits.max_adaptive_words) if adaptive else None
    if best is None or len(best[0].to_bytes()) + len(best[1]) >= len(data_pipeline.to_bytes()) + len(data_coded):
        return plain_fits, plain_fits
    payload = GroupUnit.to_bytes(len(entries), len(directory), dir_pipeline.to_bytes(), dir_coded,
                                 best[0].to_bytes(), best[1])
    return ((payload, _stage_minor(dir_pipeline, best[0])) if len(payload) <= limits.max_unit_bytes
            else plain_fits), plain_fits


def _stage_minor(*pipelines: Pipeline) -> int:
    """The newest format minor version a stage of ``pipelines`` needs (at least ``FORMAT_MINOR``)."""
    return max([FORMAT_MINOR, *(st.since_minor for pipeline in pipelines for st in pipeline.stages)])


#: segment type of a group member's code words (FORMAT.md §16.2) by code dtype; others are coded as raw bytes
_ACODE_KINDS = {name: SEGMENT_TYPES[name] for name in ("int8", "uint8", "int16", "uint16")}


def _acode_offset(words: np.ndarray) -> int:
    """The offset a segment's integer ``words`` are coded around: their median when that costs fewer estimated
    bits (a flag per non-zero word, two per bit of magnitude) than 0, else 0."""
    if words.size < 4:
        return 0
    median = int(np.median(words))

    def cost(offset: int) -> float:
        d = np.abs(words.astype(np.int64) - offset)
        return float(np.count_nonzero(d) + 2 * np.log2(1 + d).sum())

    return median if median and cost(median) < cost(0) else 0


def _check_adaptive_words(name: str, pipeline: Pipeline, words: "np.ndarray | bytes", limits: Limits) -> None:
    """:class:`LimitExceededError` when a stage 8 of the fixed ``pipeline`` would code more words of tensor
    ``name`` than ``limits.max_adaptive_words`` (a stream its decoder would refuse). Only the stages before the
    last stage 8 are run."""
    last = max((i for i, st in enumerate(pipeline.stages) if isinstance(st, Acode)), default=-1)
    data: Any = words
    for st in pipeline.stages[:last + 1]:
        if isinstance(st, Acode):
            n_words = sum(seg.count for seg in st._segments_for(memoryview(data).nbytes))
            limits.check(f"tensor {name!r}: the words its pipeline's acode stage codes", n_words,
                         "max_adaptive_words")
        if st is not pipeline.stages[last]:
            data = st.encode(memoryview(data))


def _acode_unit(words: np.ndarray, desc: QuantDescriptor, max_words: int) -> "tuple[Pipeline, bytes] | None":
    """Stage 8's smallest coding of a tensor unit's code ``words`` (uint8 view) as one segment of their type
    (shifts :data:`_ACODE_SHIFTS`, K 8); None when the codes are not int8 / uint8 / int16 / uint16, are over
    :data:`_ACODE_UNIT_MAX_WORDS` or ``max_words`` (the decoder's ``max_adaptive_words``) words or empty, or the
    coder is not compiled."""
    name = desc.code_dtype.name
    if name not in _ACODE_KINDS or not acode_compiled():
        return None
    n_words = words.size // desc.code_dtype.itemsize
    if not 0 < n_words <= min(_ACODE_UNIT_MAX_WORDS, max_words):
        return None
    best: "tuple[Pipeline, bytes] | None" = None
    for shift in _ACODE_SHIFTS:
        coded = Acode(shift, 8, default=name).encode(memoryview(words))
        if best is None or len(coded) < len(best[1]):
            best = Pipeline((Acode(shift, 8),)), coded
    return best


def _is_kernel(header: TensorHeader) -> bool:
    """Whether a tensor is a kernel: quantized and of rank >= 2."""
    return header.quant.scheme != SCHEME_NONE and len(header.shape) >= 2


def _acode_assignments(entries: "list[tuple[TensorHeader, int]]") -> "list[list[int]]":
    """Context sets to try for a group's members: one per member (when at most 16); each kernel (quantized,
    rank >= 2) its own, the members coded as raw bytes one, and the others by the last part of their name; all
    kernels in one set, raw bytes in one, the rest by name; everything in one set. Keys beyond 16 distinct share
    set 15."""
    def sets_of(keys: list) -> list[int]:
        index: dict = {}
        for k in keys:
            index.setdefault(k, min(len(index), 15))
        return [index[k] for k in keys]

    def leaf(h: TensorHeader) -> str:
        return h.name.rsplit(".", 1)[-1]

    heads = [h for h, _ in entries]
    def raw(h: TensorHeader) -> bool:
        return h.quant.code_dtype.name not in _ACODE_KINDS

    found = [sets_of([("r",) if raw(h) else ("k", h.name) if _is_kernel(h) else ("v", leaf(h)) for h in heads]),
             sets_of([("r",) if raw(h) else ("k",) if _is_kernel(h) else ("v", leaf(h)) for h in heads]),
             [0] * len(heads)]
    if len(heads) <= 16:
        found.insert(0, list(range(len(heads))))
    unique = []
    for f in found:
        if f not in unique:
            unique.append(f)
    return unique


def _acode_smallest(entries: "list[tuple[TensorHeader, int]]", data: "list[bytes]", raw: bytes,
                    max_words: int) -> "tuple[Pipeline, bytes] | None":
    """The smallest coding of a group's data block ``raw`` (the members' ``data`` joined) by the adaptive arithmetic
    coding stage (id 8), one segment per member (its code words' type and offset), over
    :func:`_acode_assignments`, :data:`_ACODE_SHIFTS` and :data:`_ACODE_KS`; None when the block is empty, over
    :data:`_ACODE_MAX_BYTES` (:data:`_ACODE_PORTABLE_MAX_BYTES` without the compiled coder) or holds more than
    ``max_words`` words (the decoder's ``max_adaptive_words``)."""
    total = len(raw)
    if not total or total > (_ACODE_MAX_BYTES if acode_compiled() else _ACODE_PORTABLE_MAX_BYTES):
        return None
    kinds, offsets = [], []
    for (header, _), words in zip(entries, data):
        code_dtype = header.quant.code_dtype
        kinds.append(_ACODE_KINDS.get(code_dtype.name, SEGMENT_TYPES["tree"]))
        offsets.append(_acode_offset(np.frombuffer(words, dtype=code_dtype.storage))
                       if code_dtype.name in _ACODE_KINDS else 0)
    widths = [TYPE_WIDTH[k] for k in kinds]
    if sum(len(d) // w for d, w in zip(data, widths)) > max_words:
        return None
    best: "tuple[Pipeline, bytes] | None" = None
    for sets in _acode_assignments(entries):
        segments: list[Segment] = []
        for k, s, o, d, w in zip(kinds, sets, offsets, data, widths):
            if segments and k == segments[-1].kind == SEGMENT_TYPES["tree"] and s == segments[-1].cset:
                segments[-1] = segments[-1]._replace(count=segments[-1].count + len(d))  # raw bytes: the same bits
            else:
                segments.append(Segment(k, s, o, len(d) // w))
        for shift in _ACODE_SHIFTS:
            for k in _ACODE_KS:
                coded = Acode(shift, k, segments).encode(memoryview(raw))
                if best is None or len(coded) < len(best[1]):
                    best = Pipeline((Acode(shift, k),)), coded
    return best


def _narrowing_moot(members: "list[_Prepared]") -> bool:
    """Whether :func:`_group_payload` of ``members`` with ``narrow`` gives the same bytes as without: no
    member's codes narrow and their words are at most :data:`_SPLIT_LEVEL_BYTES` (the level stays)."""
    return (sum(len(p.words) for p in members) <= _SPLIT_LEVEL_BYTES
            and all(_narrowest_codes(p.header, p.words)[0] is p.header for p in members))


def _group_entries(members: "list[_Prepared]",
                   narrow: bool) -> "tuple[list[tuple[TensorHeader, int]], list[bytes]]":
    """The directory entries (header, layout) of a group's members and the data each stores: its code words
    (narrowed with ``narrow``), or one word when all are equal (at least 2)."""
    entries, data = [], []
    for p in members:
        header, words = p.header, p.words
        if narrow:
            header, words = _narrowest_codes(header, words)
        size = header.quant.code_dtype.itemsize
        flat = np.frombuffer(words, dtype=np.uint8).reshape(-1, size)
        fill = flat.shape[0] >= 2 and bool((flat == flat[0]).all())
        entries.append((header, GROUP_LAYOUT_FILL if fill else GROUP_LAYOUT_DENSE))
        data.append(words[:size] if fill else words)
    return entries, data


def _member_kind(p: "_Prepared", cluster: int) -> tuple[int, int, int]:
    """What a group member holds, for splitting a group by kind: ``(0, scheme, cluster)`` quantized tensors
    of rank >= 2 (kernels; ``cluster`` from :func:`_code_clusters`), ``(1, 0, 0)`` other quantized tensors
    (biases, folded norms), ``(2, 0, 0)`` lossless tensors."""
    desc = p.header.quant
    if desc.scheme == SCHEME_NONE:
        return 2, 0, 0
    return (0, desc.scheme, cluster) if _is_kernel(p.header) else (1, 0, 0)


#: ways of splitting a group's members into several groups, as functions of :func:`_member_kind`: one group;
#: kernels / the rest; kernels / other quantized / lossless; the same with kernels split by scheme, or into
#: clusters of similar codes; kernels by scheme, or in clusters / the rest
_SPLITS: tuple = (lambda k: (0,), lambda k: (min(k[0], 1),), lambda k: k[:1], lambda k: k[:2],
                  lambda k: k[:2] if k[0] == 0 else (1, 0), lambda k: (k[0], k[2]),
                  lambda k: (0, k[2]) if k[0] == 0 else (1, 0))
#: kernels clustered by their codes at most, and distinct code values among them (more: one cluster); the
#: bytes of a group's overhead and of an rANS table entry the clustering assumes
_CLUSTER_MAX = 64
_CLUSTER_VALUES = 256
_CLUSTER_GROUP_BYTES = 48
_CLUSTER_SYMBOL_BYTES = 6


def _coded_bytes_estimate(hist: np.ndarray) -> np.ndarray:
    """Bytes of groups of words with these value counts (last axis) under rANS: order-0 entropy, table and
    overhead; rounded to 1e-6 bytes so that float sums decide no near tie."""
    n = hist.sum(-1)
    logs = np.log2(np.where(hist > 0, hist, 1.0))
    bits = n * np.log2(np.maximum(n, 1.0)) - (hist * logs).sum(-1)
    return np.round(bits / 8 + _CLUSTER_SYMBOL_BYTES * (hist > 0).sum(-1) + _CLUSTER_GROUP_BYTES, 6)


def _code_clusters(members: "list[_Prepared]") -> dict[str, int]:
    """Quantized members of rank >= 2 in clusters whose codes share an order-0 model well: agglomerative,
    merging the pair whose estimated bytes (:func:`_coded_bytes_estimate`) drop most, while any drops.
    Name -> cluster number (none for more than :data:`_CLUSTER_MAX` such members or
    :data:`_CLUSTER_VALUES` distinct codes: one cluster)."""
    kernels = [p for p in members if _is_kernel(p.header)]
    if not kernels or len(kernels) > _CLUSTER_MAX:
        return {}
    arrays = [np.frombuffer(p.words, dtype=p.header.quant.code_dtype.storage) for p in kernels]
    values, index = np.unique(np.concatenate(arrays), return_inverse=True)
    if values.size > _CLUSTER_VALUES:
        return {}
    hist = np.zeros((len(kernels), values.size))
    at = 0
    for i, a in enumerate(arrays):
        hist[i] = np.bincount(index[at:at + a.size], minlength=values.size)
        at += a.size
    cluster = list(range(len(kernels)))  # each kernel's cluster: the index of the kernel it was merged into
    alive = np.ones(len(kernels), dtype=bool)  # the kernels that are a cluster's index (not merged into another)
    costs = _coded_bytes_estimate(hist)
    gain = costs[:, None] + costs[None, :] - _coded_bytes_estimate(hist[:, None, :] + hist[None, :, :])
    np.fill_diagonal(gain, -np.inf)
    while True:
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not gain[i, j] > 0:
            break
        i, j = min(i, j), max(i, j)
        hist[i] += hist[j]
        cluster = [i if c == j else c for c in cluster]
        alive[j] = False
        costs[i] = _coded_bytes_estimate(hist[i])
        gain[j, :] = gain[:, j] = -np.inf
        row = costs[i] + costs - _coded_bytes_estimate(hist[i][None, :] + hist)
        row[~alive] = row[i] = -np.inf
        gain[i, :] = gain[:, i] = row
    return {p.header.name: c for p, c in zip(kernels, cluster)}


@dataclass(frozen=True)
class _Candidate:
    """A way of storing a member set in tensor-group units: the payloads, each group's member names and
    whether codes are narrowed."""

    payloads: list[bytes]
    parts: tuple[tuple[str, ...], ...]
    narrow: bool
    minor: int  #: the newest format minor version a stage of the groups' pipelines needs

    @property
    def cost(self) -> int:
        """Bytes of the group units, with their unit headers."""
        return sum(UNIT_HEADER_SIZE + len(g) for g in self.payloads)


def _split_groups(members: "list[_Prepared]", limits: Limits, cache: "dict[tuple, tuple[bytes, int] | None]",
                  single: bool, adaptive: bool = True) -> "list[_Candidate]":
    """Candidate layouts of ``members`` (ascending names) in one or several tensor-group units. With
    ``single``, the one group of un-narrowed codes (the layout of format 1.4's first encoder) comes first; the
    splits of :data:`_SPLITS`, with narrowed codes, follow when the members' code words are at most
    :data:`_GROUP_SPLIT_BYTES`. A candidate with a group whose directory would be over ``max_metadata_bytes``
    or whose payload over ``max_unit_bytes`` is left out (possibly all: an empty list). ``cache`` keeps the
    payloads of member sets already coded (by ``adaptive``, names and narrowing) across calls; a set whose
    narrowing changes nothing (:func:`_narrowing_moot`) is coded once, un-narrowed. With ``adaptive``, stage 8
    is tried on the groups' data."""

    def payload(part: "list[_Prepared]", narrow: bool) -> "tuple[bytes, int] | None":
        if narrow and _narrowing_moot(part):  # the same bytes as un-narrowed: coded once
            narrow = False
        names = tuple(p.header.name for p in part)
        key = (adaptive, narrow, *names)
        if key not in cache:
            # the coding without stage 8 comes with it: kept for the layout without stage 8
            cache[key], cache[(False, narrow, *names)] = _group_payload(part, limits, narrow, adaptive)
        return cache[key]

    found: list[_Candidate] = []
    if single:
        plain = payload(members, False)
        if plain is not None:
            found.append(_Candidate([plain[0]], (tuple(p.header.name for p in members),), False, plain[1]))
    if sum(len(p.words) for p in members) > _GROUP_SPLIT_BYTES:
        return found
    seen: set[tuple] = set()
    clusters = _code_clusters(members)
    kinds = [_member_kind(p, clusters.get(p.header.name, 0)) for p in members]
    for split in _SPLITS:
        parts: dict[Any, list[_Prepared]] = {}
        for p, kind in zip(members, kinds):
            parts.setdefault(split(kind), []).append(p)
        key = tuple(sorted(tuple(p.header.name for p in part) for part in parts.values()))
        if key in seen:
            continue
        seen.add(key)
        payloads = [payload(parts[k], True) for k in sorted(parts)]
        if any(g is None for g in payloads):
            continue
        found.append(_Candidate([g[0] for g in payloads],  # type: ignore[index]
                                tuple(tuple(p.header.name for p in parts[k]) for k in sorted(parts)), True,
                                max(g[1] for g in payloads)))  # type: ignore[index]
    return found


def _member_reports(coded: "dict[str, _Prepared]", layout: _Layout) -> None:
    """Each group member's report: its share of its own group unit's bytes (with the unit header), in
    proportion to the data the group stores for it (its code words, narrowed when the layout narrows them;
    one word for a member of all-equal words)."""
    for payload, names in zip(layout.groups, layout.parts):
        members = [coded[n] for n in names]
        _, data = _group_entries(members, layout.narrow)
        unit_bytes = UNIT_HEADER_SIZE + len(payload)
        stored = sum(len(d) for d in data) or 1
        for p, d in zip(members, data):
            r = p.report
            r.pipeline = ["tensor_group"]
            r.unit_bytes = unit_bytes * len(d) // stored
            numel = math.prod(r.shape)
            r.bits_per_param = 8.0 * r.unit_bytes / numel if numel else None


_COPY_BYTES = 4 << 20


def _default_pipeline(pipelines: list[Pipeline]) -> Pipeline | None:
    """The pipeline of the model parameter set: the most common one, when at least two tensors share it."""
    counts = Counter(p.to_bytes() for p in pipelines)
    if counts:
        common, n = counts.most_common(1)[0]
        if n >= 2:
            return next(p for p in pipelines if p.to_bytes() == common)
    return None


def _unit_header(header: TensorHeader, pipeline: Pipeline, default: Pipeline | None) -> TensorHeader:
    """``header`` as its unit stores it: without its ``pipeline`` when that is the default one."""
    if default is None or pipeline != default:
        return header
    return TensorHeader(header.name, header.dtype, header.shape, header.quant, None)


def _tensor_header(header: TensorHeader, pipeline: Pipeline, default: Pipeline | None, report: TensorReport,
                   payload_bytes: int) -> TensorHeader:
    """:func:`_unit_header`, the report's unit size updated when it drops the pipeline."""
    stored = _unit_header(header, pipeline, default)
    if stored is not header:
        report.unit_bytes = UNIT_HEADER_SIZE + len(stored.to_bytes()) + payload_bytes
        numel = math.prod(stored.shape)
        report.bits_per_param = 8.0 * report.unit_bytes / numel if numel else None
    return stored


def _copy_unit(out: BinaryIO, unit_type: int, head: bytes, src: BinaryIO, size: int) -> None:
    """Write a unit whose body is ``head`` + the next ``size`` bytes of ``src``, in pieces: its CRC is
    computed as the bytes pass and written into the unit header afterwards (as :func:`frame_unit`)."""
    unit_head = UNIT_HEADER.pack(unit_type, FLAG_CRITICAL, 0, len(head) + size, 0)[:UNIT_CRC_COVERED]
    at = out.tell()
    out.write(unit_head + b"\0\0\0\0" + head)
    crc = zlib.crc32(head, zlib.crc32(unit_head))
    left = size
    while left:
        piece = src.read(min(left, _COPY_BYTES))
        if not piece:
            raise OSError("encoder spool file ended early")
        crc = zlib.crc32(piece, crc)
        out.write(piece)
        left -= len(piece)
    end = out.tell()
    out.seek(at + UNIT_CRC_COVERED)
    out.write(struct.pack("<I", crc))
    out.seek(end)


def _std(values: np.ndarray) -> float:
    """Standard deviation in float64 (numpy's up to 4 ``_BLOCK_ELEMENTS`` elements); above, in blocks
    (two passes), so that no float64 copy of the whole tensor exists."""
    flat = values.reshape(-1)
    if flat.size <= 4 * _BLOCK_ELEMENTS:
        return float(np.std(flat.astype(np.float64)))
    mean = sum(float(flat[a:a + _BLOCK_ELEMENTS].sum(dtype=np.float64))
               for a in range(0, flat.size, _BLOCK_ELEMENTS)) / flat.size
    squares = 0.0
    for a in range(0, flat.size, _BLOCK_ELEMENTS):
        d = flat[a:a + _BLOCK_ELEMENTS].astype(np.float64)
        d -= mean
        squares += float(np.multiply(d, d, out=d).sum())
    return math.sqrt(squares / flat.size)


def _errors(values: np.ndarray, codes: np.ndarray, desc: QuantDescriptor, dtype: DType) -> tuple[float, float]:
    """Max and RMS of |decoded - value|, decoded in blocks of rows (about ``_BLOCK_ELEMENTS`` elements)."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, codes.size // max(1, codes.shape[0])))
    max_err = squares = 0.0
    for a in range(0, codes.shape[0], rows):
        b = min(a + rows, codes.shape[0])
        recon = np.empty(codes[a:b].shape, dtype=dtype.storage)
        dequantize_into(codes[a:b], desc.rows(a, b), recon, dtype)
        got = bfloat16_bits_to_float32(recon) if dtype.name == "bfloat16" else recon
        diff = got.astype(np.float64)
        diff -= values[a:b]
        np.abs(diff, out=diff)
        if diff.size:
            max_err = max(max_err, float(diff.max()))
            squares += float(np.multiply(diff, diff, out=diff).sum())
    return max_err, math.sqrt(squares / codes.size) if codes.size else 0.0


def _as_encodable(name: str, value: Any) -> "tuple[np.ndarray, DType] | CodedTensor":
    """A value of :meth:`Encoder.encode`'s mapping: ``(storage, dtype)``, a :class:`CodedTensor`, or a numpy
    array / scalar (converted here)."""
    if isinstance(value, CodedTensor):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (np.ndarray, np.generic)) \
            and isinstance(value[1], DType):
        return np.asarray(value[0]), value[1]
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        return numpy_storage(value, name)
    raise ConfigError(f"value of {name!r} is a {type(value).__name__}: pass a numpy array, a CodedTensor "
                      "or (storage array, DType)")


def find_aliases(tensors: "Mapping[str, tuple[np.ndarray, DType] | CodedTensor]") -> dict[str, str]:
    """Tied tensors: names whose storage is the very storage of another entry (same memory, shape, strides
    and dtype), mapped to the first such name in byte order, which is stored once. Partial overlaps (views of
    another shape) are not aliases; they are stored on their own. Quantized tensors (:class:`CodedTensor`)
    are aliases when their codes share memory the same way and they decode alike: equal descriptors (scales
    included), dtype, and the same leading stage object (or none)."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        value = tensors[name]
        a = value.codes if isinstance(value, CodedTensor) else value[0]
        if a.size == 0:
            continue
        key: tuple = (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
        if isinstance(value, CodedTensor):
            lead = None if value.lead is None else id(value.lead)
            key += ("coded", value.quant.to_bytes(), value.dtype.name, lead)
        else:
            key += (value[1].name,)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _decoded_bytes(value: "tuple[np.ndarray, DType] | CodedTensor") -> int:
    if isinstance(value, CodedTensor):
        return value.codes.size * value.dtype.itemsize
    return value[0].size * value[1].itemsize


def _array_of(value: "tuple[np.ndarray, DType] | CodedTensor") -> np.ndarray:
    return value.codes if isinstance(value, CodedTensor) else value[0]


def numpy_storage(a: Any, name: str = "array") -> tuple[np.ndarray, DType]:
    """``(storage words, dtype)`` of a numpy array or scalar (ml_dtypes bfloat16 accepted)."""
    a = np.asarray(a)
    try:
        dt = dtype_of_array(a)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    storage = a.view(np.uint16) if dt.name == "bfloat16" else a
    return _contiguous(storage).astype(dt.storage, copy=False), dt


def numpy_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, DType]]:
    """``{name: (storage words, dtype)}`` from numpy arrays."""
    return {name: numpy_storage(a, name) for name, a in arrays.items()}


def encode_arrays(arrays: Mapping[str, np.ndarray], dst: str | os.PathLike[str] | None = None,
                  **options: Any) -> bytes | Path:
    """Encode a dict of numpy arrays (no torch needed); options as :class:`Encoder`, and
    ``operating_points`` for a scalable stream (:func:`nncodec.scalable.encode_scalable`), or ``base`` (a
    dict of arrays or a stream) for a delta stream of the differences from it (:mod:`nncodec.delta`)."""
    points = options.pop("operating_points", None)
    base = options.pop("base", None)
    if base is not None:
        if points is not None:
            raise ConfigError("operating_points cannot be combined with base=")
        from .delta import encode_delta

        rd = {k: options.pop(k) for k in ("rate_lambda",) if k in options}
        return encode_delta(numpy_tensors(arrays), base, dst, None, False, options, rd)[0]
    if points is not None:
        from .scalable import encode_scalable

        return encode_scalable(arrays, points, dst, **options)[0]
    result, _ = encoder_from_options(options).encode(arrays, dst)
    return result


def encoder_from_options(options: Mapping[str, Any]) -> Encoder:
    """An :class:`Encoder` from keyword options; an option it does not take is a :class:`ConfigError`."""
    known = [p for p in inspect.signature(Encoder.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown encode option(s) {unknown}; the options are {known}")
    return Encoder(**options)


def ungrouped(options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``options`` with ``group_tensors=False``: delta and scalable streams hold no tensor-group unit (FORMAT.md
    §14); asking for one there is a :class:`ConfigError`."""
    if options.get("group_tensors"):
        raise ConfigError(f"group_tensors does not apply to {kind} streams: their tensors are in units of their own")
    return {**options, "group_tensors": False}
