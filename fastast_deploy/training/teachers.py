"""Teacher logits files for distillation (`train --teacher-logits`): written and read as .npz, matched to the
training clips by id."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastast_deploy.audio.datasets import Dataset
from fastast_deploy.errors import DatasetError, error_summary
from fastast_deploy.files import atomic_path


def first_differences(a: tuple[str, ...] | list[str], b: tuple[str, ...]) -> str:
    """Where two label lists of equal length differ: up to three "#i: 'x' vs 'y'"."""
    pairs = [f"#{i}: {x!r} vs {y!r}" for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    return ", ".join(pairs[:3]) + (", ..." if len(pairs) > 3 else "")


def write_teacher_logits(path: Path, logits: Tensor, clips: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """An .npz with ``logits`` (N, labels) float32, ``clips`` (N,) clip ids and ``labels`` (labels,) names."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, logits=logits.numpy().astype(np.float32), clips=np.array(clips, dtype=str),
                 labels=np.array(labels, dtype=str))


def read_teacher_logits(path: str | os.PathLike[str], train: Dataset) -> Tensor:
    """Teacher logits (N, labels) in training-set order from an .npz with ``logits`` and ``clips`` (the clip ids as
    the data lists them); without ``clips``, row i belongs to the i-th training clip. Optional ``labels``: names."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"teacher logits {path} do not exist; expected an .npz with arrays logits and clips")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read teacher logits {path} ({error_summary(err)}); expected an .npz "
                           f"with a float array logits (N, labels) and a string array clips (N,)") from None
    if "logits" not in arrays:
        raise DatasetError(f"{path} has no array 'logits' (found {sorted(arrays)}); expected logits (N, labels)")
    logits, size = arrays["logits"], len(train.labels)
    if logits.ndim != 2 or logits.shape[1] != size:
        raise DatasetError(f"teacher logits in {path} have shape {logits.shape}, expected (clips, {size}) for the "
                           f"{size} labels of the dataset")
    if "labels" in arrays and tuple(str(n) for n in arrays["labels"]) != train.labels.names:
        raise DatasetError(f"teacher logits in {path} are for other labels "
                           f"({first_differences(list(arrays['labels']), train.labels.names)})")
    if "clips" not in arrays:
        if len(logits) != len(train):
            raise DatasetError(f"teacher logits in {path} have {len(logits)} rows and no clips array; expected one "
                               f"row per training clip ({len(train)}) in data order, or a clips array naming them")
        return torch.from_numpy(logits.astype(np.float32))
    clips = [str(c) for c in arrays["clips"]]
    if len(clips) != len(logits):
        raise DatasetError(f"{path}: {len(clips)} clips for {len(logits)} rows of logits; expected one id per row")
    row = {c: i for i, c in enumerate(clips)}
    missing = [c for c in train.clips if c not in row]
    if missing:
        raise DatasetError(f"teacher logits in {path} lack {len(missing)} of {len(train)} training clips "
                           f"(e.g. {missing[0]}); ids must be the wav entries as the data file lists them")
    return torch.from_numpy(logits[[row[c] for c in train.clips]].astype(np.float32))
