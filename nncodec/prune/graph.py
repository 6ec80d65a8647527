"""Structured pruning and widening on dependency graphs (residual, depthwise, recurrent and attention nets).

The coupled channel groups come from ``torch-pruning``'s DepGraph (Fang et al., CVPR 2023): channels
joined by residual additions or concatenations, depthwise convs and the norms that follow their
producers change together. nncodec adds what the library lacks or gets wrong:

- **recurrent layers** (``nn.GRU``, ``nn.LSTM``, ``nn.RNN``, any depth, one direction): the hidden size is one
  group (torch's recurrent modules have one hidden size for all their layers), coupled with the layers
  that read the output;
- **attention heads** of modules following the Hugging Face convention (``query``/``key``/``value``
  linears, ``num_attention_heads``, ``attention_head_size``, ``all_head_size`` attributes; BERT,
  MiniLM, ...): whole heads are removed or added, with the projection that reads the context;
- **widening**: new channels are initialised so the network computes what it did until trained
  (fresh producer rows, zero consumer columns, identity batch-norm). Groups holding a layer-norm,
  an embedding table or a concatenation cannot widen without changing the function: they only shrink.

Shrinking keeps the most important channels: L1 / L2 norm of everything the channel touches, or a
first-order Taylor score ``|w * dL/dw|`` after a backward pass on data (``gradient_fn``). A group whose
channels reach the model output (the classifier, an embedding model's output dimension) is fixed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checks import is_number
from ..energy.graph import example_tensors as example_batch
from ..errors import ConfigError
from ..quant.layers import has_input_steps, tied_parameters

__all__ = ["WidthGroup", "GroupAnalysis", "Resizer", "width_groups", "resize_groups", "group_importance",
           "example_batch", "is_attention", "new_size"]

log = logging.getLogger(__name__)

_RECURRENT = (nn.GRU, nn.LSTM, nn.RNN)
_GATES = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding, nn.GRU, nn.LSTM, nn.RNN)


def is_attention(module: nn.Module) -> bool:
    """Does ``module`` follow the Hugging Face self-attention convention nncodec prunes heads of?"""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")) and \
        all(isinstance(getattr(module, n, None), int) for n in ("num_attention_heads", "attention_head_size"))


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _output_tensors(v)]
    return []


# -- torch-pruning handlers for what it does not cover ------------------------------------------------------
def _slice_param(module: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    p = getattr(module, name)
    new = nn.Parameter(p.detach().index_select(dim, idx).contiguous(), requires_grad=p.requires_grad)
    setattr(module, name, new)


def _grow_param(module: nn.Module, name: str, dim: int, extra: torch.Tensor) -> None:
    p = getattr(module, name)
    new = nn.Parameter(torch.cat([p.detach(), extra.to(p.dtype)], dim).contiguous(), requires_grad=p.requires_grad)
    setattr(module, name, new)


def _rnn_names(layer: nn.Module, k: int) -> list[str]:
    return [n for n in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}") if hasattr(layer, n)]


def _input_weights(layer: nn.Module) -> list[str]:
    """The weights reading a recurrent layer's input: the first layer's, of both directions."""
    return ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if layer.bidirectional else [])


class _Opaque(torch.autograd.Function):
    """One autograd node from a module's input to its outputs (copies), for the dependency tracer."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: ANN401
        ctx.shape = x.shape
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:  # noqa: ANN401
        return (torch.zeros(ctx.shape), *(None for _ in grads))


def _opaque_forward(layer: nn.Module) -> Callable[..., Any]:
    """A forward for ``layer`` (a bidirectional or projected recurrent layer) that the dependency tracer sees
    as one node from its input to its outputs: the internals of these layers (the directions' concatenation)
    are not something torch-pruning can follow. The outputs are the layer's own."""
    original = layer.forward

    def forward(x: Any, hx: Any = None) -> Any:
        if not isinstance(x, torch.Tensor):
            return original(x, hx)
        with torch.no_grad():
            out, h = original(x, hx)
        hs = list(h) if isinstance(h, tuple) else [h]
        out, *hs = _Opaque.apply(x, out, *hs)
        return out, (tuple(hs) if isinstance(h, tuple) else hs[0])
    return forward


def _gate_index(keep: torch.Tensor, hidden: int, gates: int) -> torch.Tensor:
    return torch.cat([keep + g * hidden for g in range(gates)])


def _refresh_rnn(layer: nn.Module) -> None:
    layer._init_flat_weights()  # type: ignore[operator]
    layer.flatten_parameters()  # type: ignore[operator]


def _make_handlers() -> tuple[type, type]:
    import torch_pruning as tp

    class RecurrentPruner(tp.pruner.function.BasePruningFunc):
        """Hidden size (all layers) as out channels, the first layer's input size as in channels."""

        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            h, gates = layer.hidden_size, _GATES[type(layer)]
            keep = torch.tensor(sorted(set(range(h)) - set(idxs)), dtype=torch.long)
            for k in range(layer.num_layers):
                for name in _rnn_names(layer, k):
                    _slice_param(layer, name, _gate_index(keep, h, gates), 0)
                _slice_param(layer, f"weight_hh_l{k}", keep, 1)
                if k > 0:
                    _slice_param(layer, f"weight_ih_l{k}", keep, 1)
            layer.hidden_size = len(keep)
            _refresh_rnn(layer)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            keep = torch.tensor(sorted(set(range(layer.input_size)) - set(idxs)), dtype=torch.long)
            for name in _input_weights(layer):
                _slice_param(layer, name, keep, 1)
            layer.input_size = len(keep)
            _refresh_rnn(layer)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.hidden_size

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.input_size

    class AttentionPruner(tp.pruner.function.BasePruningFunc):
        """Context channels (heads x head size) as out channels, the hidden size as in channels."""

        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            n = layer.num_attention_heads * layer.attention_head_size
            keep = torch.tensor(sorted(set(range(n)) - set(idxs)), dtype=torch.long)
            if len(keep) % layer.attention_head_size:
                raise ConfigError("attention heads are pruned whole; the channel count is not a head multiple")
            for lin in (layer.query, layer.key, layer.value):
                _slice_param(lin, "weight", keep, 0)
                if lin.bias is not None:
                    _slice_param(lin, "bias", keep, 0)
                lin.out_features = len(keep)
            _set_heads(layer, len(keep) // layer.attention_head_size)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            keep = torch.tensor(sorted(set(range(layer.query.in_features)) - set(idxs)), dtype=torch.long)
            for lin in (layer.query, layer.key, layer.value):
                _slice_param(lin, "weight", keep, 1)
                lin.in_features = len(keep)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.num_attention_heads * layer.attention_head_size

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.query.in_features

    return RecurrentPruner, AttentionPruner


def _set_heads(layer: nn.Module, heads: int) -> None:
    layer.num_attention_heads = heads
    if hasattr(layer, "all_head_size"):
        layer.all_head_size = heads * layer.attention_head_size


# -- groups --------------------------------------------------------------------------------------------------
@dataclass
class WidthGroup:
    """Channels that change together. ``name`` is its first producer (plans key widths by it)."""

    name: str
    kind: str                 #: "channels", "hidden" (recurrent) or "heads"
    size: int                 #: channels, hidden units or heads
    producers: list[str]      #: modules whose outputs are the group's channels
    consumers: list[str]      #: modules reading them
    can_widen: bool
    unit: int = 1             #: channels per unit (head size for heads)
    reason: str = ""          #: why it cannot widen
    #: the channels form this many equal contiguous blocks that must stay equal (the groups of a grouped
    #: conv or a GroupNorm, the heads of an ``nn.MultiheadAttention``): a size stays a multiple of it, and
    #: shrinking drops the same positions in every block
    blocks: int = 1
    _root: Any = field(default=None, repr=False)
    _handler: Any = field(default=None, repr=False)
    _group: Any = field(default=None, repr=False)    #: torch-pruning group of all units, as analysed
    #: (module name, is an out-channel dependency, channel indices) of every module of the group, in group order
    _members: list[tuple[str, bool, int]] = field(default_factory=list, repr=False)

    def resized(self, multiplier: float) -> int:
        """Units after a width multiplier: ``max(1, round(size * multiplier))``, per block when ``blocks > 1``."""
        return self.blocks * new_size(self.size // self.blocks, multiplier)


def _dependency_graph(model: nn.Module, inputs: tuple[Any, ...], inputs_as_nodes: bool = True
                      ) -> tuple[Any, set[Any], list[nn.Module]]:
    """torch-pruning's DepGraph of ``model`` with nncodec's recurrent and attention handlers; also the
    autograd nodes of the model's outputs and the attention modules. ``inputs_as_nodes``: float inputs enter
    as leaves, so groups tied to an input can be found, and the views splitting channels into heads are
    recorded (``nncodec_head_splits``; empty otherwise): the analysis needs both, pruning groups already
    analysed neither."""
    import torch_pruning as tp

    recurrent_pruner, attention_pruner = _make_handlers()
    custom: dict[type, Any] = {t: recurrent_pruner() for t in _RECURRENT}
    attention = [m for m in model.modules() if is_attention(m)]
    for m in attention:
        custom[type(m)] = attention_pruner()
    out_fns: set[Any] = set()

    def record(out: Any) -> Any:
        tensors = _output_tensors(out)
        out_fns.update(t.grad_fn for t in tensors if t.grad_fn is not None)
        return tensors[0] if len(tensors) == 1 else tensors

    # float inputs enter the graph as leaves (tensors torch-pruning never prunes), so that a group whose
    # channels meet an input (a parameter-free residual ``x + f(x)``) is seen to be tied to it
    leaves = [t.detach().clone().requires_grad_(True) if inputs_as_nodes and isinstance(t, torch.Tensor)
              and t.is_floating_point() and t.dim() >= 2 else t for t in inputs]
    traced = [t.clone() if isinstance(t, torch.Tensor) and t.requires_grad else t for t in leaves]
    input_leaves = [(t, _channel_dim(t)) for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    was = model.training
    model.eval()
    opaque = [m for m in model.modules() if isinstance(m, _RECURRENT) and (m.bidirectional or
                                                                          getattr(m, "proj_size", 0))]
    patched = [m.__dict__.get("forward") for m in opaque]  # a forward the instance already had (a user's patch)
    for m in opaque:
        m.forward = _opaque_forward(m)  # type: ignore[method-assign]
    splits = _HeadSplits()
    try:
        with torch.enable_grad(), (splits if inputs_as_nodes else contextlib.nullcontext()):  # the tracer follows autograd: also when the caller runs under no_grad
            try:
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=traced, customized_pruners=custom,
                                                           output_transform=record, unwrapped_parameters=list(input_leaves),
                                                           verbose=False)
            except Exception as exc:  # noqa: BLE001  (e.g. a model that calls .numpy() on its input)
                if not input_leaves:
                    raise
                log.debug("dependency graph with the inputs as nodes failed (%s); traced without them", exc)
                out_fns.clear()
                input_leaves = []
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=list(inputs), customized_pruners=custom,
                                                           output_transform=record, verbose=False)
    except Exception as exc:  # the tracer raises many types on code it cannot follow
        raise ConfigError(f"cannot build the dependency graph of the model ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was)
        for m, own in zip(opaque, patched):
            if own is None:
                del m.forward
            else:
                m.forward = own  # type: ignore[method-assign]
    dg.nncodec_inputs = {id(t) for t, _ in input_leaves}
    dg.nncodec_head_splits = splits.nodes
    return dg, out_fns, attention


class _HeadSplits(torch.overrides.TorchFunctionMode):
    """Records the autograd nodes of views / reshapes that split a tensor's channel dimension (the last one,
    or dimension 1 of a channels-first tensor) into heads, e.g. ``x.view(b, t, heads, -1)`` or
    ``qkv.reshape(b, n, 3, heads, d)``: a split the dependency graph follows as if channels were free to move."""

    _FUNCS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten, torch.unflatten}

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Any] = []  # the nodes themselves (kept alive: compared by identity)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in self._FUNCS and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor) \
                and out.grad_fn is not None and _splits_channels(tuple(args[0].shape), tuple(out.shape)):
            self.nodes.append(out.grad_fn)
        return out


def _splits_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a reshape ``before -> after`` splits the last dimension into several (heads x head size), or
    dimension 1 of a tensor with 3 or more dimensions (channels first)."""
    if len(after) <= len(before) or not before:
        return False
    k = len(before) - 1
    if after[:k] == before[:k] and math.prod(after[k:]) == before[k] and 1 < before[k] and after[-1] < before[k]:
        return True
    extra = len(after) - len(before)
    return (len(before) >= 3 and after[0] == before[0] and after[2 + extra:] == before[2:] and
            math.prod(after[1:2 + extra]) == before[1] and after[1 + extra] < before[1])


def _mixes_activations(fn: Any) -> bool:
    """Whether autograd node ``fn`` is an attention step: a softmax, or a (batched) matrix product of two
    activations (a layer's own product reads a weight: a parameter two nodes up at most)."""
    name = type(fn).__name__
    if name.startswith(("SoftmaxBackward", "BmmBackward")):
        return True
    if not name.startswith("MmBackward"):
        return False
    for f, _ in fn.next_functions:
        for g in (f, *(h for h, _ in getattr(f, "next_functions", ()) if f is not None)):
            if g is not None and type(g).__name__ == "AccumulateGrad":
                return False
    return True


def _channel_dim(t: torch.Tensor) -> int:
    """The channel dimension torch-pruning assumes for an input: 1 for (batch, features) and images, the last
    for (batch, sequence, features)."""
    return t.dim() - 1 if t.dim() == 3 else 1


class GroupAnalysis:
    """The dependency graph of one model and its width groups (built once, used for one resize)."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, keep: tuple[str, ...] = ()):
        import torch_pruning as tp

        self.model = model
        self.inputs = example_batch(example_inputs)
        self.names = {m: n for n, m in model.named_modules()}
        self.dg, out_fns, self.attention = _dependency_graph(model, self.inputs)
        self.groups: list[WidthGroup] = []
        #: producer name -> why its group keeps its width (the model output, a model input, ...)
        self.fixed: dict[str, str] = {}
        roots = [m for m in model.modules() if isinstance(m, _ROOT_TYPES) or m in self.attention]
        #: module -> the modules it shares a parameter with (tied weights: one tensor, one shape)
        tied: dict[str, list[str]] = {}
        for uses in tied_parameters(model):
            for n, _ in uses:
                tied.setdefault(n, []).extend(o for o, _ in uses if o != n and o not in tied[n])
        inside_attention = {id(q) for a in self.attention for q in (a.query, a.key, a.value)}
        head_splits = {id(h) for h in self.dg.nncodec_head_splits}  # the nodes are kept alive by the graph
        seen: set[int] = set()
        for m in roots:
            if id(m) in seen or id(m) in inside_attention:
                continue
            handler = self.dg.get_pruner_of_module(m)
            if handler is None or handler.get_out_channels(m) is None:
                continue
            n = handler.get_out_channels(m)
            try:
                group = self.dg.get_pruning_group(m, handler.prune_out_channels, list(range(n)))
            except Exception as exc:  # noqa: BLE001  (torch-pruning fails on some index mappings)
                log.debug("no width group for %s: %s", self.names.get(m), exc)
                self.fixed.setdefault(self.names[m], f"the dependency graph cannot follow its channels "
                                                     f"({type(exc).__name__}: {exc})"[:300])
                continue
            producers, consumers = [], []
            members: list[tuple[str, bool, int]] = []
            reason = ""
            fixed = ""
            blocks = 1
            sdpa = False  # the channels enter a scaled_dot_product_attention (an nn.MultiheadAttention's own, or not)
            split = mixed = False  # a head split of its channels; a softmax / product of two activations
            for dep, idxs in group:
                fn = dep.target.grad_fn
                split = split or id(fn) in head_splits
                mixed = mixed or (fn is not None and _mixes_activations(fn))
                mod = dep.target.module
                out_fn = self.dg.is_out_channel_pruning_fn(dep.handler)
                if dep.target.grad_fn in out_fns and out_fn:
                    fixed = fixed or ("its channels are the model output (the classifier and an output dimension "
                                      "keep their width)")
                if isinstance(mod, nn.Module) and mod in self.names:
                    members.append((self.names[mod], out_fn, len(idxs)))
                    (producers if out_fn else consumers).append(self.names[mod])
                    if out_fn:
                        seen.add(id(mod))
                    if not reason:
                        reason = _widen_blocker(mod)
                    fixed = fixed or _resize_blocker(mod, self.names[mod], out_fn)
                    if not fixed and tied.get(self.names[mod]):
                        fixed = (f"{self.names[mod]!r} shares a parameter with {tied[self.names[mod]]} (tied "
                                 "tensors are one tensor: a resize would untie them)")
                    blocks = math.lcm(blocks, _blocks_of(mod))
                elif isinstance(mod, torch.Tensor) and id(mod) in self.dg.nncodec_inputs:
                    fixed = fixed or "its channels meet a model input (a parameter-free residual sum with the input)"
                elif "ScaledDotProduct" in type(dep.target.grad_fn).__name__:
                    sdpa = True
                elif dep.target.type in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND,
                                         tp.ops.OPTYPE.EXPAND) and not reason:
                    reason = f"a {dep.target.type.name.lower()} joins its channels"
            name = self.names[m]
            if (sdpa or split and mixed) and not fixed and not any(
                    isinstance(model.get_submodule(n), nn.MultiheadAttention) or is_attention(model.get_submodule(n))
                    for n in producers + consumers):
                how = ("scaled_dot_product_attention" if sdpa else
                       "heads split by a view / reshape, then a matmul or softmax")
                fixed = (f"its channels enter a hand-written attention ({how}): its head split is not known, so a "
                         "resize would move channels between heads and change the 1/sqrt(head size) scale "
                         "(nn.MultiheadAttention and Hugging Face-style attention modules resize)")
            if not fixed and any(fnmatch_any(p, keep) for p in producers):
                fixed = "kept by the caller"
            if fixed or n % blocks:
                fixed = fixed or f"its {n} channels do not split into the {blocks} equal blocks its layers need"
                log.debug("width group %s is fixed (%s)", name, fixed)
                self.fixed.update(dict.fromkeys([name, *producers], fixed))
                continue
            if m in self.attention:
                unit = m.attention_head_size
                self.groups.append(WidthGroup(name, "heads", n // unit, producers, consumers, not reason, unit,
                                              reason, blocks=1, _root=m, _handler=handler, _group=group,
                                              _members=members))
            else:
                kind = "hidden" if isinstance(m, _RECURRENT) else "channels"
                self.groups.append(WidthGroup(name, kind, n, producers, consumers, not reason, 1, reason,
                                              blocks=blocks, _root=m, _handler=handler, _group=group,
                                              _members=members))

    def group(self, name: str) -> WidthGroup:
        for g in self.groups:
            if g.name == name or name in g.producers:
                return g
        if name in self.fixed:
            raise ConfigError(f"the width of {name!r} cannot change: {self.fixed[name]}")
        raise ConfigError(f"{name!r} is not a resizable width group of the model (groups: "
                          f"{[g.name for g in self.groups]}; the classifier and the output dimension keep their width)")


def fnmatch_any(name: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _widen_blocker(mod: nn.Module) -> str:
    """Why a group holding ``mod`` cannot widen ('' when it can; a bidirectional or projected RNN producing the
    group fixes it altogether, :func:`_resize_blocker`)."""
    if _grouped(mod):
        return f"a grouped {type(mod).__name__} (groups={mod.groups}) cannot widen without changing its groups"
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, *_RECURRENT)) \
            or is_attention(mod):
        return ""
    return f"{type(mod).__name__} cannot widen without changing the function"


def _resize_blocker(mod: nn.Module, name: str, out_fn: bool) -> str:
    """Why a group holding ``mod`` (``out_fn``: as a producer) cannot change its width at all ('' when it can)."""
    if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) > 1:
        return (f"LayerNorm {name!r} normalizes over {tuple(mod.normalized_shape)}, several dimensions (channels "
                "are pruned along its last dimension only)")
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)) and mod.groups > 1:
        return f"{name!r} is a grouped {type(mod).__name__} (groups={mod.groups}), which torch-pruning slices wrongly"
    if out_fn and isinstance(mod, _RECURRENT) and (mod.bidirectional or getattr(mod, "proj_size", 0)):
        return f"{name!r} is a bidirectional or projected {type(mod).__name__} (its hidden size stays)"
    if isinstance(mod, nn.MultiheadAttention) and (not mod._qkv_same_embed_dim or mod.bias_k is not None):
        what = (f"kdim={mod.kdim}, vdim={mod.vdim} (separate projections)" if not mod._qkv_same_embed_dim
                else "add_bias_kv=True")
        return (f"{name!r} is an nn.MultiheadAttention with {what}, whose weights torch-pruning does not slice "
                "(its embedding dimension stays)")
    return ""


def _grouped(mod: nn.Module) -> bool:
    """A grouped conv that is not depthwise (depthwise convs follow their channels one to one; a grouped
    transposed conv fixes its group, :func:`_resize_blocker`)."""
    return isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups > 1 and \
        not mod.groups == mod.in_channels == mod.out_channels


def _blocks_of(mod: nn.Module) -> int:
    """Equal channel blocks ``mod`` needs kept equal: a grouped conv's groups, a GroupNorm's groups, the heads of
    an ``nn.MultiheadAttention``."""
    if _grouped(mod):
        return mod.groups
    if isinstance(mod, nn.GroupNorm):
        return mod.num_groups
    if isinstance(mod, nn.MultiheadAttention):
        return mod.num_heads
    return 1


def width_groups(model: nn.Module, example_inputs: Any, *, keep: tuple[str, ...] = ()) -> list[WidthGroup]:
    """The model's width groups in module order (fixed: the output dimension and layers matching ``keep``)."""
    return GroupAnalysis(model, example_inputs, keep=keep).groups


# -- importance ----------------------------------------------------------------------------------------------
def _group_importance(analysis: GroupAnalysis, g: WidthGroup, method: str) -> torch.Tensor:
    n = g.size * g.unit
    group = g._group  # all units, as analysed (the model has not changed since)
    score = torch.zeros(n)
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Module):
            continue
        out_fn = analysis.dg.is_out_channel_pruning_fn(dep.handler)
        for w, dim in _weights_along(mod, out_fn):
            t = w.detach()
            if method == "taylor":
                if w.grad is None:
                    continue
                t = (t * w.grad).abs()
            elif method == "l2":
                t = t.pow(2)
            else:
                t = t.abs()
            per = t.transpose(0, dim).reshape(t.shape[dim], -1).sum(1) if t.dim() > 1 else t
            per = per / (per.mean() + 1e-12)
            local = [int(i) for i in idxs]
            roots = [int(i.root_idx) if hasattr(i, "root_idx") and i.root_idx is not None else int(i) for i in idxs]
            _scatter(score, per, local, roots)
    return score.sqrt() if method == "l2" else score


def _scatter(score: torch.Tensor, per: torch.Tensor, local: list[int], roots: list[int]) -> None:
    """Add each layer-local channel's score to the group unit (root channel) it belongs to."""
    size = per.shape[0]
    for li, ri in zip(local, roots):
        if li < size and ri < score.shape[0]:
            score[ri] += per[li]


def _weights_along(mod: nn.Module, out: bool) -> list[tuple[torch.Tensor, int]]:
    """(parameter, dimension) pairs whose slices along ``dimension`` belong to one channel of ``mod``."""
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        if out or mod.groups > 1:
            return [(mod.weight, 0)] + ([(mod.bias, 0)] if mod.bias is not None else [])
        return [(mod.weight, 1)]
    if isinstance(mod, nn.Linear):
        return [(mod.weight, 0)] + ([(mod.bias, 0)] if mod.bias is not None else []) if out else [(mod.weight, 1)]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)) and mod.weight is not None:
        return [(mod.weight, 0)]
    if isinstance(mod, nn.Embedding):
        return [(mod.weight, 1)]
    if isinstance(mod, _RECURRENT) and out:
        # hidden unit i: column i of every weight_hh (the unit's outgoing weights), summed over layers
        return [(getattr(mod, f"weight_hh_l{k}"), 1) for k in range(mod.num_layers)]
    if isinstance(mod, _RECURRENT):
        return [(getattr(mod, name), 1) for name in _input_weights(mod)]
    if is_attention(mod):
        if out:
            return [(lin.weight, 0) for lin in (mod.query, mod.key, mod.value)]
        return [(lin.weight, 1) for lin in (mod.query, mod.key, mod.value)]
    return []


def group_importance(model: nn.Module, example_inputs: Any, group: str, importance: str = "l1") -> torch.Tensor:
    """Importance of each unit (channel, hidden unit or head) of one width group; higher is kept first.

    The score sums, over every layer of the group, the norm of the weights the unit touches (each
    layer's scores divided by their mean, so wide and narrow layers count alike).
    """
    if importance not in ("l1", "l2"):
        raise ConfigError(f"importance must be 'l1' or 'l2' here (Taylor needs resize_groups), got {importance!r}")
    analysis = GroupAnalysis(model, example_inputs)
    g = analysis.group(group)
    return _group_importance(analysis, g, importance).reshape(g.size, g.unit).sum(1)


# -- widening ------------------------------------------------------------------------------------------------
def _kaiming_rows(like: torch.Tensor, n: int) -> torch.Tensor:
    t = torch.empty((n, *like.shape[1:]), dtype=like.dtype)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


def _grow(model: nn.Module, g: WidthGroup, extra_units: int) -> None:
    """Append ``extra_units`` units to group ``g`` of ``model`` (the analysed model or a copy of it) in place;
    the function is unchanged (zero consumer columns). Other groups may have been pruned already: a group's
    members and their channels per unit (a flatten's spatial positions) do not change with them."""
    n = g.size * g.unit
    extra = extra_units * g.unit
    for name, out, count in g._members:
        with torch.no_grad():
            _grow_module(model.get_submodule(name), out, extra, max(1, count // n))


def _grow_module(mod: nn.Module, out: bool, extra: int, factor: int) -> None:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        if out or depthwise:
            _grow_param(mod, "weight", 0, _kaiming_rows(mod.weight, extra))
            if mod.bias is not None:
                _grow_param(mod, "bias", 0, torch.zeros(extra))
            mod.out_channels += extra
            if depthwise:
                mod.in_channels += extra
                mod.groups += extra
        else:
            w = mod.weight
            _grow_param(mod, "weight", 1, torch.zeros((w.shape[0], extra * factor, *w.shape[2:])))
            mod.in_channels += extra * factor
    elif isinstance(mod, nn.Linear):
        if out:
            _grow_param(mod, "weight", 0, _kaiming_rows(mod.weight, extra))
            if mod.bias is not None:
                _grow_param(mod, "bias", 0, torch.zeros(extra))
            mod.out_features += extra
        else:
            _grow_param(mod, "weight", 1, torch.zeros((mod.weight.shape[0], extra * factor)))
            mod.in_features += extra * factor
    elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.weight is not None:
            _grow_param(mod, "weight", 0, torch.ones(extra))
            _grow_param(mod, "bias", 0, torch.zeros(extra))
        if mod.running_mean is not None:
            mod.running_mean = torch.cat([mod.running_mean, torch.zeros(extra)])
            mod.running_var = torch.cat([mod.running_var, torch.ones(extra)])
        mod.num_features += extra
    elif isinstance(mod, _RECURRENT):
        if out:
            _grow_recurrent_hidden(mod, extra)
        else:
            for name in _input_weights(mod):
                _grow_param(mod, name, 1, torch.zeros((getattr(mod, name).shape[0], extra * factor)))
            mod.input_size += extra * factor
            _refresh_rnn(mod)
    elif is_attention(mod):
        if out:
            for lin in (mod.query, mod.key, mod.value):
                _grow_param(lin, "weight", 0, _kaiming_rows(lin.weight, extra))
                if lin.bias is not None:
                    _grow_param(lin, "bias", 0, torch.zeros(extra))
                lin.out_features += extra
            _set_heads(mod, mod.num_attention_heads + extra // mod.attention_head_size)
        else:
            for lin in (mod.query, mod.key, mod.value):
                _grow_param(lin, "weight", 1, torch.zeros((lin.weight.shape[0], extra * factor)))
                lin.in_features += extra * factor
    else:
        raise ConfigError(f"cannot widen {type(mod).__name__}")


def _grow_recurrent_hidden(mod: nn.Module, extra: int) -> None:
    """New hidden units: fresh input rows, zero columns wherever they feed existing units."""
    h, gates = mod.hidden_size, _GATES[type(mod)]
    bound = 1.0 / math.sqrt(h + extra)

    def per_gate(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        chunks = t.reshape(gates, h, *t.shape[1:])
        new = new.reshape(gates, extra, *t.shape[1:])
        return torch.cat([chunks, new], 1).reshape(gates * (h + extra), *t.shape[1:])

    for k in range(mod.num_layers):
        for name in _rnn_names(mod, k):
            p = getattr(mod, name)
            fresh = torch.empty((gates * extra, *p.shape[1:]), dtype=p.dtype).uniform_(-bound, bound)
            if name.startswith("bias"):
                fresh.zero_()
            setattr(mod, name, nn.Parameter(per_gate(p.detach(), fresh).contiguous(), requires_grad=p.requires_grad))
        whh = getattr(mod, f"weight_hh_l{k}")
        _grow_param(mod, f"weight_hh_l{k}", 1, torch.zeros((whh.shape[0], extra)))
        if k > 0:
            wih = getattr(mod, f"weight_ih_l{k}")
            _grow_param(mod, f"weight_ih_l{k}", 1, torch.zeros((wih.shape[0], extra)))
    mod.hidden_size = h + extra
    _refresh_rnn(mod)


# -- attention scale ----------------------------------------------------------------------------------------
def _head_dims(model: nn.Module) -> dict[str, int]:
    """Per-head dimension of every ``nn.MultiheadAttention`` of ``model``, by module name."""
    return {n: m.embed_dim // m.num_heads for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}


def _keep_attention_scale(model: nn.Module, before: dict[str, int]) -> None:
    """Rescale the query projection (rows and bias) of every ``nn.MultiheadAttention`` whose per-head dimension
    changed from ``before`` by ``sqrt(new / old)``: PyTorch divides the logits by ``sqrt(head_dim)``, so without
    this a resize would change every attention score, not only drop (or add) the resized channels' share."""
    for name, old in before.items():
        mod = model.get_submodule(name)
        new = mod.embed_dim // mod.num_heads
        if new == old:
            continue
        factor = math.sqrt(new / old)
        with torch.no_grad():
            if mod.in_proj_weight is not None:
                mod.in_proj_weight[:mod.embed_dim].mul_(factor)
            else:
                mod.q_proj_weight.mul_(factor)
            if mod.in_proj_bias is not None:
                mod.in_proj_bias[:mod.embed_dim].mul_(factor)
        log.debug("%s: head dimension %d -> %d, query projection scaled by %.4f", name, old, new, factor)


# -- resize --------------------------------------------------------------------------------------------------
def new_size(size: int, multiplier: float) -> int:
    """Units after a width multiplier: ``max(1, round(size * multiplier))``."""
    return max(1, int(round(size * multiplier)))


def resize_groups(model: nn.Module, example_inputs: Any, widths: dict[str, float], *, importance: str = "l1",
                  gradient_fn: Callable[[nn.Module], None] | None = None, keep: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` with each named width group scaled by its multiplier.

    ``widths`` maps a group (its name, or any of its producers' names) to a multiplier: 0.5 keeps the
    most important half, 2 doubles it (new units start silent). ``importance``: ``"l1"``, ``"l2"`` or
    ``"taylor"``; Taylor needs ``gradient_fn(model)``, which runs a backward pass on data.
    """
    if importance not in ("l1", "l2", "taylor"):
        raise ConfigError(f"importance must be 'l1', 'l2' or 'taylor', got {importance!r}")
    if importance == "taylor" and gradient_fn is None:
        raise ConfigError("Taylor importance needs gradient_fn(model), a backward pass on data")
    _check_widths(widths)
    result = copy.deepcopy(model)
    if all(v == 1.0 for v in widths.values()):
        if widths:  # a no-op plan still names groups: a name matching none is an error, not ignored
            _chosen_groups(GroupAnalysis(result, example_inputs, keep=keep), widths)
        return result
    _refuse_input_steps(model)
    analysis = GroupAnalysis(result, example_inputs, keep=keep)
    chosen = _chosen_groups(analysis, widths)
    if importance == "taylor":
        result.zero_grad(set_to_none=True)
        gradient_fn(result)  # type: ignore[misc]
    plans = _resize_plans(chosen, lambda g: _group_importance(analysis, g, importance))
    head_dims = _head_dims(result)
    for g, action, arg in plans:  # prune first (indices refer to the unchanged groups), then grow
        if action == "prune":
            analysis.dg.get_pruning_group(g._root, g._handler.prune_out_channels, arg).prune()
    for g, action, arg in plans:
        if action == "grow":
            _grow(result, g, arg)
    _keep_attention_scale(result, head_dims)
    if importance == "taylor":
        result.zero_grad(set_to_none=True)
    return result


def _refuse_input_steps(model: nn.Module) -> None:
    """Raise :class:`ConfigError` when a layer of ``model`` holds per-channel input steps (``input_scale``,
    :mod:`nncodec.quant.input_steps`): its weight is folded by them and the resize would not slice them."""
    held = [name for name, mod in model.named_modules() if has_input_steps(mod)]
    if held:
        raise ConfigError(f"cannot resize width groups of a model whose layers {held[:5]} hold per-channel input "
                          "steps (input_scale, folded into their weights): resize the float model, then quantize "
                          "and fit the steps (build_candidate does)")


def _check_widths(widths: dict[str, float]) -> None:
    for name, mult in widths.items():
        if not (is_number(mult) and mult > 0 and math.isfinite(mult)):
            raise ConfigError(f"width multiplier of {name!r} must be a positive number, got {mult!r}")


def _chosen_groups(analysis: GroupAnalysis, widths: dict[str, float]) -> dict[str, tuple[WidthGroup, float]]:
    """Group name -> (group, multiplier); two widths for one coupled group are an error."""
    chosen: dict[str, tuple[WidthGroup, float]] = {}
    for name, mult in widths.items():
        g = analysis.group(name)
        if g.name in chosen and chosen[g.name][1] != mult:
            raise ConfigError(f"{name!r} and {chosen[g.name][0].name!r} are one coupled group with two widths "
                              f"({mult} and {chosen[g.name][1]})")
        chosen[g.name] = (g, float(mult))
    return chosen


def _resize_plans(chosen: dict[str, tuple[WidthGroup, float]],
                  importance_of: Callable[[WidthGroup], torch.Tensor]) -> list[tuple[WidthGroup, str, Any]]:
    """(group, "prune", channel indices to drop) or (group, "grow", units to add), in ``chosen`` order."""
    plans: list[tuple[WidthGroup, str, Any]] = []
    for g, mult in chosen.values():
        target = g.resized(mult)
        if target > g.size and not g.can_widen:
            raise ConfigError(f"width group {g.name!r} cannot widen: {g.reason}")
        if target < g.size:
            score = importance_of(g).reshape(g.size, g.unit).sum(1)
            per = g.size // g.blocks  # blocks > 1: the same positions in every block, by their summed scores
            local = torch.argsort(score.reshape(g.blocks, per).sum(0))[: (g.size - target) // g.blocks]
            drop = [b * per + int(j) for b in range(g.blocks) for j in local]
            idxs = sorted(int(u) * g.unit + j for u in drop for j in range(g.unit))
            plans.append((g, "prune", idxs))
        elif target > g.size:
            plans.append((g, "grow", target - g.size))
    return plans


class Resizer:
    """Resizes copies of one model again and again (a search's candidates): the dependency analysis and the
    channel importance (L1 / L2 of the model's weights) are computed once, so each :meth:`resize` only copies,
    prunes (on a fresh dependency graph of the copy, for the dropped channels only) and grows.

    ``resize(widths)`` returns exactly what ``resize_groups(model, example_inputs, widths)`` returns (same
    weights; new units drawn from the global RNG in the same order). The model must not change while the
    resizer is used (its weights are read once). ``importance="taylor"``: first-order Taylor scores
    ``|w * dL/dw|`` of the model's own weights, from one ``gradient_fn(model)`` (a backward pass on data)
    made here; every group is scored then and the model's gradients are cleared again.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, importance: str = "l1",
                 keep: tuple[str, ...] = (), gradient_fn: Callable[[nn.Module], None] | None = None):
        if importance not in ("l1", "l2", "taylor"):
            raise ConfigError(f"Resizer ranks channels by 'l1', 'l2' or 'taylor', got {importance!r}")
        if (importance == "taylor") != (gradient_fn is not None):
            raise ConfigError("Resizer: Taylor importance needs gradient_fn(model), a backward pass on data, and "
                              "only Taylor importance uses one")
        self.model = model
        self.example_inputs = example_inputs
        self.importance = importance
        self.analysis = GroupAnalysis(model, example_inputs, keep=keep)
        self._scores: dict[str, torch.Tensor] = {}
        if gradient_fn is not None:
            model.zero_grad(set_to_none=True)
            try:
                gradient_fn(model)
                for g in self.analysis.groups:
                    self._importance(g)
            finally:
                model.zero_grad(set_to_none=True)

    def _importance(self, g: WidthGroup) -> torch.Tensor:
        if g.name not in self._scores:
            self._scores[g.name] = _group_importance(self.analysis, g, self.importance)
        return self._scores[g.name]

    def resize(self, widths: dict[str, float]) -> nn.Module:
        """A copy of the model with each named width group scaled by its multiplier (see :func:`resize_groups`)."""
        _check_widths(widths)
        chosen = _chosen_groups(self.analysis, widths)  # a name matching no group is an error, also at 1.0
        result = copy.deepcopy(self.model)
        if all(v == 1.0 for v in widths.values()):
            return result
        _refuse_input_steps(self.model)
        plans = _resize_plans(chosen, self._importance)
        head_dims = _head_dims(result)
        prunes = [(g, idxs) for g, action, idxs in plans if action == "prune"]
        if prunes:
            dg, _, _ = _dependency_graph(result, self.analysis.inputs, inputs_as_nodes=False)
            for g, idxs in prunes:
                root = result.get_submodule(g.name)
                dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()
        for g, action, extra in plans:
            if action == "grow":
                _grow(result, g, extra)
        _keep_attention_scale(result, head_dims)
        return result
