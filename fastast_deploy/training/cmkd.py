"""Cross-model knowledge distillation (CMKD, Gong et al. 2022) losses, as FastAST trains with them.

    loss = lambda * task_loss(student, labels) + (1 - lambda) * kd_loss(student / tau, teacher / tau)

multilabel: BCE-with-logits against the labels; KD is BCE-with-logits of student / tau against sigmoid(teacher / tau).
singlelabel: cross-entropy; KD is KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2.

Logits are (B, labels). Targets are (B, labels) probabilities: multi-hot, one-hot, or mixed by mixup. The KD target
is a probability tensor too (`teacher_targets`), so that mixup can mix it the same way as the labels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fastast_deploy.errors import ConfigError
from fastast_deploy.training.config import TASKS


class LossParts(NamedTuple):
    total: Tensor
    task: Tensor
    kd: Tensor | None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; available: {list(TASKS)}")


def task_loss(logits: Tensor, targets: Tensor, task: str) -> Tensor:
    """Mean BCE-with-logits over every (clip, label) for multilabel; mean cross-entropy over clips otherwise."""
    _check_task(task)
    logits = logits.float()
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)  # probability targets: -sum p log softmax, averaged over clips


def teacher_targets(teacher_logits: Tensor, task: str, tau: float) -> Tensor:
    """The KD target (B, labels): sigmoid(teacher / tau) for multilabel, softmax(teacher / tau) otherwise."""
    _check_task(task)
    scaled = teacher_logits.float() / tau
    return scaled.sigmoid() if task == "multilabel" else scaled.softmax(dim=-1)


def kd_loss_from_targets(student_logits: Tensor, targets: Tensor, task: str, tau: float) -> Tensor:
    """KD loss of the student against teacher probabilities from `teacher_targets` (possibly mixed)."""
    _check_task(task)
    scaled = student_logits.float() / tau
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(scaled, targets)
    log_q = scaled.log_softmax(dim=-1)
    kl = torch.xlogy(targets, targets) - targets * log_q  # p log p - p log q; 0 log 0 = 0
    return kl.sum(dim=-1).mean() * tau**2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, task: str, tau: float) -> Tensor:
    """KD loss of the student against teacher logits (B, labels)."""
    return kd_loss_from_targets(student_logits, teacher_targets(teacher_logits, task, tau), task, tau)


def cmkd_loss(student_logits: Tensor, targets: Tensor, kd_targets: Tensor | None, task: str, kd_lambda: float,
              tau: float) -> LossParts:
    """lambda * task + (1 - lambda) * KD; without a teacher (``kd_targets`` None) the task loss alone."""
    if not 0.0 <= kd_lambda <= 1.0:
        raise ConfigError(f"--kd-lambda must be in [0, 1], got {kd_lambda}")
    if tau <= 0:
        raise ConfigError(f"--kd-tau must be > 0, got {tau}")
    task_part = task_loss(student_logits, targets, task)
    if kd_targets is None:
        return LossParts(task_part, task_part, None)
    kd_part = kd_loss_from_targets(student_logits, kd_targets, task, tau)
    return LossParts(kd_lambda * task_part + (1 - kd_lambda) * kd_part, task_part, kd_part)
