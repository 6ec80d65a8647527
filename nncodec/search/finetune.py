"""Training a searched candidate back to the reference's accuracy: distillation and a learning-rate schedule.

A quantized, pruned candidate trained on labels alone learns from one-hot targets; trained on the
reference's outputs as well (knowledge distillation) it learns the reference's whole output distribution,
which carries more per example and recovers more accuracy in the same epochs. The loss per batch is
``(1 - distill) * CE(student, labels) + distill * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al. 2015), the teacher being the reference in eval mode (its logits computed once per run).

:class:`FineTuneConfig` chooses it for the final fine-tuning of the search (and, with ``proxy=True``, for
the trials' proxy training too); the learning rate follows ``schedule`` over the run's steps: ``"constant"``
or ``"cosine"`` (from ``lr`` down to ``lr * min_lr_ratio``). It needs a :class:`ClassifierTask` (labels and
training inputs at hand); a :class:`FidelityTask` distils already.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..checks import is_number
from ..errors import ConfigError
from ..train import shuffled_batches
from .score import coerce_settings
from .task import ClassifierTask, Task, eval_outputs

__all__ = ["FineTuneConfig", "Distiller", "distillation_loss"]

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FineTuneConfig:
    """How the final fine-tuning trains (``SearchConfig(finetune=...)``)."""

    distill: float = 0.5          #: weight in [0, 1] of the distillation term (0: labels only, 1: teacher only)
    temperature: float = 4.0      #: softmax temperature T > 0 of the distillation term
    schedule: str = "cosine"      #: "constant" or "cosine" (per step, over the whole run)
    lr: float | None = None       #: Adam's initial learning rate; None: the task's
    min_lr_ratio: float = 0.05    #: the cosine schedule's last rate as a fraction of ``lr``, in [0, 1]
    proxy: bool = False           #: train the trials' proxy epochs the same way (else the task's own epochs)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("schedule", "proxy") or (f.name == "lr" and v is None):
                continue
            if not is_number(v) or not math.isfinite(v):
                raise ConfigError(f"finetune: {f.name} must be a finite number, got {v!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"finetune: distill is a weight in [0, 1], got {self.distill!r}")
        if self.temperature <= 0:
            raise ConfigError(f"finetune: temperature must be > 0, got {self.temperature!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"finetune: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"finetune: lr must be > 0 (or None: the task's), got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"finetune: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.proxy, bool):
            raise ConfigError(f"finetune: proxy must be True or False, got {self.proxy!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "FineTuneConfig | dict[str, Any]") -> "FineTuneConfig":
        """A :class:`FineTuneConfig`, or one made from a dict of its fields (unknown keys are an error)."""
        return coerce_settings(cls, value, "finetune")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, distill: float,
                      temperature: float) -> torch.Tensor:
    """``(1 - distill) * CE(student, labels) + distill * T^2 * KL(teacher_T || student_T)`` (logits in)."""
    loss = student.new_zeros(())
    if distill < 1.0:
        loss = loss + (1.0 - distill) * nn.functional.cross_entropy(student, labels)
    if distill > 0.0:
        t = temperature
        kl = nn.functional.kl_div((student / t).log_softmax(-1), (teacher / t).log_softmax(-1), log_target=True,
                                  reduction="batchmean")
        loss = loss + distill * t * t * kl
    return loss


class Distiller:
    """Trains candidates on a :class:`ClassifierTask`'s data with :func:`distillation_loss` from ``reference``."""

    def __init__(self, reference: nn.Module, task: Task, config: FineTuneConfig):
        if not isinstance(task, ClassifierTask):
            raise ConfigError(f"finetune (distillation, lr schedule) trains on a ClassifierTask's labelled data; got a "
                              f"{type(task).__name__} (a FidelityTask distils already; a FunctionTask trains itself)")
        self.task, self.cfg, self.reference = task, config, reference
        self.lr = config.lr if config.lr is not None else task.lr

    @functools.cached_property
    def teacher_logits(self) -> torch.Tensor | None:
        """The reference's logits on the whole training set (None without distillation), computed on the first
        training that uses them: a search whose distiller never trains (e.g. a trial worker without
        ``proxy=True``) pays nothing."""
        return eval_outputs(self.reference, (self.task.x_train,), 512) if self.cfg.distill > 0 else None

    def restricted(self, task: ClassifierTask, rows: torch.Tensor) -> "Distiller":
        """A distiller for ``task``, whose training examples are this task's at positions ``rows`` (e.g. the fit
        part of ``ClassifierTask.hold_out``): its teacher logits are this one's at ``rows``, not computed again
        (computed here first when not yet)."""
        if len(rows) != len(task.x_train):
            raise ConfigError(f"finetune: {len(rows)} rows for a task of {len(task.x_train)} training examples")
        out = Distiller(self.reference, task, self.cfg)
        if self.cfg.distill > 0:
            out.__dict__["teacher_logits"] = self.teacher_logits[rows]  # type: ignore[index]
        return out

    def train(self, model: nn.Module, epochs: int, proxy: bool,
              after_epoch: "Any | None" = None) -> None:
        """Train ``model`` for ``epochs`` on the training set (``proxy``: the task's proxy subset), one fresh
        Adam run with the configured schedule; ``after_epoch(epoch)`` is called after each epoch."""
        task, cfg = self.task, self.cfg
        idx = task.proxy_index if proxy else torch.arange(len(task.x_train))
        steps_per_epoch = max(1, math.ceil(len(idx) / task.batch_size))
        total = max(1, epochs * steps_per_epoch)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        step = 0
        for epoch in range(epochs):
            model.train()
            for b in shuffled_batches(idx, task.batch_size, task.seed * 1000 + epoch):
                if cfg.schedule == "cosine":
                    floor, progress = cfg.min_lr_ratio, step / max(1, total - 1)  # the last step runs at the floor
                    for g in opt.param_groups:
                        g["lr"] = self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
                teacher = self.teacher_logits[b] if self.teacher_logits is not None else None
                opt.zero_grad()
                out = model(task.x_train[b])
                distillation_loss(out, teacher if teacher is not None else out.detach(), task.y_train[b],
                                  cfg.distill if teacher is not None else 0.0, cfg.temperature).backward()
                opt.step()
                step += 1
            model.eval()
            if after_epoch is not None:
                after_epoch(epoch)
