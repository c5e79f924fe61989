"""Distillation losses: CMKD (Gong et al. 2022) on the pooled output, as FastAST trains with it, and DeiT's
(Touvron et al. 2021) through AST's distillation token.

    soft:      lambda * task(pooled, labels) + (1 - lambda) * kd(pooled / tau, teacher / tau)          (CMKD)
    hard:      lambda * task(pooled, labels) + (1 - lambda) * task(pooled, hard(teacher))
    deit-soft: lambda * task(cls, labels)    + (1 - lambda) * kd(dist / tau, teacher / tau)
    deit-hard: lambda * task(cls, labels)    + (1 - lambda) * task(dist, hard(teacher))                (DeiT)

multilabel: task is BCE-with-logits against the labels; kd is BCE-with-logits of student / tau against
sigmoid(teacher / tau); hard(teacher) is sigmoid(teacher) > 0.5.
singlelabel: task is cross-entropy; kd is KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2; hard(teacher)
is the one-hot argmax.

With ``standardize`` (`--kd-standardize`, single-label soft modes), teacher and student logits are each
z-scored over the labels before the temperature (logit standardisation, Sun et al. 2024): the targets' sharpness
then depends on tau alone, not on the scale a teacher's logits happen to have (a confident teacher's softmax is
nearly one-hot even at tau 4; a weak one's is nearly uniform), and the student matches the teacher's ranking of
the labels rather than its logit scale.

``pooled`` is the model's output (cls and dist tokens averaged, then the head); ``cls`` and ``dist`` are the head
applied to each token alone (`TokenHeads`), so that the deit modes train the two tokens apart, and inference, which
averages them, reads both. Logits are (B, labels). Targets are (B, labels) probabilities: multi-hot, one-hot, or mixed
by mixup. The KD target is a probability tensor too (`teacher_targets`), so that mixup can mix it like the labels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastast_deploy.errors import ConfigError
from fastast_deploy.training.config import KD_MODES, SOFT_KD_MODES, TASKS

TOKEN_MODES = ("deit-soft", "deit-hard")  # modes that read the cls and dist tokens apart


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


def standardized(logits: Tensor) -> Tensor:
    """Logits z-scored over the labels (last axis): mean 0, standard deviation 1 per clip."""
    logits = logits.float()
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True, unbiased=False) + 1e-6)


def teacher_targets(teacher_logits: Tensor, task: str, tau: float, mode: str = "soft",
                    standardize: bool = False) -> Tensor:
    """The KD target (B, labels): sigmoid(teacher / tau) for multilabel, softmax(teacher / tau) otherwise (of the
    standardised logits with ``standardize``, single-label); for the hard modes the teacher's decision instead
    (sigmoid > 0.5, or the one-hot argmax)."""
    _check_task(task)
    _check_mode(mode)
    if mode not in SOFT_KD_MODES:
        logits = teacher_logits.float()
        if task == "multilabel":
            return (logits > 0).float()
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    if task == "multilabel":
        return (teacher_logits.float() / tau).sigmoid()
    logits = standardized(teacher_logits) if standardize else teacher_logits.float()
    return (logits / tau).softmax(dim=-1)


def _check_mode(mode: str) -> None:
    if mode not in KD_MODES:  # "auto" is resolved by TrainConfig.resolved before losses are made
        raise ConfigError(f"unknown --kd-mode {mode!r}; available: {list(KD_MODES)}")


def kd_loss_from_targets(student_logits: Tensor, targets: Tensor, task: str, tau: float,
                         standardize: bool = False) -> Tensor:
    """KD loss of the student against teacher probabilities from `teacher_targets` (possibly mixed); with
    ``standardize`` (single-label) of the student's standardised logits."""
    _check_task(task)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(student_logits.float() / tau, targets)
    logits = standardized(student_logits) if standardize else student_logits.float()
    log_q = (logits / tau).log_softmax(dim=-1)
    kl = torch.xlogy(targets, targets) - targets * log_q  # p log p - p log q; 0 log 0 = 0
    return kl.sum(dim=-1).mean() * tau**2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, task: str, tau: float) -> Tensor:
    """KD loss of the student against teacher logits (B, labels)."""
    return kd_loss_from_targets(student_logits, teacher_targets(teacher_logits, task, tau), task, tau)


def cmkd_loss(student_logits: Tensor, targets: Tensor, kd_targets: Tensor | None, task: str, kd_lambda: float,
              tau: float, mode: str = "soft", token_logits: tuple[Tensor, Tensor] | None = None,
              standardize: bool = False) -> LossParts:
    """lambda * task + (1 - lambda) * KD as ``mode`` defines them (module docstring); without a teacher
    (``kd_targets`` None) the task loss of the pooled output alone. ``kd_targets`` come from `teacher_targets` with
    the same mode; the deit modes need ``token_logits`` = (cls, dist) logits (B, labels)."""
    if not 0.0 <= kd_lambda <= 1.0:
        raise ConfigError(f"--kd-lambda must be in [0, 1], got {kd_lambda}")
    if tau <= 0:
        raise ConfigError(f"--kd-tau must be > 0, got {tau}")
    _check_mode(mode)
    if kd_targets is None:
        task_part = task_loss(student_logits, targets, task)
        return LossParts(task_part, task_part, None)
    label_out, kd_out = student_logits, student_logits
    if mode in TOKEN_MODES:
        if token_logits is None:
            raise ConfigError(f"--kd-mode {mode} needs a student with a distillation token (FastAST)")
        label_out, kd_out = token_logits
    task_part = task_loss(label_out, targets, task)
    if mode not in SOFT_KD_MODES:
        kd_part = task_loss(kd_out, kd_targets, task)
    else:
        kd_part = kd_loss_from_targets(kd_out, kd_targets, task, tau, standardize)
    return LossParts(kd_lambda * task_part + (1 - kd_lambda) * kd_part, task_part, kd_part)


class TokenHeads(nn.Module):
    """A FastAST whose forward is its `token_logits` (B, 3, labels): the pooled output (the model's own), and the
    head applied to the cls token alone and to the dist token alone. Wrapping the model (rather than calling the
    method from the loop) keeps DDP's gradient hooks on the module that runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fbank: Tensor) -> Tensor:
        return self.model.token_logits(fbank)
