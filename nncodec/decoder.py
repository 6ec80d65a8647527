"""Decoding nncodec streams into numpy arrays, one unit at a time, with inline decompression.

This module needs numpy, zstandard and the standard library only; it never imports torch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import numpy as np

from .bitstream.byte_reader import ByteReader
from .bitstream.constants import (GROUP_LAYOUT_FILL, SCHEME_NONE, UNIT_BASE_REFERENCE, UNIT_END, UNIT_HEADER_SIZE,
                                  UNIT_MODEL_PARAMETER_SET, UNIT_NAMES, UNIT_OPERATING_POINTS, UNIT_REFINEMENT,
                                  UNIT_STREAM_HEADER, UNIT_TENSOR, UNIT_TENSOR_ALIASES, UNIT_TENSOR_GROUP,
                                  UNIT_TOPOLOGY)
from .bitstream.descriptor import dequantize_into
from .bitstream.group import GroupMember
from .bitstream.operating_points import OperatingPoint, PointTracker, RefinementHeader
from .checks import is_int
from .coding.pipeline import Pipeline
from .bitstream.reader import CodedStream, DeferredPayload, StreamedPayload, UnitReader, open_source
from .bitstream.units import EndOfStream, StreamHeader, TensorAliases, TensorHeader, UnitHeader, parse_json_object
from .errors import ConfigError, CorruptError, FormatError, LimitExceededError, TruncatedError, UnknownUnitError
from .group import decode_group_data, member_pipeline, open_group
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["decode_arrays", "iter_tensors", "read_info", "decode_tensor", "StreamWalker", "StreamInfo", "UnitInfo",
           "Source"]

_PIECE_ELEMENTS = 1 << 18  # codes decoded per block when dequantizing as they arrive
_AHEAD_UNITS = 8            # per worker: units read ahead of the one yielded next
_AHEAD_BYTES = 16 << 20     # coded bytes read ahead at most

Source = "bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO"
#: callback giving a destination array (tensor storage dtype, tensor shape, C-contiguous) or None
DestinationFn = Callable[[TensorHeader], "np.ndarray | None"]


@dataclass
class UnitInfo:
    """One unit as listed by ``nncodec info``."""

    index: int
    type: str
    offset: int
    size: int               #: header + payload bytes
    critical: bool
    tensor: dict[str, Any] | None = None
    members: list[dict[str, Any]] | None = None  #: a tensor-group unit's tensors (FORMAT.md §14)


@dataclass
class StreamInfo:
    version: tuple[int, int]
    metadata: dict[str, str]
    units: list[UnitInfo] = field(default_factory=list)
    topology: dict[str, Any] | None = None
    total_bytes: int = 0
    aliases: dict[str, str] = field(default_factory=dict)  #: alias name -> tensor whose storage it shares
    operating_points: list[OperatingPoint] = field(default_factory=list)  #: of a scalable stream (FORMAT.md §13)

    def tensor_entries(self) -> list[dict[str, Any]]:
        """The listing of every stored tensor, in stream order: tensor units' and tensor-group members'."""
        return [t for u in self.units for t in ([u.tensor] if u.tensor else u.members or [])]


class StreamWalker:
    """The unit-order rules of FORMAT.md §4, the one place they live: decoding (:func:`iter_tensors`,
    :func:`decode_arrays`), inspection (:func:`read_info`) and lazy access (``nncodec.open``) all walk a
    stream through it, so they accept and refuse the same streams.

    ``f`` is a binary file object (see :func:`~nncodec.bitstream.reader.open_source` for bytes and paths).
    ``on_unit(index, unit header)`` is called for every unit before it is interpreted. With
    ``defer_tensors`` (seekable ``f``) tensor payloads are not read: :meth:`tensor_units` yields a
    :class:`~nncodec.bitstream.reader.CodedSpan` instead of the coded bytes, and their checksums are left
    to whoever decodes them.

    Scalable streams (FORMAT.md §13): ``operating_point`` selects the point (None: the last, the full
    model); payloads past it are passed over unread. With ``refinements``, :meth:`tensor_units` also
    yields the refinement units the point needs, a :class:`RefinementHeader` in place of the tensor header.

    Tensor groups (FORMAT.md §14): each member is yielded like a tensor unit, with the group's unit header
    and, as coded bytes, its words in the group's decoded data (``None`` with ``defer_tensors`` or without
    ``group_data``: the data is not decoded during a scan or a listing); :meth:`pipeline_of` gives the member's way from those words to its codes.

    Delta streams (FORMAT.md §12): ``base_reference(payload, offset)`` parses the base reference unit into
    :attr:`base_reference` (at most one, before any tensor). Without it that critical unit is refused, so a
    delta is never decoded as if it were the weights themselves.
    """

    def __init__(self, f: BinaryIO, limits: Limits,
                 on_unit: Callable[[int, UnitHeader], None] | None = None, *, defer_tensors: bool = False,
                 operating_point: int | None = None, refinements: bool = False,
                 base_reference: Callable[[memoryview, int], Any] | None = None, group_data: bool = True):
        self.limits = limits
        self.on_unit = on_unit
        self.reader = UnitReader(f, limits, defer_tensors=defer_tensors)
        self._group_data = group_data and not defer_tensors
        self.members: dict[str, GroupMember] = {}  #: tensor-group members read so far, by name
        #: with ``defer_tensors``: the first tensor-group unit's payload (read whole, checksum verified), by
        #: unit offset, so that a lazy reader decodes that group's data without reading the unit again; only
        #: one (at most ``max_unit_bytes``) stays in memory, a lazy reader reads and checks any other again
        self.group_payloads: dict[int, memoryview] = {}
        self._keep_group_payloads = defer_tensors
        self.header: StreamHeader | None = None
        self.default_pipeline: Pipeline | None = None
        self.topology: dict[str, Any] | None = None
        self.names: set[str] = set()
        self.decoded_bytes = 0
        self._pipelines: dict[tuple, Pipeline] = {}  # stored entries -> stages, resolved once
        self.aliases: dict[str, str] = {}  #: alias name -> target tensor name (the tensor-aliases unit)
        self._aliases_seen = False
        self.points = PointTracker(operating_point)
        self._refinements = refinements
        self._parse_base_reference = base_reference
        self.base_reference: Any = None  #: the parsed base reference unit of a delta stream, if any

    def aliases_of(self, name: str) -> list[str]:
        """Names sharing the storage of tensor ``name`` (ascending)."""
        return sorted(a for a, t in self.aliases.items() if t == name)

    def tensor_units(self) -> Iterator[tuple[int, UnitHeader, TensorHeader, memoryview]]:
        """Yield ``(index, unit header, tensor header, coded payload)`` for each tensor, checking order."""
        seen_end = False
        for index, uh, payload in self.reader:
            if self.on_unit is not None:
                self.on_unit(index, uh)
            self.points.boundaries.add(uh.offset)
            base = uh.offset + UNIT_HEADER_SIZE
            if payload is None:  # passed over: a refinement past the selected operating point
                try:
                    self.points.on_skipped(uh.unit_type, UNIT_REFINEMENT, UNIT_END)
                except FormatError as exc:
                    raise exc.located(unit_index=index, offset=uh.offset) from None
                continue
            streamed = payload if isinstance(payload, (StreamedPayload, DeferredPayload)) else None
            if streamed is not None:  # a large tensor unit: only its first bytes are in memory yet
                payload = memoryview(streamed.prefix)
            try:
                r = ByteReader(payload, base_offset=base, what=f"{UNIT_NAMES.get(uh.unit_type, 'unit')} payload")
                if seen_end:
                    raise CorruptError("bytes after the end-of-stream unit")
                if index == 0 and uh.unit_type != UNIT_STREAM_HEADER:
                    raise CorruptError("the first unit must be a stream header")
                if uh.unit_type == UNIT_STREAM_HEADER:
                    if index:
                        raise CorruptError("a second stream header")
                    self.header = StreamHeader.parse(r, self.limits, self.reader.version)
                elif uh.unit_type == UNIT_MODEL_PARAMETER_SET:
                    if self.names or self.default_pipeline is not None:
                        raise CorruptError("model parameter set after tensors or repeated")
                    count = r.u8("pipeline stage count")
                    self.default_pipeline = Pipeline.parse_entries(r, count)
                    r.expect_end("model parameter set")
                elif uh.unit_type == UNIT_TOPOLOGY:
                    if self.topology is not None:
                        raise CorruptError("a second topology unit")
                    self.limits.check("topology size", len(payload), "max_metadata_bytes", offset=base)
                    self.topology = parse_json_object(payload, "topology", base)
                elif uh.unit_type == UNIT_TENSOR_ALIASES:
                    if self.names or self._aliases_seen:
                        raise CorruptError("tensor aliases after tensors or repeated")
                    self.aliases = TensorAliases.parse(r, self.limits).aliases
                    self._aliases_seen = True
                    chained = sorted(set(self.aliases) & set(self.aliases.values()))
                    if chained:
                        raise CorruptError(f"alias target {chained[0]!r} is itself an alias")
                elif uh.unit_type == UNIT_BASE_REFERENCE and self._parse_base_reference is not None:
                    if self.base_reference is not None:
                        raise CorruptError("a second base reference unit")
                    if self.names:
                        raise CorruptError("base reference after tensor units")
                    self.base_reference = self._parse_base_reference(bytes(payload), base)
                elif uh.unit_type == UNIT_TENSOR:
                    try:
                        th = TensorHeader.parse(r, self.limits)
                    except TruncatedError:
                        if streamed is None:
                            raise
                        payload = streamed.materialize()  # a header longer than the prefix read so far
                        streamed = None
                        r = ByteReader(payload, base_offset=base, what="tensor unit payload")
                        th = TensorHeader.parse(r, self.limits)
                    if th.name in self.names or th.name in self.aliases:
                        raise CorruptError(f"duplicate tensor name {th.name!r}")
                    self.names.add(th.name)
                    if th.pipeline is None and self.default_pipeline is None:
                        raise CorruptError(f"tensor {th.name!r} uses a default pipeline but no model parameter "
                                           "set came before it")
                    self.pipeline_of(th)  # its stages exist and their params are valid
                    self.points.on_tensor(th, uh.offset, base + uh.payload_length)
                    nbytes = th.numel * th.dtype.itemsize
                    self.decoded_bytes += nbytes
                    self.limits.check("total decoded bytes", self.decoded_bytes, "max_total_decoded_bytes")
                    yield index, uh, th, (streamed.coded(r.offset - base) if streamed is not None else r.rest())
                elif uh.unit_type == UNIT_TENSOR_GROUP:
                    yield from self._group_members(index, uh, payload, base)
                elif uh.unit_type == UNIT_OPERATING_POINTS:
                    if self.points.on_points(r, base + uh.payload_length, bool(self.names)):
                        self.reader.skip_payload = self.points.skip
                elif uh.unit_type == UNIT_REFINEMENT:
                    try:
                        rh = self.points.on_refinement(r, self.limits, uh.offset, base + uh.payload_length)
                    except TruncatedError:
                        if streamed is None:
                            raise
                        payload, streamed = streamed.materialize(), None  # a header longer than the prefix
                        r = ByteReader(payload, base_offset=base, what="refinement unit payload")
                        rh = self.points.on_refinement(r, self.limits, uh.offset, base + uh.payload_length)
                    if rh.pipeline is None and self.default_pipeline is None:
                        raise CorruptError(f"refinement of {rh.name!r} uses a default pipeline but there is no "
                                           "model parameter set")
                    self.pipeline_of(rh)  # type: ignore[arg-type]
                    if self.points.growth_bytes:
                        self.decoded_bytes += self.points.growth_bytes
                        self.limits.check("total decoded bytes", self.decoded_bytes, "max_total_decoded_bytes")
                    if self._refinements and rh.level <= self.points.point:
                        yield index, uh, rh, (streamed.coded(r.offset - base) if streamed is not None  # type: ignore[misc]
                                              else r.rest())
                elif uh.unit_type == UNIT_END:
                    eos = EndOfStream.parse(r)
                    if eos.unit_count != index:
                        raise CorruptError(f"end-of-stream counts {eos.unit_count} units, {index} came before it")
                    if self.header is None:
                        raise CorruptError("no stream header")
                    if eos.tensor_count != len(self.names) or self.header.tensor_count != len(self.names):
                        raise CorruptError(f"stream declares {self.header.tensor_count} tensors, end-of-stream "
                                           f"{eos.tensor_count}, {len(self.names)} present")
                    self.points.on_end(uh.offset)
                    missing = sorted(set(self.aliases.values()) - self.names)
                    if missing:
                        raise CorruptError(f"alias target {missing[0]!r} is not a tensor of the stream")
                    seen_end = True
                    if not self.reader.at_end():
                        raise CorruptError("bytes after the end-of-stream unit")
                elif uh.critical:
                    raise UnknownUnitError(f"unknown critical unit type {uh.unit_type:#04x}")
                # unknown ancillary units are skipped by their length
            except (FormatError, LimitExceededError) as exc:
                if streamed is not None:
                    streamed.finish()  # a checksum mismatch explains the error first
                raise exc.located(unit_index=index, offset=uh.offset) from None
        if not seen_end:
            raise TruncatedError("stream ends without an end-of-stream unit", offset=self.reader.position)

    def _group_members(self, index: int, uh: UnitHeader, payload: memoryview, base: int
                       ) -> Iterator[tuple[int, UnitHeader, TensorHeader, "memoryview | None"]]:
        """The members of a tensor-group unit: directory checked, names and decoded bytes counted, then (unless
        scanning) the data decoded once and each member's words handed out."""
        if self.base_reference is not None or self.points.points is not None:
            raise CorruptError("a tensor group unit in a delta or scalable stream")
        group = open_group(payload, base, self.limits)
        for m in group.members:
            th = m.header
            if th.name in self.names or th.name in self.aliases:
                raise CorruptError(f"duplicate tensor name {th.name!r} (tensor group member)")
            self.names.add(th.name)
            self.decoded_bytes += th.numel * th.dtype.itemsize
            self.limits.check("total decoded bytes", self.decoded_bytes, "max_total_decoded_bytes")
        data = memoryview(decode_group_data(group, self.limits)) if self._group_data else None
        if self._keep_group_payloads and not self.group_payloads:
            self.group_payloads[uh.offset] = payload
        for m in group.members:
            self.members[m.header.name] = m
            yield index, uh, m.header, (data[m.start:m.start + m.size] if data is not None else None)

    @property
    def operating_points(self) -> list[OperatingPoint]:
        """The stream's operating points (empty for a stream that has none)."""
        return list(self.points.points.points) if self.points.points is not None else []

    def pipeline_of(self, th: "TensorHeader | RefinementHeader") -> Pipeline:
        """The stages of ``th``: its own entries resolved through the stage registry, or the default; for a
        tensor group member, how its words in the group's data become its codes."""
        member = self.members.get(th.name)
        if member is not None and member.layout == GROUP_LAYOUT_FILL:  # one repeated word: its "pipeline"
            return member_pipeline(member)
        if th.pipeline is None:
            return self.default_pipeline  # type: ignore[return-value]
        if th.pipeline not in self._pipelines:
            self._pipelines[th.pipeline] = Pipeline.from_entries(th.pipeline)
        return self._pipelines[th.pipeline]


def decode_tensor(th: TensorHeader, coded: "memoryview | CodedStream", pipeline: Pipeline, limits: Limits,
                  dest: np.ndarray | None = None) -> np.ndarray:
    """The values of one tensor from its coded bytes (``pipeline``: its own or the default one)."""
    storage = th.dtype.storage
    if dest is None:
        dest = np.empty(th.shape, dtype=storage)
    if th.quant.scheme == SCHEME_NONE:
        flat = dest.reshape(-1).view(np.uint8)
        pipeline.decode_into(coded, flat, limits)
        if th.dtype.name == "bool" and flat.size and flat.max() > 1:
            raise CorruptError(f"bool tensor {th.name!r} holds bytes other than 0 and 1")
    elif not (_decode_mapped(pipeline, coded, th, dest) or _dequantize_streaming(pipeline, coded, th, dest)):
        codes = np.empty(th.numel, dtype=th.quant.code_dtype.storage)
        pipeline.decode_into(coded, codes.view(np.uint8), limits)
        dequantize_into(codes.reshape(th.shape), th.quant, dest, th.dtype)
    return dest


def _decode_mapped(pipeline: Pipeline, coded: "memoryview | CodedStream", th: TensorHeader,
                   dest: np.ndarray) -> bool:
    """One stage that maps symbols through a table (rANS) and one scale per tensor: dequantize the
    alphabet once and decode straight into ``dest``, with no code array and no second pass."""
    desc = th.quant
    if desc.per_channel or th.numel == 0:
        return False
    code_dtype = desc.code_dtype.storage

    def values_of(symbols: np.ndarray) -> np.ndarray:
        table = np.empty(symbols.size, dtype=dest.dtype)
        dequantize_into(symbols.view(code_dtype), desc, table, th.dtype)  # also checks the codes' range
        return table

    return pipeline.decode_mapped(coded, th.numel * code_dtype.itemsize, code_dtype.itemsize, values_of,
                                  dest.reshape(-1))


def _dequantize_streaming(pipeline: Pipeline, coded: memoryview, th: TensorHeader, dest: np.ndarray) -> bool:
    """Decode codes in blocks of whole rows and dequantize each into ``dest`` at once: no full-size code
    array. Only for one-stage pipelines that stream and scales per tensor or along axis 0."""
    desc = th.quant
    if len(th.shape) == 0 or th.numel == 0 or (desc.per_channel and desc.axis != 0):
        return False
    code_dtype = desc.code_dtype.storage
    inner = th.numel // th.shape[0]
    rows = max(1, _PIECE_ELEMENTS // inner)
    pieces = pipeline.iter_decode(coded, th.numel * code_dtype.itemsize, rows * inner * code_dtype.itemsize)
    if pieces is None:
        return False
    row = 0
    for piece in pieces:
        n_rows = piece.size // (inner * code_dtype.itemsize)
        codes = piece.view(code_dtype).reshape((n_rows,) + th.shape[1:])
        dequantize_into(codes, desc.rows(row, row + n_rows), dest[row:row + n_rows], th.dtype)
        row += n_rows
    return True


def iter_tensors(src: Source, *, limits: Limits = DEFAULT_LIMITS, destination: DestinationFn | None = None,
                 workers: int | None = None, operating_point: int | None = None
                 ) -> Iterator[tuple[TensorHeader, np.ndarray]]:
    """Decode tensors unit by unit and yield ``(header, array)`` in stream order.

    ``destination(header)`` may return a writable C-contiguous array of the tensor's storage dtype and
    shape; the tensor is then decoded straight into it (inline decompression, no extra full copy).
    bfloat16 tensors come back as uint16 bit patterns. ``workers`` threads decode units at once while the
    next ones are read, up to 16 MiB of coded bytes ahead (default: up to 4, the CPU count; 1 decodes
    one unit at a time; large streamed units always decode alone). A tensor is yielded before later units
    are checked: consume the iterator fully before trusting the file as a whole.

    An alias (tied tensor, FORMAT.md §3.7) is yielded right after its target, as the target's array
    itself under a header that carries the alias name; ``destination`` is not asked for it.

    A scalable stream (FORMAT.md §13) decodes at ``operating_point`` (None: its last point, the full
    model; a stream without points has only point 0): refinement units up to the point are applied in place
    to their tensors, which are then yielded after the last unit, in stream order. Units past the point are
    not read.
    """
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    f, owned = open_source(src)  # type: ignore[arg-type]
    try:
        walker = StreamWalker(f, limits, operating_point=operating_point, refinements=True)
        held: dict[str, tuple[TensorHeader, np.ndarray]] = {}  # tensors still to be refined
        user_destination = destination
        if destination is not None:
            def destination(th: TensorHeader) -> "np.ndarray | None":  # type: ignore[no-redef]
                if walker.points.refining:  # the base tensor may be narrower than its destination
                    try:
                        return user_destination(th)  # type: ignore[misc]
                    except ConfigError:
                        return None
                return user_destination(th)  # type: ignore[misc]
        for th, arr in _decode_units(walker, destination, workers):
            if isinstance(th, RefinementHeader):
                index, uh, coded = arr  # type: ignore[misc]
                _refine_unit(walker, index, uh, th, coded, held)
                continue
            if walker.points.refining:
                held[th.name] = (th, arr)
                continue
            yield from with_aliases(walker, th, arr)
        for th, arr in held.values():
            yield from with_aliases(walker, th, arr)
    finally:
        if owned:
            f.close()


def with_aliases(walker: StreamWalker, th: TensorHeader, arr: np.ndarray
                 ) -> Iterator[tuple[TensorHeader, np.ndarray]]:
    """``(th, arr)`` and then the same array under each alias of the tensor (FORMAT.md §3.7)."""
    yield th, arr
    for alias in walker.aliases_of(th.name):
        yield replace(th, name=alias), arr


def _refine_unit(walker: StreamWalker, index: int, uh: UnitHeader, rh: RefinementHeader, coded: memoryview,
                 held: dict[str, tuple[TensorHeader, np.ndarray]]) -> None:
    from .refine import apply_refinement

    try:
        base, dest = held[rh.name]
        out = apply_refinement(rh, base, coded, walker.pipeline_of(rh), walker.limits, dest)
        if out is not dest:  # grown to a larger shape
            held[rh.name] = (replace(base, shape=out.shape), out)
    except (FormatError, LimitExceededError) as exc:
        raise exc.located(unit_index=index, offset=uh.offset) from None


def _decode_units(walker: StreamWalker, destination: DestinationFn | None,
                  workers: int) -> Iterator[tuple[TensorHeader, np.ndarray]]:
    """The tensors of ``walker``'s stream in order, ``workers`` units decoding at once."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nncodec-decode") if workers > 1 else None
    pending: deque[tuple[TensorHeader, Future[np.ndarray], int]] = deque()  # with coded bytes
    try:
        units = walker.tensor_units()
        while True:
            try:
                index, uh, th, coded = next(units)
            except StopIteration:
                break
            except Exception:
                yield from _settle(pending)  # what was read before the bad unit is still good: hand it out
                raise
            if isinstance(th, RefinementHeader):  # refined by the caller once its tensor is decoded
                yield from _settle(pending)
                yield th, (index, uh, coded)  # type: ignore[misc]
                continue
            dest = destination(th) if destination is not None else None
            if dest is not None and (dest.shape != th.shape or dest.dtype != th.dtype.storage
                                     or not dest.flags.c_contiguous or not dest.flags.writeable):
                raise ConfigError(f"destination for {th.name!r} must be a writable C-contiguous "
                                 f"{th.dtype.storage} array of shape {th.shape}")
            if pool is None or isinstance(coded, CodedStream):  # a streamed unit reads the file as it decodes
                yield from _settle(pending)
                yield th, _decode_unit(walker, index, uh, th, coded, dest)
                continue
            pending.append((th, pool.submit(_decode_unit, walker, index, uh, th, coded, dest), len(coded)))
            yield from _settle(pending, _AHEAD_UNITS * workers, _AHEAD_BYTES)
        yield from _settle(pending)
    finally:
        if pool is not None:
            for _, fut, _ in pending:
                fut.cancel()
            pool.shutdown(wait=True)


def _settle(pending: "deque[tuple[TensorHeader, Future[np.ndarray], int]]", units: int = 0,
            coded_bytes: int = 0) -> Iterator[tuple[TensorHeader, np.ndarray]]:
    """Yield the oldest pending results until at most ``units`` units and ``coded_bytes`` bytes are pending."""
    while pending and (len(pending) > units or sum(size for _, _, size in pending) > coded_bytes):
        head, fut, _ = pending.popleft()
        yield head, fut.result()


def _decode_unit(walker: StreamWalker, index: int, uh: UnitHeader, th: TensorHeader,
                 coded: "memoryview | CodedStream", dest: np.ndarray | None) -> np.ndarray:
    try:
        try:
            return decode_tensor(th, coded, walker.pipeline_of(th), walker.limits, dest)
        finally:
            if isinstance(coded, CodedStream):
                coded.finish()  # the checksum, before the tensor is handed out (or explaining an error)
    except (FormatError, LimitExceededError) as exc:
        raise exc.located(unit_index=index, offset=uh.offset) from None


def decode_unit_codes(walker: StreamWalker, index: int, uh: UnitHeader, th: TensorHeader,
                      coded: "memoryview | CodedStream") -> np.ndarray:
    """The integer codes of a quantized tensor unit (shaped like the tensor), before dequantization."""
    codes = np.empty(th.numel, dtype=th.quant.code_dtype.storage)
    try:
        try:
            walker.pipeline_of(th).decode_into(coded, codes.view(np.uint8), walker.limits)
        finally:
            if isinstance(coded, CodedStream):
                coded.finish()
    except (FormatError, LimitExceededError) as exc:
        raise exc.located(unit_index=index, offset=uh.offset) from None
    return codes.reshape(th.shape)


def decode_arrays(src: Source, *, limits: Limits = DEFAULT_LIMITS,
                  operating_point: int | None = None, base: Any = None) -> dict[str, np.ndarray]:
    """Decode a whole stream into ``{name: numpy array}`` in stream order (bfloat16 as uint16 bits);
    ``operating_point`` as :func:`iter_tensors`; ``base`` (arrays or a stream) rebuilds a delta stream
    (:mod:`nncodec.delta`)."""
    if base is not None:
        if operating_point is not None:
            raise ConfigError("a delta stream (base=) has no operating points: give base= or operating_point=")
        from .delta import decode_delta_arrays

        return {name: arr for name, (arr, _) in decode_delta_arrays(src, base, limits=limits).items()}
    return {th.name: arr for th, arr in iter_tensors(src, limits=limits, operating_point=operating_point)}


def read_info(src: Source, *, limits: Limits = DEFAULT_LIMITS) -> StreamInfo:
    """List units and tensor headers without decoding payloads (checksums are still verified); of a tensor
    group, the directory is decoded and its members listed (``stored_bytes``: their words in the group's
    data, which is not decoded; ``coded_bytes`` None: they are coded with the group)."""
    f, owned = open_source(src)  # type: ignore[arg-type]
    units: list[UnitInfo] = []

    def record(index: int, uh: UnitHeader) -> None:
        units.append(UnitInfo(index, UNIT_NAMES.get(uh.unit_type, f"unknown({uh.unit_type:#04x})"),
                              uh.offset, UNIT_HEADER_SIZE + uh.payload_length, uh.critical))

    try:
        walker = StreamWalker(f, limits, on_unit=record, refinements=True, group_data=False)
        for _, _, th, coded in walker.tensor_units():
            if isinstance(th, RefinementHeader):
                base = walker.points.headers[th.name]
                units[-1].tensor = {
                    "name": th.name, "dtype": base.dtype.name, "shape": list(base.shape),  # type: ignore[attr-defined]
                    "scheme": th.quant.scheme_name, "bits": th.quant.bits, "per_channel": th.quant.per_channel,
                    "pipeline": [st.get_config() for st in walker.pipeline_of(th).stages],
                    "default_pipeline": th.pipeline is None, "coded_bytes": len(coded),
                    "refines_to_point": th.level, "mode": th.mode}
                continue
            numel = th.numel
            if units[-1].type == UNIT_NAMES[UNIT_TENSOR_GROUP]:
                member = walker.members[th.name]
                if units[-1].members is None:
                    units[-1].members = []
                units[-1].members.append({  # coded with the group: stored_bytes are its words in the group's data
                    "name": th.name, "dtype": th.dtype.name, "shape": list(th.shape), "scheme": th.quant.scheme_name,
                    "bits": th.quant.bits, "per_channel": th.quant.per_channel, "pipeline": [],
                    "default_pipeline": False, "coded_bytes": None, "bits_per_param": None,
                    "stored_bytes": member.size,
                    "layout": "fill" if member.layout == GROUP_LAYOUT_FILL else "dense"})
                continue
            units[-1].tensor = {
                "name": th.name, "dtype": th.dtype.name, "shape": list(th.shape),
                "scheme": th.quant.scheme_name, "bits": th.quant.bits,
                "per_channel": th.quant.per_channel,
                "pipeline": [st.get_config() for st in walker.pipeline_of(th).stages],
                "default_pipeline": th.pipeline is None,
                "coded_bytes": len(coded),
                "bits_per_param": (8.0 * units[-1].size / numel) if numel else None,
            }
        metadata = walker.header.metadata if walker.header is not None else {}
        return StreamInfo(walker.reader.version, metadata, units, walker.topology, walker.reader.position,
                          dict(walker.aliases), walker.operating_points)
    finally:
        if owned:
            f.close()
