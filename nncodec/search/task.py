"""What the search trains and measures: the user's functions, a labelled classifier, or fidelity to the reference.

- :class:`ClassifierTask`: cross-entropy on ``(x, y)``, scored by top-1 accuracy.
- :class:`FunctionTask`: ``train_fn(model, epoch)`` and ``eval_fn(model) -> score``.
- :class:`FidelityTask`: no labels: the candidate is trained to reproduce the reference model's outputs on
  unlabelled calibration inputs (distillation) and scored by output fidelity on separate evaluation
  inputs: the mean cosine of the outputs (embeddings) or the agreement of top-1 predictions.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import is_number
from ..errors import ConfigError
from ..train import accuracy, shuffled_batches

__all__ = ["Task", "ClassifierTask", "FunctionTask", "FidelityTask", "first_tensor", "combined_floor",
           "check_classifier"]


class Task:
    """``train_epoch(model, epoch, proxy)`` trains one epoch (``proxy``: the cheap budget used for trials);
    ``evaluate(model)`` returns the score as a fraction (higher is better). ``min_score``: a floor the
    search's choice must meet: among trials that reached it, the best-scoring one is returned (when none
    did, the best of all, with a warning)."""

    min_score: float | None = None

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> float:
        raise NotImplementedError

    def calibration_inputs(self) -> tuple[torch.Tensor, ...] | None:
        """The inputs the task trains on (a tuple of tensors, first dimension = examples; the model is called
        as ``model(*inputs)``), e.g. for data-aware initial kernels; None when the task does not expose them."""
        return None


@dataclass
class FunctionTask(Task):
    train_fn: Callable[[nn.Module, int], None]
    eval_fn: Callable[[nn.Module], float]

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        self.train_fn(model, epoch)

    def evaluate(self, model: nn.Module) -> float:
        return float(self.eval_fn(model))


class _Optimizers:
    """One Adam optimizer per candidate model, kept while the model lives."""

    def __init__(self, lr: float):
        self.lr = lr
        self._by_model: weakref.WeakKeyDictionary[nn.Module, torch.optim.Optimizer] = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        opt = self._by_model.get(model)
        if opt is None:
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
            self._by_model[model] = opt
        return opt


class ClassifierTask(Task):
    """Cross-entropy training with Adam on ``(x_train, y_train)``; accuracy on ``(x_val, y_val)``.

    Proxy epochs use a fixed seeded ``proxy_fraction`` of the training set.
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                 batch_size: int = 64, lr: float = 1e-3, proxy_fraction: float = 0.5, seed: int = 0):
        if len(x_train) != len(y_train) or len(x_val) != len(y_val) or not len(x_train) or not len(x_val):
            raise ConfigError("classifier task needs non-empty, matching (x, y) train and validation sets")
        if not 0 < proxy_fraction <= 1:
            raise ConfigError("proxy_fraction must be in (0, 1]")
        self.x_train, self.y_train = torch.as_tensor(x_train), torch.as_tensor(y_train)
        self.x_val, self.y_val = np.asarray(x_val), np.asarray(y_val)
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        n = max(1, int(len(x_train) * proxy_fraction))
        self._optimizer = _Optimizers(lr)
        self.proxy_index = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n]

    def calibration_inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.x_train,)

    def check_model(self, model: nn.Module) -> None:
        """:func:`check_classifier` on this task's data (``run_search`` calls it on the reference first)."""
        check_classifier(model, self.x_train, (self.y_train.numpy(), self.y_val))

    def hold_out(self, fraction: float, seed: int = 0) -> tuple["ClassifierTask", "ClassifierTask", torch.Tensor]:
        """Carve a selection split out of the *training* examples: ``(fit, select, index)``.

        ``fit`` trains on the training examples outside the split and is scored on this task's validation set;
        ``select`` is scored on the split (``fraction`` of the training examples, at least one, chosen by a
        seeded permutation; at least one example is left to train on); ``index``: the split's positions in
        ``x_train``. The validation set is never part of the split, so choosing among models by ``select``'s
        score leaves the validation score an unbiased measure."""
        if not is_number(fraction) or not 0 < fraction < 1:
            raise ConfigError(f"selection split: fraction must be in (0, 1), got {fraction!r}")
        n = len(self.x_train)
        k = max(1, int(round(n * fraction)))
        if k >= n:
            raise ConfigError(f"selection split: {fraction} of {n} training examples leaves none to train on")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        index, rest = order[:k].sort().values, order[k:].sort().values
        x_fit, y_fit = self.x_train[rest], self.y_train[rest]
        kw = {"batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
              "proxy_fraction": len(self.proxy_index) / n}
        fit = ClassifierTask(x_fit, y_fit, self.x_val, self.y_val, **kw)
        select = ClassifierTask(x_fit, y_fit, self.x_train[index].numpy(), self.y_train[index].numpy(), **kw)
        return fit, select, index

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        idx = self.proxy_index if proxy else torch.arange(len(self.x_train))
        opt = self._optimizer(model)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for b in shuffled_batches(idx, self.batch_size, self.seed * 1000 + epoch):
            opt.zero_grad()
            loss_fn(model(self.x_train[b]), self.y_train[b]).backward()
            opt.step()
        model.eval()

    def evaluate(self, model: nn.Module) -> float:
        return accuracy(model, self.x_val, self.y_val)


def check_classifier(model: nn.Module, x: Any, labels: Sequence[Any], where: str = "the model") -> None:
    """Raise :class:`ConfigError` unless ``model`` called on two examples of ``x`` (one tensor, as
    :class:`ClassifierTask` calls it) returns ``(batch, classes)`` logits with a class for every label
    (``classes > max(labels)``), before any training would fail deep inside a trial. The model's training
    mode is restored and its state (batch-norm statistics) left unchanged. No inputs or no labels at all:
    ConfigError."""
    present = [np.asarray(v) for v in labels if len(v)]
    if not present:
        raise ConfigError(f"no labels to check {where} against: the label arrays are empty (a classifier task needs "
                          "labelled training and validation examples)")
    xb = torch.as_tensor(np.asarray(x[:2]))
    if not len(xb):
        raise ConfigError(f"no training inputs to call {where} on: the input array is empty")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(xb)
    except Exception as exc:  # noqa: BLE001  (any error of the user's forward)
        raise ConfigError(f"{where} cannot be called on the training inputs (one tensor, a batch of shape "
                          f"{list(xb.shape)}): {type(exc).__name__}: {exc}; a ClassifierTask calls model(x) "
                          "(a model taking several inputs: FunctionTask or FidelityTask)") from None
    finally:
        model.train(was)
    classes = max(int(np.max(v)) for v in present) + 1
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(xb) or out.shape[1] < classes:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where} returns {got} for a batch of {len(xb)}; a classifier returns (batch, classes) "
                          f"logits with at least {classes} classes (the largest label + 1)")


def first_tensor(output: Any, inputs: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """The model output to compare: a tensor, the first tensor of a tuple, or ``last_hidden_state``."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"cannot compare model outputs of type {type(output).__name__}: pass output_fn")


@torch.no_grad()
def eval_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int,
                 forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor] | None = None) -> torch.Tensor:
    """``model``'s outputs (float32) on ``inputs`` (tensors sharing their first, example, dimension), computed in
    eval mode without gradients, ``batch_size`` examples at a time; ``forward(model, inputs)`` defaults to
    ``model(*inputs)``. The model's training mode is restored."""
    was = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(inputs[0]), batch_size):
            part = tuple(t[i:i + batch_size] for t in inputs)
            outs.append((model(*part) if forward is None else forward(model, part)).float())
    finally:
        model.train(was)
    return torch.cat(outs)


def _as_batch(inputs: Any, where: str) -> tuple[torch.Tensor, ...]:
    tensors = tuple(torch.as_tensor(t) for t in inputs) if isinstance(inputs, (tuple, list)) else \
        (torch.as_tensor(inputs),)
    if not tensors or not len(tensors[0]) or any(len(t) != len(tensors[0]) for t in tensors):
        raise ConfigError(f"{where} inputs must be non-empty tensors with one common first (example) dimension")
    return tensors


def _row_hashes(batch: tuple[torch.Tensor, ...]) -> list[bytes]:
    n = len(batch[0])
    return [hashlib.blake2b(b"".join(t[i].contiguous().numpy().tobytes() for t in batch), digest_size=16).digest()
            for i in range(n)]


class _Hooks:
    """Forward hooks that record the first tensor of the outputs of named modules (removed on exit)."""

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool):
        self.model, self.names, self.detach = model, list(names), detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        modules = dict(self.model.named_modules())
        for name in self.names:  # all checked before any hook is registered: none is left behind on an error
            if name not in modules:
                raise ConfigError(f"fidelity task: hidden layer {name!r} of the reference is not a module of the "
                                  f"candidate ({type(self.model).__name__})")
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._record(name)))
        return self.outputs

    def _record(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = first_tensor(output)  # a copy for the teacher: a later in-place op must not change the target
            self.outputs[name] = out.detach().float().clone() if self.detach else out
        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


#: teacher hidden states are cached when they take at most this many bytes (else recomputed per batch)
HIDDEN_CACHE_BYTES = 512 * 2 ** 20


class FidelityTask(Task):
    """Distillation onto the reference's outputs; score = output fidelity on held-out inputs.

    ``calibration`` and ``evaluation``: inputs (a tensor / array, or a tuple of them, first dimension =
    examples), disjoint (an example in both is a ConfigError). ``metric``: ``"cosine"`` (mean cosine
    similarity of the outputs, per example; for embeddings) or ``"top1"`` (fraction of examples whose
    top-1 class agrees with the reference's). Training minimises ``1 - cosine`` plus the mean squared
    error (cosine metric) or the KL divergence to the reference's softmax (top-1 metric).
    ``output_fn(output, inputs) -> tensor`` picks what to compare (default: :func:`first_tensor`).
    ``lr_decay``: the learning rate of epoch ``e`` is ``lr * lr_decay**e`` (1: constant); a long
    distillation converges closer with a decaying rate. ``warmup_steps``: each candidate's first
    ``warmup_steps`` optimizer steps ramp the rate linearly from ``lr / warmup_steps`` up (0: none).
    ``dropout``: False sets the rate ``p`` of the candidate's dropout modules (``nn.Dropout`` and its kin) to
    0 while it trains (restored after; also silences modules that read their dropout module's ``p``, as
    BERT's attention does). The model still trains in training mode: fake-quant layers pass
    straight-through gradients only there.
    ``min_fidelity``: the search's floor (:attr:`Task.min_score`), e.g. 0.99 mean cosine.

    ``hidden_layers``: layer-wise (hidden-state) distillation: fnmatch patterns of module names of the
    reference (``*`` also matches dots: ``encoder.layer.?`` names BERT's six layers, ``encoder.layer.*`` every
    module inside them too); the first tensor of each matched module's output (:func:`first_tensor`, its
    first dimension the examples') is a target for the
    candidate's module of the same name (quantized candidates keep the reference's names). Each adds its
    mean squared error divided by the mean square of the reference's output; their mean, times
    ``hidden_weight``, is added to the output loss. A pattern matching no module, or a candidate output of
    another shape (e.g. a narrower layer), is a ConfigError. The reference's hidden outputs on the
    calibration inputs are cached when they fit :data:`HIDDEN_CACHE_BYTES`, else recomputed per batch.
    """

    def __init__(self, reference: nn.Module, calibration: Any, evaluation: Any, *, metric: str = "cosine",
                 output_fn: Callable[[Any, tuple[torch.Tensor, ...]], torch.Tensor] | None = None,
                 batch_size: int = 32, lr: float = 1e-4, proxy_fraction: float = 0.5, seed: int = 0,
                 lr_decay: float = 1.0, min_fidelity: float | None = None, warmup_steps: int = 0,
                 dropout: bool = True, hidden_layers: Sequence[str] = (), hidden_weight: float | None = None):
        if metric not in ("cosine", "top1"):
            raise ConfigError(f"fidelity metric must be 'cosine' or 'top1', got {metric!r}")
        if not 0 < proxy_fraction <= 1:
            raise ConfigError("proxy_fraction must be in (0, 1]")
        if not (is_number(lr) and lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"fidelity task: lr must be a positive number, got {lr!r}")
        if not (is_number(lr_decay) and 0 < lr_decay <= 1):
            raise ConfigError(f"fidelity task: lr_decay must be in (0, 1], got {lr_decay!r}")
        if min_fidelity is not None and not (is_number(min_fidelity) and
                                             (-1 if metric == "cosine" else 0) <= min_fidelity <= 1):
            raise ConfigError(f"fidelity task: min_fidelity must be a {metric} score (at most 1), got {min_fidelity!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"fidelity task: warmup_steps must be a non-negative int, got {warmup_steps!r}")
        if not isinstance(dropout, bool):
            raise ConfigError(f"fidelity task: dropout must be True or False, got {dropout!r}")
        patterns = None if isinstance(hidden_layers, str) or not hasattr(hidden_layers, "__iter__") else \
            list(hidden_layers)  # read once: a generator would be used up by the check
        if patterns is None or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"fidelity task: hidden_layers must be a sequence of module-name patterns, "
                              f"got {hidden_layers!r}")
        if hidden_weight is not None and not patterns:
            raise ConfigError("fidelity task: hidden_weight is given but no hidden_layers to weigh")
        if hidden_weight is not None and not (is_number(hidden_weight) and 0 < hidden_weight < math.inf):
            raise ConfigError(f"fidelity task: hidden_weight must be a positive number, got {hidden_weight!r}")
        names = [n for n, _ in reference.named_modules() if n]
        self.hidden_names: list[str] = []
        for pattern in patterns:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise ConfigError(f"fidelity task: hidden_layers pattern {pattern!r} matches no module of the "
                                  f"reference ({type(reference).__name__})")
            self.hidden_names += [n for n in matched if n not in self.hidden_names]
        self.hidden_weight = 1.0 if hidden_weight is None else float(hidden_weight)
        self.warmup_steps, self.dropout = warmup_steps, dropout
        self.reference = reference
        self._steps: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        self.min_score = None if min_fidelity is None else float(min_fidelity)
        self.calibration = _as_batch(calibration, "calibration")
        self.evaluation = _as_batch(evaluation, "evaluation")
        shared = set(_row_hashes(self.calibration)) & set(_row_hashes(self.evaluation))
        if shared:
            raise ConfigError(f"{len(shared)} evaluation example(s) are also calibration examples: keep the two sets "
                              "apart, or the fidelity score measures memorisation")
        self.metric, self.batch_size, self.seed = metric, batch_size, seed
        self.output_fn = output_fn or first_tensor
        self._optimizer = _Optimizers(lr)
        n = len(self.calibration[0])
        self.proxy_index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max(1, int(n * proxy_fraction))]
        self.hidden_targets: dict[str, torch.Tensor] | None = None
        if self.hidden_names:
            with _Hooks(reference, self.hidden_names, detach=True) as rec:
                eval_outputs(reference, tuple(t[:2] for t in self.calibration), 2, self._forward)
            for name, out in rec.items():  # cached targets are indexed by example along the first dimension
                if out.dim() == 0 or out.shape[0] != min(2, n):
                    raise ConfigError(f"fidelity task: hidden layer {name!r} outputs shape {tuple(out.shape)} for "
                                      f"{min(2, n)} examples: its first dimension must be the examples' (a "
                                      "sequence-first layer cannot be matched)")
            size = sum(t[0].numel() * 4 for t in rec.values()) * n
            if size <= HIDDEN_CACHE_BYTES:
                cached: dict[str, list[torch.Tensor]] = {k: [] for k in self.hidden_names}

                def forward(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
                    with _Hooks(model, self.hidden_names, detach=True) as outs:
                        result = self._forward(model, inputs)
                    for k in self.hidden_names:
                        cached[k].append(outs[k])
                    return result

                self.calibration_targets = eval_outputs(reference, self.calibration, self.batch_size, forward)
                self.hidden_targets = {k: torch.cat(v) for k, v in cached.items()}
        if self.hidden_targets is None:
            self.calibration_targets = eval_outputs(reference, self.calibration, self.batch_size, self._forward)
        self.evaluation_targets = eval_outputs(reference, self.evaluation, self.batch_size, self._forward)

    def _forward(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.output_fn(model(*inputs), inputs)

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.metric == "top1":
            return nn.functional.kl_div(out.log_softmax(-1), target.softmax(-1), reduction="batchmean")
        flat_o, flat_t = out.reshape(len(out), -1), target.reshape(len(target), -1)
        cos = nn.functional.cosine_similarity(flat_o, flat_t, dim=1)
        return (1 - cos).mean() + nn.functional.mse_loss(flat_o, flat_t) / (flat_t.pow(2).mean() + 1e-12)

    def _hidden_teacher(self, b: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.hidden_targets is not None:
            return {k: v[b] for k, v in self.hidden_targets.items()}
        with _Hooks(self.reference, self.hidden_names, detach=True) as outs:
            eval_outputs(self.reference, inputs, len(b), self._forward)
        return dict(outs)

    def _hidden_loss(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the hidden layers of the MSE relative to the mean square of the reference's output."""
        losses = []
        for name in self.hidden_names:
            s, t = student[name], teacher[name]
            if s.shape != t.shape:
                raise ConfigError(f"fidelity task: hidden layer {name!r} outputs shape {tuple(s.shape)} in the "
                                  f"candidate but {tuple(t.shape)} in the reference: a narrower candidate cannot "
                                  "match the reference's hidden states")
            losses.append(nn.functional.mse_loss(s.float(), t) / (t.pow(2).mean() + 1e-12))
        return torch.stack(losses).mean()

    def calibration_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.calibration

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        n = len(self.calibration[0])
        idx = self.proxy_index if proxy else torch.arange(n)
        opt = self._optimizer(model)
        rate = self.lr * self.lr_decay ** epoch
        rates = {} if self.dropout else \
            {m: m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
        for m in rates:
            m.p = 0.0
        model.train()
        try:
            self._train_batches(model, opt, idx, epoch, rate)
        finally:
            for m, p in rates.items():
                m.p = p
            model.eval()

    def _train_batches(self, model: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor, epoch: int,
                       rate: float) -> None:
        for b in shuffled_batches(idx, self.batch_size, self.seed * 1000 + epoch):
            step = self._steps.get(model, 0)
            for group in opt.param_groups:
                group["lr"] = rate * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else rate
            self._steps[model] = step + 1
            opt.zero_grad()
            inputs = tuple(t[b] for t in self.calibration)
            if self.hidden_names:
                teacher = self._hidden_teacher(b, inputs)
                with _Hooks(model, self.hidden_names, detach=False) as student:
                    out = self._forward(model, inputs)
                loss = self._loss(out, self.calibration_targets[b]) + \
                    self.hidden_weight * self._hidden_loss(student, teacher)
            else:
                loss = self._loss(self._forward(model, inputs), self.calibration_targets[b])
            loss.backward()
            opt.step()

    def evaluate(self, model: nn.Module) -> float:
        out = eval_outputs(model, self.evaluation, self.batch_size, self._forward)
        target = self.evaluation_targets
        if self.metric == "top1":
            return float((out.argmax(-1) == target.argmax(-1)).float().mean())
        return float(nn.functional.cosine_similarity(out.reshape(len(out), -1), target.reshape(len(target), -1),
                                                     dim=1).mean())


def combined_floor(reference_accuracy: float | None, max_drop: float | None, task: Task) -> float | None:
    """The score a candidate must reach: the higher of ``reference_accuracy - max_drop`` (when ``max_drop`` is
    set) and the task's own floor (``Task.min_score``, e.g. a fidelity task's ``min_fidelity``); None: no floor."""
    floors = []
    task_floor = getattr(task, "min_score", None)
    if task_floor is not None:
        floors.append(float(task_floor))
    if max_drop is not None:
        if reference_accuracy is None:
            raise ValueError("combined_floor: max_drop needs the reference's score")
        floors.append(float(reference_accuracy) - max_drop)
    return max(floors) if floors else None
