"""Everything `train --resume` needs beyond the model weights, as a safetensors / JSON pair (no pickle).

``RUN/last-state.safetensors`` holds the tensors (optimizer moments and steps, torch RNG states, numpy's global
MT19937 key); ``RUN/last-state.json`` holds the rest (optimizer param groups, scheduler, python and numpy RNG
states, the augmentation generator, epoch, step, best metric) and the sha256 of the safetensors file it belongs to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastast_deploy.checkpoints.access import _load_safetensors
from fastast_deploy.checkpoints.metadata import write_safetensors
from fastast_deploy.errors import CheckpointError, error_summary
from fastast_deploy.files import read_json_object, sha256_file, write_json_atomic

STATE_VERSION = 1
# How to go on from a run whose files are damaged: its weights are still a checkpoint.
DAMAGED_FIX = ("the run cannot continue exactly: start a new one in another -o (a FastAST run's weights fine-tune "
               "with --model RUN/last)")


@dataclass
class Progress:
    """Where a run stands after an epoch."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best: float | None = None  # best validation metric so far
    best_epoch: int | None = None
    aug_state: dict[str, Any] = field(default_factory=dict)  # numpy Generator state of the augmentations


def state_paths(run: Path) -> tuple[Path, Path]:
    return run / "last-state.safetensors", run / "last-state.json"


def save_state(run: Path, optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress,
               scaler: Any | None = None, to: tuple[Path, Path] | None = None) -> None:
    """Write the pair: tensors first, then the JSON that names their sha256; to ``state_paths(run)``, or to the
    (tensors, JSON) paths ``to`` (temps that a commit then moves into place)."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy.key"] = torch.from_numpy(np_state[1].astype(np.int64))
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    meta = {
        "version": STATE_VERSION,
        "epoch": progress.epoch,
        "step": progress.step,
        "best": progress.best,
        "best_epoch": progress.best_epoch,
        "aug_state": progress.aug_state,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_python": _python_state(),
        "rng_numpy": {"kind": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                      "cached_gaussian": float(np_state[4])},
    }
    tensor_path, json_path = to or state_paths(run)
    write_safetensors(tensor_path, tensors)
    meta["tensors_sha256"] = sha256_file(tensor_path)
    write_json_atomic(json_path, meta)


def read_run_json(path: Path, what: str) -> dict[str, Any]:
    """A run file's JSON object (``what`` it is, for the message); a one-line CheckpointError that says the run
    cannot resume and what to do when it is not valid UTF-8 JSON or not an object."""
    try:
        return read_json_object(path, CheckpointError, what)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err}; {DAMAGED_FIX}") from None


def read_state(run: Path) -> dict[str, Any]:
    """The JSON half of the state pair, checked: both files there, valid UTF-8 JSON, an object of this version; a
    one-line CheckpointError naming the file otherwise."""
    tensor_path, json_path = state_paths(run)
    for path in (tensor_path, json_path):
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} is missing (`train` writes it beside RUN/last); "
                                  f"{DAMAGED_FIX}")
    meta = read_run_json(json_path, "resume state")
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(f"cannot resume: {json_path} has state version {meta.get('version')!r}, this version "
                              f"reads {STATE_VERSION}")
    return meta


def load_state(run: Path, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any | None = None) -> Progress:
    """Restore optimizer, scheduler, scaler and every RNG; returns where the run stands."""
    tensor_path, json_path = state_paths(run)
    meta = read_state(run)
    if sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(f"cannot resume: {tensor_path} does not belong to {json_path} (sha256 differs); "
                              f"the run was interrupted while saving: start it again")
    tensors = _load_safetensors(tensor_path)
    try:
        return _restore(meta, tensors, optimizer, scheduler, scaler)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot resume: {json_path} or {tensor_path.name} does not hold a complete state "
                              f"({error_summary(err, with_type=True)}); {DAMAGED_FIX}") from None


def _restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: Any | None) -> Progress:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler") is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    rng = meta["rng_numpy"]
    key = tensors["rng.numpy.key"].numpy().astype(np.uint32)
    np.random.set_state((rng["kind"], key, rng["pos"], rng["has_gauss"], rng["cached_gaussian"]))
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return Progress(meta["epoch"], meta["step"], meta["best"], meta["best_epoch"], meta["aug_state"])


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
