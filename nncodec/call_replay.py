"""Replay of the module calls a perturbed tensor cannot affect: the sensitivity probes' shared prefix.

A sensitivity probe (:func:`nncodec.sensitivity.output_sensitivity` with ``reuse=True``) perturbs one tensor
and runs the whole forward again. Every module call that finishes before the forward first uses that tensor
computes what it computed in the float model's pass, so its output can be given back instead of recomputed:
a probe of a tensor in the last layer of a deep network runs little more than that layer.

:class:`CallReplay` learns, in one recorded pass per batch, the order of the module calls (pre-order) and the
op at which each probed tensor is first used (a :class:`torch.overrides.TorchFunctionMode` watching op
arguments that share the tensor's storage); a second pass, without the watcher, stores the outputs of the
calls some probe will skip. The reference outputs come from a plain forward (no watcher, no wrapped calls),
done first. A call is replayed only when it is safe to skip:

- the forward is deterministic: the storing pass reproduces the plain forward's outputs bit for bit, with
  the same calls in the same order (a watched op can make torch take another path, e.g. the fast path of
  ``nn.TransformerEncoderLayer``; then the calls differ and replay is off);
- the call changed none of the tensors it was given; in its module's subtree, no buffer (same objects, same
  values), no parameter (version counters), no module attribute (each ``vars()`` entry the same object) and
  no entry of ``_parameters`` / ``_buffers`` / ``_modules``;
- the call drew no random numbers (``torch.get_rng_state()`` unchanged across it);
- each probe checks that the calls come in the recorded order, module by module.

Otherwise (or when a tensor's first use was not seen, or a needed output was not stored) the probe runs the
full forward. Limits: a call that changes state outside its module's subtree (another module's attribute, a
global) is not detected; stored outputs are capped at :data:`MAX_STORED_BYTES` in all, the calls beyond the
cap are not stored and the probes that would skip them run in full. Replayed outputs are copies, so code that
changes them in place does not reach the stored ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ["CallReplay", "MAX_STORED_BYTES"]

#: bytes of stored call outputs per :class:`CallReplay` (all batches); beyond it, probes run full forwards
MAX_STORED_BYTES = 512 * 2**20

log = logging.getLogger(__name__)


class _Diverged(Exception):
    """A probe's calls did not follow the recorded order: it reruns without replay."""


@dataclass
class _Call:
    module: torch.nn.Module
    start: int          #: event tick at the call's start
    end: int = -1       #: event tick at its end
    after: int = -1     #: index of the first call after its subtree (pre-order)
    safe: bool = True   #: changed none of its inputs nor its subtree's state, drew no random numbers


@dataclass
class _Batch:
    calls: list[_Call] = field(default_factory=list)
    first_use: dict[int, int] = field(default_factory=dict)  #: storage pointer -> tick of its first use
    stored: dict[int, Any] = field(default_factory=dict)     #: call index -> its output


#: tensor functions that read metadata, not values (``__get__``: attributes such as ``.device``, ``.shape``)
_METADATA = frozenset({"__get__", "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
                       "data_ptr", "element_size", "is_floating_point", "is_complex", "is_contiguous",
                       "untyped_storage", "get_device", "__len__"})


class _FirstUse(TorchFunctionMode):
    """Ticks the first op whose tensor arguments share storage with a watched tensor."""

    def __init__(self, watched: set[int], clock: list[int], seen: dict[int, int]):
        super().__init__()
        self.watched, self.clock, self.seen = watched, clock, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _METADATA:
            return func(*args, **kwargs)
        used = []
        for a in tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                try:
                    ptr = a.untyped_storage().data_ptr()
                except (RuntimeError, NotImplementedError):  # tensors without storage
                    continue
                if ptr in self.watched and ptr not in self.seen:
                    used.append((a, ptr))
        out = func(*args, **kwargs)
        for a, ptr in used:
            if out is not a:  # an op giving the tensor itself back (.to() to where it is) computes nothing
                self.clock[0] += 1
                self.seen.setdefault(ptr, self.clock[0])
        return out


def _clone(obj: Any) -> Any:
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, obj)


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(obj) if isinstance(t, torch.Tensor))


class _State:
    """What a call could change in its module's subtree besides its output: buffers (objects and values),
    parameters (objects and version counters), module attributes (objects)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        subtree = list(module.modules())
        self.attrs = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in subtree]
        self.buffers = [(n, b, b.clone()) for n, b in module.named_buffers()]
        self.versions = [(p, p._version) for p in module.parameters()]
        self.rng = torch.get_rng_state()

    def unchanged(self) -> bool:
        for m, attrs, params, bufs, mods in self.attrs:
            for saved, now in ((attrs, vars(m)), (params, m._parameters), (bufs, m._buffers), (mods, m._modules)):
                if saved.keys() != now.keys() or any(now[k] is not v for k, v in saved.items()):
                    return False
        now_buffers = list(self.module.named_buffers())
        if len(now_buffers) != len(self.buffers):
            return False
        for (n, b, copy), (n2, b2) in zip(self.buffers, now_buffers):
            if n != n2 or b is not b2 or not _equal(b, copy):
                return False
        if any(p._version != v for p, v in self.versions):
            return False
        return torch.equal(torch.get_rng_state(), self.rng)


class CallReplay:
    """The module calls of ``forward(model, batch)`` over ``batches``, recorded to be replayed by probes of
    the tensors in ``watched`` (``{name: tensor}``); see the module docstring. Use under ``torch.no_grad``."""

    def __init__(self, model: torch.nn.Module, batches: Sequence[Any],
                 forward: Callable[[torch.nn.Module, Any], Any], watched: dict[str, torch.Tensor],
                 max_stored_bytes: int | None = None):
        #: cap on the stored outputs' bytes (default :data:`MAX_STORED_BYTES`)
        self.max_stored_bytes = MAX_STORED_BYTES if max_stored_bytes is None else max_stored_bytes
        self._stored_bytes = 0
        self.model, self.batches, self.forward = model, list(batches), forward
        self.modules = list(dict.fromkeys(model.modules()))
        self.ptr = {name: t.untyped_storage().data_ptr() for name, t in watched.items()}
        self._batches: list[_Batch] = []
        self._mode = "off"
        self._batch: _Batch | None = None
        self._next = 0       # index of the next call (replay, store)
        self._cut: set[int] = set()
        self._need: set[int] = set()
        self._clock = [0]
        #: False: every probe runs the full forward (TorchScript modules, whose forward cannot be wrapped; or a
        #: forward found not deterministic)
        self.enabled = not any(isinstance(m, torch.jit.ScriptModule) for m in self.modules)

    def reference(self) -> list[Any]:
        """The float model's outputs, one per batch, from a plain forward; then the calls are recorded and
        the needed outputs stored. Replay is off (:attr:`enabled` False) when the storing pass does not
        reproduce the plain outputs bit for bit with the recorded calls."""
        outs = [self.forward(self.model, b) for b in self.batches]
        if not self.enabled:
            return outs
        for b in self.batches:
            batch = _Batch()
            self._batches.append(batch)
            self._batch = batch
            with self._patched("record"), _FirstUse(set(self.ptr.values()), self._clock, batch.first_use):
                self.forward(self.model, b)
        needed = [set().union(*(self._skipped(k, name) for name in self.ptr)) for k in range(len(self.batches))]
        for k, b in enumerate(self.batches):
            self._batch, self._need = self._batches[k], needed[k]
            self._next = 0
            try:
                with self._patched("store"):
                    again = self.forward(self.model, b)
                if self._next != len(self._batch.calls):
                    raise _Diverged
            except _Diverged:
                again = None
            if again is None or not _equal(again, outs[k]):
                log.debug("sensitivity: the forward is not reproduced with the recorded calls; probes run in full")
                self.enabled = False
                self._batches.clear()
                break
        return outs

    def _skipped(self, k: int, name: str) -> set[int]:
        """Indices of the outermost calls of batch ``k`` that end before ``name`` is first used (empty when
        its use was never seen)."""
        batch = self._batches[k]
        first = batch.first_use.get(self.ptr[name])
        out: set[int] = set()
        if first is None:
            return out
        i = 0
        while i < len(batch.calls):
            c = batch.calls[i]
            if c.start > first:
                break
            if c.end < first and c.safe:
                out.add(i)
                i = c.after
            else:
                i += 1
        return out

    def outputs(self, name: str) -> list[Any]:
        """``forward`` over the batches with tensor ``name`` (perturbed by the caller), replaying the calls
        that end before its first use."""
        outs = []
        for k, b in enumerate(self.batches):
            cut = self._skipped(k, name) if self.enabled else set()
            if cut and not cut <= self._batches[k].stored.keys():
                cut = set()  # an output beyond the memory cap: full forward
            if cut:
                self._batch, self._cut, self._next = self._batches[k], cut, 0
                try:
                    with self._patched("replay"):
                        outs.append(self.forward(self.model, b))
                    continue
                except _Diverged:
                    log.debug("sensitivity: calls of %s diverged from the recorded ones; full forward", name)
            outs.append(self.forward(self.model, b))
        return outs

    @contextmanager
    def _patched(self, mode: str) -> Iterator[None]:
        saved = {m: m.__dict__.get("forward") for m in self.modules}
        self._mode = mode
        try:
            for m in self.modules:
                m.forward = self._wrap(m, m.forward)
            yield
        finally:
            self._mode = "off"
            for m, f in saved.items():
                if f is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = f

    def _wrap(self, module: torch.nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)  # keeps the signature for code that inspects forward
        def forward(*args: Any, **kwargs: Any) -> Any:
            batch = self._batch
            assert batch is not None  # set by the caller of _patched
            if self._mode == "record":
                self._clock[0] += 1
                call = _Call(module, self._clock[0])
                batch.calls.append(call)
                given = (args, kwargs)
                before = _clone(given)
                state = _State(module)
                out = original(*args, **kwargs)
                call.safe = _equal(given, before) and state.unchanged()
                self._clock[0] += 1
                call.end, call.after = self._clock[0], len(batch.calls)
                return out
            i = self._next
            if i >= len(batch.calls) or batch.calls[i].module is not module:
                raise _Diverged
            self._next += 1
            if self._mode == "replay" and i in self._cut:
                self._next = batch.calls[i].after
                return _clone(batch.stored[i])
            out = original(*args, **kwargs)
            if self._mode == "store" and i in self._need:
                size = _nbytes(out)
                if self._stored_bytes + size <= self.max_stored_bytes:
                    batch.stored[i] = _clone(out)
                    self._stored_bytes += size
            return out

        return forward


def _equal(a: Any, b: Any) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and not (x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)):
            return False
    return True
