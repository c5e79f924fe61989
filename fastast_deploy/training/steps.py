"""What preparing a run and the loop both use: scoring a model on cached inputs, the validation metric, the task
check and seeding. Below both ``setup`` and ``loop`` (which imports ``setup``), so neither imports the other back."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor, nn

from fastast_deploy.audio.datasets import Dataset
from fastast_deploy.errors import DatasetError
from fastast_deploy.metrics import accuracy, mean_average_precision


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Logits (N, labels) of ``model`` in eval mode over inputs (N, T, F), float32 on the CPU."""
    was_training = model.training
    model.eval()
    outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outs)


def evaluate(logits: Tensor, targets: Tensor, task: str) -> tuple[str, float]:
    """("val_acc", accuracy) for single-label tasks, ("val_map", mAP) for multi-label ones."""
    if task == "singlelabel":
        return "val_acc", accuracy(logits.numpy(), targets.numpy())
    return "val_map", mean_average_precision(logits.numpy(), targets.numpy())


def check_task(task: str, *datasets: Dataset) -> str:
    """The task to train: detected from the labels for "auto"; a single-label task refuses multi-label clips."""
    from fastast_deploy.audio.datasets import detect_task

    detected = detect_task(*datasets)
    if task == "auto":
        return detected
    if task == "singlelabel" and detected == "multilabel":
        count = sum(1 for d in datasets for e in d.examples if len(e.labels) != 1)
        raise DatasetError(f"--task singlelabel, but {count} clips have several labels; use --task multilabel")
    return task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
