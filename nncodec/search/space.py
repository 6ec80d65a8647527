"""The search space a reference model defines: per layer, quantizers; per width group, a multiplier.

Every conv / linear / embedding / recurrent layer gets a kernel and a bias quantizer from a library; the
activation module that reads its output (directly or through a batch-norm) gets an activation quantizer,
and a layer with no such activation (a projection feeding a residual sum, an attention projection) gets
an output quantizer instead (signed templates), except the model's last layer. Activation modules that
follow no layer (a relu after a residual sum) get their own choice, and so do the outputs of layer / group
norms and of blocks that end in a residual sum or an attention (``module_outputs``; bit keys ``norm``,
``sum``, ``attention``). Batch norms get quantizers for
their folded per-channel scale and shift (``norms``): the bitstream stores them at those bits. Each width group (coupled channels,
see :mod:`nncodec.prune.graph`) gets one width multiplier; groups that cannot widen only shrink. Layers
can share one choice through glob patterns (``share={"conv*": "convs"}``); ``width_mode="block"`` shares
one width multiplier among all groups. Quantizer templates may use ``{b}`` (bits) and ``{i}`` (integer
bits, fitted to the reference: the power of two covering the layer's largest weight / 99.99th
percentile activation).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..energy.graph import OP_KINDS
from ..checks import is_number
from ..errors import ConfigError
from ..prune.graph import GroupAnalysis, example_batch, fnmatch_any
from ..quant.base import get_quantizer
from ..quant.input_steps import check_foldable
from ..quant.layers import ACTIVATION_TYPES, fold_batch_norm, read_without_call, tied_parameters, tied_weights
from ..quant.plan import LayerPlan, Plan

log = logging.getLogger(__name__)

__all__ = ["SearchSpace", "LayerSpace", "DEFAULT_KERNELS", "DEFAULT_ACTIVATIONS", "DEFAULT_SIGNED_ACTIVATIONS",
           "DEFAULT_BIASES", "DEFAULT_NORMS", "WIDTHS", "INPUT_TEMPLATES", "layer_kind"]

WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_KERNELS = ("binary(alpha='auto_po2')", "ternary(alpha='auto_po2')", "quantized_po2_zero(4,1)",
                   "quantized_bits({b},{i},1)")
DEFAULT_ACTIVATIONS = ("quantized_relu({b},{i})",)
#: for outputs that may be negative (layer outputs, GELU / tanh / norm outputs)
DEFAULT_SIGNED_ACTIVATIONS = ("quantized_bits({b},{i},1)",)
DEFAULT_BIASES = ("quantized_bits({b},{i},1)",)
#: batch norms: their folded per-channel scale and shift (see :class:`~nncodec.quant.layers.QBatchNorm2d`), with
#: a per-tensor step fitted at every step: a range fitted to the reference clips them once the layer before
#: is quantized (its outputs' variance, so the folded scale, moves far from the reference's)
DEFAULT_NORMS = ("quantized_bits({b},0,1,alpha='auto')",)
#: bit widths tried for templates with {b}, per layer kind and role
DEFAULT_BITS = {"kernel": {"conv": (2, 3, 4, 6, 8), "dense": (2, 3, 4, 6, 8), "embedding": (4, 6, 8),
                           "recurrent": (4, 6, 8), "norm": (8,)},
                "activation": {"conv": (2, 3, 4, 6, 8), "dense": (4, 8), "embedding": (8,), "recurrent": (8,),
                               "activation": (4, 8), "norm": (4, 8), "sum": (4, 8), "attention": (4, 8)},
                "bias": {"conv": (8, 16), "dense": (8, 16), "embedding": (8,), "recurrent": (8, 16), "norm": (8,)},
                #: per-input-channel input steps of Linear layers (:mod:`nncodec.quant.input_steps`): none by default
                "input": {"dense": ()}}
#: template of a Linear layer's requantized input: the per-channel steps put its range at +-1
INPUT_TEMPLATES = ("quantized_bits({b},0,1)",)
_RELU_LIKE = (nn.ReLU, nn.ReLU6)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def layer_kind(module: nn.Module) -> str | None:
    """conv, dense, embedding or recurrent for the layers the search quantizes; None otherwise."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.GRU, nn.LSTM, nn.RNN)):
        return "recurrent"
    return None


@dataclass
class LayerSpace:
    name: str                 #: quantized layer, or an activation module that follows no layer
    kind: str                 #: conv, dense, embedding, recurrent, norm (folded batch norm: kernel = scale,
                              #: bias = shift) or activation (an output choice only)
    group: str                #: choices are shared by layers of one group
    kernel: list[str]
    bias: list[str]
    activation_module: str | None   #: module the activation choice applies to (the layer itself: its output)
    activation: list[str]
    widths: list[float]       #: multipliers of the width group this layer names ([1.0]: none)
    #: requantized-input choices of a Linear layer (per-input-channel steps folded into its weight)
    input: list[str] = field(default_factory=list)
    #: the group whose kernel choice this layer takes ("": its own ``group``); layers with a tied weight share
    #: the kernel only, their bias, activation and input choices stay their groups'
    kernel_group: str = ""

    def key(self, role: str) -> str:
        """The parameter name of this layer's ``role`` choice (kernel, bias, activation, input)."""
        return f"{self.kernel_group or self.group if role == 'kernel' else self.group}.{role}"


def _int_bits(peak: float) -> int:
    return int(max(-16, min(16, math.ceil(math.log2(peak))))) if peak > 0 else 0


def _expand(templates: tuple[str, ...] | list[str], bits: tuple[int, ...],
            integer: "int | Callable[[str, int | None], int]") -> list[str]:
    """Specs of ``templates`` at each of ``bits``; ``integer``: the ``{i}`` value, or a function of (template,
    bits) giving it (ranges fitted per bit width)."""
    out: list[str] = []
    for t in templates:
        for b in (bits if "{b}" in t else (None,)):
            i = integer(t, b) if callable(integer) else integer
            spec = t.format(b=b, i=i) if ("{" in t) else t
            get_quantizer(spec)  # validate now
            if spec not in out:
                out.append(spec)
    return out


@dataclass
class SearchSpace:
    layers: list[LayerSpace]
    example_inputs: Any                        #: input shape (no batch dim), a tensor or a tuple of tensors
    width_mode: str = "layer"
    fixed: Plan = field(default_factory=Plan)  #: choices frozen by block search
    width_choices: dict[str, list[float]] = field(default_factory=dict)   #: width group -> multipliers
    width_members: dict[str, list[str]] = field(default_factory=dict)     #: width group -> its producers

    @property
    def input_shape(self) -> Any:
        """Alias of ``example_inputs`` (a shape for image models)."""
        return self.example_inputs

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Any, sample: "np.ndarray | torch.Tensor | tuple | None" = None,
                   *, kernels: tuple[str, ...] = DEFAULT_KERNELS, activations: tuple[str, ...] = DEFAULT_ACTIVATIONS,
                   signed_activations: tuple[str, ...] = DEFAULT_SIGNED_ACTIVATIONS,
                   biases: tuple[str, ...] = DEFAULT_BIASES, bits: dict[str, dict[str, tuple[int, ...]]] | None = None,
                   widths: tuple[float, ...] = WIDTHS, width_mode: str = "layer", share: dict[str, str] | None = None,
                   keep_width: tuple[str, ...] = (), group_widths: dict[str, tuple[float, ...]] | None = None,
                   skip: tuple[str, ...] = (),
                   layer_outputs: bool = True, module_outputs: bool = True,
                   norms: tuple[str, ...] = DEFAULT_NORMS, activation_range: str = "percentile") -> "SearchSpace":
        """Build the space for ``model``; ``sample`` (a few inputs) fits the activations' integer bits.

        ``group_widths``: ``{pattern: multipliers}``, the width choices of the groups a glob pattern matches
        (by the group's name or one of its producing layers; the first matching pattern wins) instead of
        ``widths``, e.g. ``{"stage3.*": (0.5,)}``; one multiplier fixes the group's width. A pattern that
        matches no width group (or only groups ``keep_width`` fixes) is a ConfigError.
        ``skip``: patterns of layers (and norms) left unquantized (kept at the reference's precision).
        ``layer_outputs``: give layers without an activation after them an output quantizer.
        ``module_outputs``: give an output quantizer to norms other than batch norms (layer / group norms)
        and to blocks whose output is a residual sum or an attention / matmul result they compute, so that the layers reading them multiply
        at the chosen bits (unquantized, the energy model prices a sum at its operands' widest type, int32 when an
        accumulator feeds it, and an attention / matmul result at int32).
        ``norms``: templates of the folded scale / shift quantizers of batch norms (``()``: batch norms stay
        float32 in the bitstream).
        ``bits``: ``{role: {key: bit widths}}``, role ``kernel`` / ``activation`` / ``bias`` / ``input``, key a
        layer kind (``DEFAULT_BITS``) or a ``share`` group name (wins over the kind: e.g. 16-bit outputs for the
        projections that feed a transformer's residual sums, where fewer bits save little energy). ``input``
        (none by default): the bits a group of Linear layers requantizes its input to with per-input-channel
        steps folded into its weights (:mod:`~nncodec.quant.input_steps`, template :data:`INPUT_TEMPLATES`;
        the steps are fitted when a candidate is built); their kernel templates must have per-output-channel
        steps (else ConfigError), and a key naming no Linear group is a ConfigError.
        ``activation_range``: how ``{i}`` of activation templates is fitted on ``sample``: ``"percentile"``
        (the power of two covering the 99.99th percentile of |value|), ``"max"`` (covering the largest
        value: nothing clips) or ``"mse"`` (per template and bit width, the ``{i}`` whose quantizer has the
        least squared error on the sample: clipping outliers against rounding the bulk).
        Every layer fits its own ``{i}``; layers of a shared group share the template and bit choice.
        """
        if width_mode not in ("layer", "block"):
            raise ConfigError(f"width_mode must be 'layer' or 'block', got {width_mode!r}")
        widths = _multipliers(widths, "widths")
        if not isinstance(group_widths or {}, dict):
            raise ConfigError(f"group_widths must be a dict {{pattern: multipliers}}, got {group_widths!r}")
        group_widths = {pat: _multipliers(ws, f"group_widths[{pat!r}]") for pat, ws in (group_widths or {}).items()}
        if group_widths and width_mode == "block":
            raise ConfigError("group_widths gives groups their own width choices; width_mode='block' shares one "
                              "choice among all groups: use one of them")
        if activation_range not in _RANGE_FITS:
            raise ConfigError(f"activation_range must be one of {sorted(_RANGE_FITS)}, got {activation_range!r}")
        if not isinstance(bits or {}, dict) or set(bits or {}) - set(DEFAULT_BITS):
            raise ConfigError(f"bits: roles must be from {sorted(DEFAULT_BITS)}, got {sorted(bits or {})}")
        user_bits = bits or {}
        bits = {role: {**DEFAULT_BITS[role], **user_bits.get(role, {})} for role in DEFAULT_BITS}
        was = model.training
        model.eval()
        try:
            _check_runs(model, example_inputs)
            follows, order, owns = _follows(model, example_inputs)
            analysis = GroupAnalysis(model, example_inputs, keep=tuple(keep_width))
            groups = analysis.groups
        finally:
            model.train(was)
        widths_of, named = _group_widths(groups, widths, group_widths, analysis.fixed)
        width_choices = {g.name: _width_choices(g, widths_of[g.name]) for g in groups}
        for g in groups:  # a group a pattern named must get what was asked for it, not silently the full width
            if g.name in named and any(w != 1.0 for w in widths_of[g.name]) \
                    and not any(w != 1.0 for w in width_choices[g.name]):
                raise ConfigError(f"group_widths {named[g.name]!r} gives group {g.name!r} {list(widths_of[g.name])}, "
                                  f"none of which it can take (it cannot widen{': ' + g.reason if g.reason else ''})")
        modules = dict(model.named_modules())
        # activation modules: the known classes, and parameter-free leaves that compute an activation (GELU
        # classes of model libraries)
        act_names = [n for n in order if (isinstance(modules[n], ACTIVATION_TYPES) or
                                          (owns.get(n) == "activation" and not any(True for _ in
                                                                                     modules[n].parameters())))
                     and not isinstance(modules[n], nn.Identity)]
        unread = read_without_call(model)  # nn.MultiheadAttention's out_proj: a quantizer there would never run
        if unread:
            log.info("layers read by their parent without being called stay unquantized: %s", sorted(unread))
        quantized = [n for n, m in modules.items() if n and layer_kind(m) and
                     not fnmatch_any(n, skip) and n not in unread]
        if not quantized:
            raise ConfigError("the model has no conv, linear, embedding or recurrent layer to search")
        last = next((n for n in reversed(order) if n in quantized), quantized[-1])
        attached: dict[str, str] = {}
        for a in act_names:
            src = follows.get(a)
            while src is not None and isinstance(modules.get(src), _NORMS):
                src = follows.get(src)
            if src in quantized and src not in attached:
                attached[src] = a
        outputs = [n for n in owns if module_outputs and not fnmatch_any(n, skip) and n not in act_names and
                   not layer_kind(modules[n]) and ((owns[n] == "norm" and not isinstance(modules[n], _NORMS)) or
                                                   (owns[n] in ("add", "attention", "matmul") and
                                                    any(True for _ in modules[n].children())))]
        batch_norms = [n for n in order if norms and isinstance(modules[n], _NORMS) and not fnmatch_any(n, skip) and
                       modules[n].affine and modules[n].track_running_stats]
        samples = _activation_samples(model, act_names + outputs + [n for n in quantized if n not in attached],
                                      sample)

        def fit(name: str, floor: int | None = None) -> "Callable[[str, int | None], int]":
            """``{i}`` of ``name``'s activation templates (at least ``floor``)."""
            def integer(template: str, b: int | None) -> int:
                s = samples.get(name)
                i = _RANGE_FITS[activation_range](s, template, b) if s is not None else 0
                return i if floor is None else max(floor, i)
            return integer

        def kind_bits(role: str, kind: str, name: str) -> tuple[int, ...]:
            return bits[role].get(_group_of(name, share), bits[role][kind])
        width_of = {g.name: g for g in groups}
        layers = []
        for name in quantized:
            m = modules[name]
            kind = layer_kind(m) or "dense"
            ws = [p for pname, p in m.named_parameters(recurse=False) if pname.startswith("weight")]
            bs = [p for pname, p in m.named_parameters(recurse=False) if pname.startswith("bias")]
            w_int = _int_bits(max(float(w.detach().abs().max()) for w in ws))
            b_int = _int_bits(max(float(b.detach().abs().max()) for b in bs)) if bs else 0
            act = attached.get(name)
            if act is not None:
                templates = activations if isinstance(modules[act], _RELU_LIKE) else signed_activations
                act_choices = _expand(templates, kind_bits("activation", kind, name),
                                      fit(act, 0 if isinstance(modules[act], _RELU_LIKE) else None))
            elif layer_outputs and name != last and kind != "embedding":
                act = name
                act_choices = _expand(signed_activations, kind_bits("activation", kind, name), fit(name))
            else:
                act_choices = []
            group = _group_of(name, share)
            g = width_of.get(name)
            kernel_choices = _expand(kernels, kind_bits("kernel", kind, name), w_int)
            if kernels and not kernel_choices:  # the layer would silently stay unquantized (``skip`` says that)
                raise ConfigError(f"bits['kernel'] {kind_bits('kernel', kind, name)} leave {name!r} ({kind}) no kernel "
                                  f"choice: every template of {list(kernels)} needs {{b}}")
            input_bits = bits["input"].get(group, bits["input"].get(kind, ()))
            if input_bits and kind != "dense":
                raise ConfigError(f"bits['input'] gives {name!r} ({kind}) per-channel input steps: Linear layers only")
            if input_bits:
                for spec in kernel_choices:
                    check_foldable(name, get_quantizer(spec))
            layers.append(LayerSpace(name, kind, group, kernel_choices,
                                     _expand(biases, kind_bits("bias", kind, name), b_int) if bs else [], act,
                                     act_choices,
                                     list(width_choices[g.name]) if g else [1.0],
                                     _expand(INPUT_TEMPLATES, tuple(input_bits), 0) if input_bits else []))
        for a in act_names:
            if a not in attached.values():
                templates = activations if isinstance(modules[a], _RELU_LIKE) else signed_activations
                group = _group_of(a, share)
                layers.append(LayerSpace(a, "activation", group, [], [], a,
                                         _expand(templates, kind_bits("activation", "activation", a), fit(a, 0)),
                                         [1.0]))
        for n in outputs:  # layer / group norm outputs and residual sums
            kind = {"norm": "norm", "add": "sum"}.get(owns[n], "attention")
            group = _group_of(n, share)
            layers.append(LayerSpace(n, "activation", group, [], [], n,
                                     _expand(signed_activations, kind_bits("activation", kind, n), fit(n)),
                                     [1.0]))
        for n in batch_norms:  # folded scale (kernel) and shift (bias) of batch norms, for the bitstream
            with torch.no_grad():
                scale, shift = fold_batch_norm(modules[n])
            for role in ("kernel", "bias"):
                if norms and not _expand(norms, kind_bits(role, "norm", n), 0):
                    raise ConfigError(f"bits[{role!r}] {kind_bits(role, 'norm', n)} leave the batch norm {n!r} no "
                                      f"choice: every template of {list(norms)} needs {{b}} (norms=() keeps norms float)")
            layers.append(LayerSpace(n, "norm", _group_of(n, share),
                                     _expand(norms, kind_bits("kernel", "norm", n), _int_bits(float(scale.abs().max()))),
                                     _expand(norms, kind_bits("bias", "norm", n), _int_bits(float(shift.abs().max()))),
                                     None, [], [1.0]))
        ties = tied_parameters(model)
        _tie_choices(layers, ties, skip)
        known_keys = set(DEFAULT_BITS["kernel"]) | set(DEFAULT_BITS["activation"]) | {lay.group for lay in layers}
        odd = sorted(set(user_bits.get("input", {})) - {"dense"} - {lay.group for lay in layers if lay.input})
        if odd:
            tied = sorted(tied_weights(model, ties))
            raise ConfigError(f"bits['input'] key(s) {odd} name no group of Linear layers (per-channel input steps "
                              "apply to Linear layers only, and not to layers with a tied weight"
                              f"{': ' + str(tied[:8]) if tied else ''})")
        for role, by_key in user_bits.items():
            unknown = sorted(set(by_key) - known_keys)
            if unknown:
                raise ConfigError(f"bits[{role!r}] key(s) {unknown} name no layer kind and no share group of the model; "
                                  f"kinds: {sorted(DEFAULT_BITS[role])}, groups: {sorted({lay.group for lay in layers})[:8]}")
        # a group keeps its width parameter unless it has no width but the full one (nothing to choose or
        # apply): a single other width (``widths=(0.75,)``) is applied to every group, not ignored
        width_choices = {k: v for k, v in width_choices.items() if any(w != 1.0 for w in v)}
        return cls(layers, example_inputs, width_mode, Plan(), width_choices,
                   {g.name: list(g.producers) for g in groups if g.name in width_choices})

    # -- parameters -------------------------------------------------------------------------
    def _width_key(self, group: str) -> str:
        return "all.width" if self.width_mode == "block" else f"{group}.width"

    def _groups_of(self, only: set[str] | None) -> list[str]:
        if only is None:
            return list(self.width_choices)
        return [g for g, members in self.width_members.items() if g in only or only & set(members)]

    def parameters(self, only: set[str] | None = None) -> dict[str, list[Any]]:
        """Categorical parameters ``{name: choices}`` (``only``: restrict to these layers)."""
        params: dict[str, list[Any]] = {}
        for layer in self.layers:
            if only is not None and layer.name not in only:
                continue
            for role in ("kernel", "bias", "activation", "input"):
                if getattr(layer, role):
                    params.setdefault(layer.key(role), getattr(layer, role))
        for g in self._groups_of(only):
            key = self._width_key(g)
            if key in params and params[key] != self.width_choices[g]:
                params[key] = sorted(set(params[key]) & set(self.width_choices[g]))
            else:
                params.setdefault(key, self.width_choices[g])
        return params

    def plan_from(self, choices: dict[str, Any]) -> Plan:
        """The plan that a set of parameter values describes (layers without a value keep the fixed plan)."""
        plan = Plan(dict(self.fixed.layers), self.fixed.default, dict(self.fixed.widths))
        params = self.parameters()
        for layer in self.layers:
            kernel, bias, act = (_own_spec(choices.get(layer.key(role)), params.get(layer.key(role)),
                                           getattr(layer, role)) for role in ("kernel", "bias", "activation"))
            if kernel is None and act is None:
                continue
            inp = (_own_spec(choices.get(layer.key("input")), params.get(layer.key("input")), layer.input)
                   if layer.input else None)
            if layer.kind != "activation":
                if layer.activation_module == layer.name:
                    plan.layers[layer.name] = LayerPlan(kernel=kernel, bias=bias, activation=act, input=inp)
                    continue
                plan.layers[layer.name] = LayerPlan(kernel=kernel, bias=bias, input=inp)
            if layer.activation_module and act is not None:
                plan.layers[layer.activation_module] = LayerPlan(activation=act)
        for g in self.width_choices:
            key = self._width_key(g)
            if key not in choices:  # a one-choice width (``widths=(0.75,)``) applies without being chosen
                if len(self.width_choices[g]) == 1:
                    plan.widths[g] = float(self.width_choices[g][0])
                continue
            if choices[key] != 1.0 and choices[key] in self.width_choices[g]:
                plan.widths[g] = float(choices[key])
            else:
                plan.widths.pop(g, None)
        return plan

    def size(self) -> int:
        """Number of distinct candidates."""
        return math.prod(len(v) for v in self.parameters().values())


def _check_runs(model: nn.Module, example_inputs: Any) -> None:
    """Raise :class:`ConfigError` when ``model`` cannot run on ``example_inputs`` (a shape gives float zeros:
    token ids need a LongTensor), naming what it was given, before the analyses fail deep inside."""
    batch = example_batch(example_inputs)
    try:
        with torch.no_grad():
            model(*batch)
    except Exception as exc:  # noqa: BLE001  (any error of the user's forward)
        given = ", ".join(f"{t.dtype} {list(t.shape)}" for t in batch)
        raise ConfigError(f"the model cannot run on the example inputs ({given}): {type(exc).__name__}: {exc}; "
                          "give the input shape without the batch dimension (float inputs) or example tensors "
                          "(token ids as a LongTensor, several inputs as a tuple)"[:600]) from None


def _tie_choices(layers: list[LayerSpace], ties: list[list[tuple[str, str]]], skip: tuple[str, ...]) -> None:
    """Layers sharing a weight tensor (tied weights) make one kernel choice: their kernel groups merge into
    the first one's (``kernel_group``; their bias, activation and input choices stay their own, as only the
    weight is shared) and each offers the kernels valid for all of them (the same specs: one tensor, one
    fitted range); tied layers get no input choice. A ConfigError when some of them are quantized and others
    not (``skip``, or a layer its parent reads without calling it), or when they have no kernel in common."""
    by_name = {lay.name: lay for lay in layers if lay.kind != "activation"}
    for uses in ties:
        weights = [(n, p) for n, p in uses if p.startswith("weight")]
        names = list(dict.fromkeys(n for n, _ in weights))
        members = [by_name[n] for n in names if n in by_name]
        if not members:
            continue
        if len(members) < len(names):
            left = [n for n in names if n not in by_name]
            why = " (skip)" if any(fnmatch_any(n, skip) for n in left) else ""
            raise ConfigError(f"{', '.join(repr(m.name) for m in members)} share a weight with {left}, which the "
                              f"search leaves unquantized{why}: tied layers are quantized together or not at all")
        if len(members) < 2:
            continue
        common = [k for k in members[0].kernel if all(k in m.kernel for m in members[1:])]
        if not common:
            raise ConfigError(f"tied layers {names} share one weight but have no kernel choice in common "
                              f"({[m.kernel for m in members]}); give them common bits")
        target = members[0].kernel_group or members[0].group
        merged = {m.kernel_group or m.group for m in members}
        for lay in layers:  # a share group's other layers follow (their kernel key was one with a member's)
            if lay.kernel and (lay.kernel_group or lay.group) in merged:
                lay.kernel_group = target
        for m in members:
            m.kernel = list(common)
            if m.input:  # per-channel input steps fold into the weight: they would rescale the shared tensor
                log.info("tied layer %r: no input-steps choice (its weight is shared with %s)", m.name,
                         [n for n in names if n != m.name])
                m.input = []
        log.info("tied layers %s: one kernel choice (%r)", names, f"{target}.kernel")


def _own_spec(value: Any, shared: list[str] | None, own: list[str]) -> Any:
    """A layer's own spec for the value chosen for its group: the same position in its own list (same
    template and bits; ``{i}`` fitted to this layer), else the value itself."""
    if value is None or not shared or shared is own or len(shared) != len(own) or value not in shared:
        return value
    return own[shared.index(value)]


def _group_of(name: str, share: dict[str, str] | None) -> str:
    """The choice group of ``name``: the group of the first ``share`` pattern it matches, else its own name."""
    return next((g for pat, g in (share or {}).items() if fnmatch.fnmatchcase(name, pat)), name)


def _multipliers(widths: Any, what: str) -> tuple[float, ...]:
    """``widths`` (a sequence of positive multipliers) as a tuple; else a ConfigError naming ``what``."""
    widths = tuple(widths) if isinstance(widths, (tuple, list)) else widths
    if not isinstance(widths, tuple) or not widths or not all(is_number(w) and 0 < w < math.inf for w in widths):
        raise ConfigError(f"{what} must be a non-empty sequence of positive multipliers (1.0: the reference's "
                          f"width), got {widths!r}")
    return widths


def _group_widths(groups: list[Any], widths: tuple[float, ...], patterns: dict[str, tuple[float, ...]],
                  fixed: dict[str, str]) -> tuple[dict[str, tuple[float, ...]], dict[str, str]]:
    """Each group's multipliers: those of the first pattern matching its name or a producer, else ``widths``;
    and ``{group: pattern}`` of the groups a pattern gave them. A ConfigError for a pattern that matches no
    group (``fixed``: ``{layer: why its width is fixed}``, named in the error)."""
    out: dict[str, tuple[float, ...]] = {}
    named: dict[str, str] = {}
    for g in groups:
        names = (g.name, *g.producers)
        pat = next((p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)), None)
        out[g.name] = widths if pat is None else patterns[pat]
        if pat is not None:
            named[g.name] = pat
    unused = [p for p in patterns if p not in named.values()]
    if unused:
        hit = {p: r for p in unused for n, r in fixed.items() if fnmatch.fnmatchcase(n, p)}
        why = "; ".join(f"{p!r} names a layer whose width is fixed: {r}" for p, r in hit.items())
        raise ConfigError(f"group_widths pattern(s) {unused} apply to no width group (none matches by name or "
                          f"producing layer, or an earlier pattern took it){'; ' + why if why else ''}; "
                          f"groups: {[g.name for g in groups][:12]}")
    return out, named


def _width_choices(group: Any, widths: tuple[float, ...]) -> list[float]:
    """Multipliers of one group: distinct resulting sizes only, no widening where the group cannot widen."""
    out: list[float] = []
    sizes: set[int] = set()
    for w in sorted(widths, key=lambda v: (v != 1.0, v)):
        if w > 1.0 and not group.can_widen:
            continue
        n = group.resized(w)  # the size the resize gives (a multiple of the group's blocks)
        if n not in sizes:
            sizes.add(n)
            out.append(float(w))
    return sorted(out)


_MOVES = {"reshape", "transpose", "permute", "clone", "reshape_alias", "unsafe_view", "view", "expand"}


def _op_kind(out: torch.Tensor, through_moves: bool) -> str | None:
    """The energy model's kind (``OP_KINDS``) of the operation that computed ``out``, from its autograd graph;
    ``through_moves``: through reshapes, transposes and copies (the operation whose values ``out`` holds),
    else ``"reshape"`` for those."""
    fn = getattr(out, "grad_fn", None)
    for _ in range(16 if through_moves else 1):
        if fn is None:
            return None
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", re.sub(r"Backward\d*$", "", type(fn).__name__)).lower()
        if name.startswith("scaled_dot_product"):
            return "attention"
        if name not in _MOVES and OP_KINDS.get(name) != "reshape":
            return OP_KINDS.get(name)
        fn = next((f for f, _ in fn.next_functions if f is not None), None)
    return None if through_moves else "reshape"


def _follows(model: nn.Module, example_inputs: Any) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """For each leaf module, the leaf module whose output it reads (when it reads one directly), and the call
    order; and for every module that computes its own output (not a child's, not its input), the kind of the
    operation that did (``"add"``: a block ending in a residual sum, ``"norm"``, ``"activation"`` ...)."""
    produced: dict[int, str] = {}
    created: set[int] = set()
    follows: dict[str, str] = {}
    owns: dict[str, str] = {}
    order: list[str] = []
    keep: list[Any] = []
    hooks = []
    for name, m in model.named_modules():
        if not name:
            continue
        leaf = not (any(True for _ in m.children()) and not layer_kind(m))

        def hook(mod: nn.Module, inputs: tuple, output: Any, name: str = name, leaf: bool = leaf) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor):
                keep.append(out)
                if id(out) not in created and not any(out is t for t in inputs):
                    created.add(id(out))
                    kind = _op_kind(out, through_moves=not leaf)
                    if kind is not None:
                        owns[name] = kind
            if not leaf:
                return
            if inputs and isinstance(inputs[0], torch.Tensor) and id(inputs[0]) in produced:
                follows.setdefault(name, produced[id(inputs[0])])
            if isinstance(out, torch.Tensor):
                produced[id(out)] = name
            order.append(name)

        hooks.append(m.register_forward_hook(hook))
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    try:
        for p in frozen:  # autograd nodes name the operations
            p.requires_grad_(True)
        with torch.enable_grad():
            model(*example_batch(example_inputs))
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    return follows, list(dict.fromkeys(order)), owns


#: values kept per module for fitting ranges (an even subsample; the largest |value| is always kept)
_SAMPLE_VALUES = 200_000


@dataclass
class _Observed:
    """A module's output on the sample: an even subsample of its finite values (with its largest |value|) and
    the 99.99th percentile of |value| over its first million finite values."""
    values: torch.Tensor
    percentile: float


def _percentile_integer(seen: _Observed, template: str, bits: int | None) -> int:
    return _int_bits(seen.percentile)


def _max_integer(seen: _Observed, template: str, bits: int | None) -> int:
    return _int_bits(float(seen.values.abs().max()))


def _mse_integer(seen: _Observed, template: str, bits: int | None) -> int:
    """The ``{i}`` (from 8 below the largest value's power of two up to it) whose quantizer has the least
    squared error on the observed values."""
    values = seen.values
    top = _int_bits(float(values.abs().max()))
    errors = {}
    for i in range(top - 8, top + 1):
        q = get_quantizer(template.format(b=bits, i=i))
        errors[i] = float((q.quantize(values) - values).pow(2).mean())
    return min(errors, key=lambda i: (errors[i], -i))


_RANGE_FITS: dict[str, Callable[[_Observed, str, "int | None"], int]] = {
    "percentile": _percentile_integer, "max": _max_integer, "mse": _mse_integer}


@torch.no_grad()
def _activation_samples(model: nn.Module, names: list[str], sample: Any) -> dict[str, _Observed]:
    """Per module of ``names``: its output on ``sample`` (256 examples at most)."""
    if sample is None or not names:
        return {}
    peaks: dict[str, _Observed] = {}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
            out = (output[0] if isinstance(output, tuple) else output).detach().reshape(-1).float()
            out = out[torch.isfinite(out)]  # masks (-inf before a softmax) say nothing of the range
            kept = out[::max(1, out.numel() // _SAMPLE_VALUES)]
            if out.numel():
                peaks[name] = _Observed(torch.cat([kept, out[out.abs().argmax()].reshape(1)]),
                                        float(torch.quantile(out.abs()[:1_000_000], 0.9999)))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was = model.training
    model.eval()
    batch = tuple(torch.as_tensor(t[:256]) for t in sample) if isinstance(sample, (tuple, list)) else \
        (torch.as_tensor(sample[:256]),)
    try:
        model(*batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return peaks
