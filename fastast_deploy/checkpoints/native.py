"""FastAST checkpoints: original AST ``.pth`` files, Hugging Face AST directories (both read in ``foreign``), and
this project's own safetensors. `load_model` detects the format and builds FastAST with strict key and shape
matching. Pickles are only ever read with ``torch.load(..., weights_only=True)``: tensors, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastast_deploy.checkpoints.access import (
    _EXPECTED,
    ACCEPTED_FORMATS,
    Checkpoint,
    _checked,
    _count,
    _info,
    _load_safetensors,
    _safetensors_layout,
)
from fastast_deploy.checkpoints.foreign import _read_hf_dir, _read_pth
from fastast_deploy.checkpoints.hub import resolve_source
from fastast_deploy.checkpoints.metadata import CNN_METADATA_KEY, read_metadata, write_checkpoint_file
from fastast_deploy.contract import METADATA_KEY
from fastast_deploy.errors import CheckpointError, ConfigError, DatasetError
from fastast_deploy.files import sha256_file
from fastast_deploy.model.config import AUDIOSET, FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.schedule import PROTECTED_TOKENS, make_schedule

FORMAT_VERSION = 1
DEFAULT_SOURCE = "default"  # the SOURCE that names the model shipped in the package


def load_model(
    source: str | os.PathLike[str],
    *,
    tome_r: int | Sequence[int] | None = None,
    tome_inflection: float = 0.0,
    prop_attn: bool | None = None,
    input_frames: int | None = None,
    merge_impl: str = "matmul",
    labels: str | os.PathLike[str] | None = None,
) -> FastAST:
    """Read any accepted checkpoint and build FastAST in eval mode.

    ``tome_r=None`` keeps the checkpoint's own ToMe schedule (none: no merging); an int becomes
    ``make_schedule(r, depth, tome_inflection)``, a list is the per-block schedule. ``prop_attn=None`` keeps the
    checkpoint's setting (default True). ``input_frames`` adapts the positional embedding to another input length.
    ``labels`` is an AST ``class_labels_indices.csv`` that names the outputs. The model carries ``label_names``,
    ``feature_config`` and ``source_info`` (format, path, sha256 of every file read).
    """
    ckpt = read_checkpoint(source)
    held = sum(v.numel() for v in ckpt.state_dict.values())
    if ckpt.config.parameter_estimate > 2 * held + 1_000_000:  # checked before the model is allocated
        raise CheckpointError(f"checkpoint {ckpt.info.get('path', source)}: its configuration describes about "
                              f"{ckpt.config.parameter_estimate:,} parameters, but it holds {held:,} values; "
                              "the configuration is damaged")
    if input_frames is not None and input_frames != ckpt.config.input_frames:
        ckpt = change_input_frames(ckpt, input_frames)
    names, info = ckpt.labels, dict(ckpt.info)
    if labels is not None:
        names = _label_names(labels)
        info["sha256"] = {**info["sha256"], str(Path(labels)): sha256_file(labels)}
    if names is not None and len(names) != ckpt.config.num_labels:
        raise CheckpointError(
            f"{len(names)} label names for a model with {ckpt.config.num_labels} outputs; "
            f"give a label CSV with one row per output"
        )
    saved = ckpt.tome or TomeConfig()
    schedule = saved.schedule if tome_r is None else make_schedule(tome_r, ckpt.config.depth, tome_inflection)
    tome = TomeConfig(schedule, saved.prop_attn if prop_attn is None else prop_attn, merge_impl)
    model = build_model(ckpt.config, tome)
    load_state_dict_strict(model, ckpt.state_dict, f"checkpoint {info['path']}")
    model.label_names = names
    model.feature_config = ckpt.features
    model.source_info = info
    return model


def default_checkpoint() -> Path:
    """The small FastAST shipped in the package (trained by this project on its synthetic dataset)."""
    path = Path(__file__).parents[1] / "assets" / "default.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the default model is missing from this installation ({path}); reinstall "
                              "fastast-deploy or give a checkpoint path")
    return path


def _label_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Display names from an AST ``class_labels_indices.csv``, as a checkpoint error when it does not fit."""
    from fastast_deploy.audio.labels import read_label_csv

    try:
        return read_label_csv(path).names
    except DatasetError as err:
        raise CheckpointError(str(err)) from None


def resolve_run(source: str | os.PathLike[str]) -> Path:
    """The local path of SOURCE (a Hub id ``ORG/NAME[@REVISION]`` becomes its cached snapshot, `resolve_source`);
    a training run directory stands for its ``best`` checkpoint; anything else is itself."""
    path = resolve_source(source)
    if path.is_dir() and (path / "best").is_file():
        return path / "best"
    return path


def read_checkpoint(source: str | os.PathLike[str]) -> Checkpoint:
    """Detect the format of ``source`` (a training run meaning its best checkpoint) and convert it; CheckpointError
    naming the path when nothing fits."""
    path = default_checkpoint() if str(source) == DEFAULT_SOURCE and not Path(source).exists() else \
        resolve_run(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_EXPECTED}")
    if path.is_dir():
        return _read_hf_dir(path)
    if _looks_like_safetensors(path):
        return _read_own(path)
    return _read_pth(path)


# ---- this project's safetensors --------------------------------------------------------------------------------


def save_checkpoint(
    model: FastAST,
    path: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    feature_config: FeatureConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as one safetensors file with its configs in the header; atomic (temp file + rename).

    Label names and feature config default to the model's ``label_names`` / ``feature_config`` attributes.
    """
    config = model.config
    if label_names is None:
        label_names = getattr(model, "label_names", None)
    if feature_config is None:
        feature_config = getattr(model, "feature_config", None) or replace(
            AUDIOSET, num_mel_bins=config.num_mel_bins, frames=config.input_frames
        )
    if label_names is not None and len(label_names) != config.num_labels:
        raise ConfigError(f"{len(label_names)} label names for a model with {config.num_labels} outputs")
    if (feature_config.frames, feature_config.num_mel_bins) != (config.input_frames, config.num_mel_bins):
        raise ConfigError(
            f"feature config gives {feature_config.frames} frames x {feature_config.num_mel_bins} mel bins but the "
            f"model takes {config.input_frames} x {config.num_mel_bins}"
        )
    meta = {
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "tome": model.tome.to_dict(),
        "labels": None if label_names is None else [str(n) for n in label_names],
        "features": feature_config.to_dict(),
        "extra": extra or {},
    }
    return write_checkpoint_file(path, model.state_dict(), METADATA_KEY, meta)


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fastast-deploy metadata of a checkpoint written by `save_checkpoint`; reads only the file header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; expected a .safetensors file from save_checkpoint")
    meta = read_metadata(path, METADATA_KEY, "FastAST checkpoint", FORMAT_VERSION)
    if meta is None:
        header, needed = _safetensors_layout(path)  # the reason, when it is no safetensors file at all
        if CNN_METADATA_KEY in (header.get("__metadata__") or {}):
            raise CheckpointError(f"{path} is a CNN checkpoint (train --arch cnn): predict and evaluate take it, and "
                                  "train --teacher; export, verify and bench take a FastAST or AST checkpoint")
        if any(k.startswith(("audio_spectrogram_transformer.", "classifier.")) for k in header):
            size = path.stat().st_size
            if size < needed:
                raise CheckpointError(f"{path} is a Hugging Face AST weights file cut short ({size} of {needed} "
                                      "bytes): download it again, then pass its directory")
            raise CheckpointError(f"{path} holds Hugging Face AST weights; pass the directory {path.parent} (with "
                                  "its config.json) instead")
        raise CheckpointError(f"{path} is a safetensors file without fastast-deploy metadata; {_EXPECTED}")
    return meta


def _read_own(path: Path) -> Checkpoint:
    meta = read_checkpoint_metadata(path)

    def parse() -> tuple[ModelConfig, TomeConfig, FeatureConfig]:
        return (
            ModelConfig.from_dict(meta["model"]),
            TomeConfig.from_dict(meta["tome"]),
            FeatureConfig.from_dict(meta["features"]),
        )

    config, tome, features = _checked(path, parse)
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, str) for n in labels)):
        raise CheckpointError(f"{path}: metadata labels must be a list of strings or null")
    info = _info("fastast-deploy", path, [path]) | {"extra": meta.get("extra") or {}}
    state = _load_safetensors(path)
    return Checkpoint(config, state, features, None if labels is None else tuple(labels), tome, info)


def _looks_like_safetensors(path: Path) -> bool:
    """A .safetensors name, or a file that starts with a plausible header length and '{'."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


# ---- shared steps ----------------------------------------------------------------------------------------------


def adapt_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Positional embedding (1, 2 + f*t, C) for patch grid ``old_grid`` -> (1, 2 + f'*t', C) for ``new_grid``.

    As AST does: the 2 prefix entries (cls, dist) are kept; the patch part, laid out as a (f, t) grid, is
    centre-cropped along an axis that shrinks (start ``old // 2 - new // 2``) and bilinearly interpolated
    (``align_corners=False``) along one that grows, time axis first.
    """
    (f0, t0), (f1, t1) = old_grid, new_grid
    _, n, c = pos_embed.shape
    if n != PROTECTED_TOKENS + f0 * t0:
        raise ConfigError(f"pos_embed has {n} entries, expected 2 + {f0}x{t0} = {2 + f0 * t0} for grid {old_grid}")
    if (f0, t0) == (f1, t1):
        return pos_embed
    prefix, patches = pos_embed[:, :PROTECTED_TOKENS], pos_embed[:, PROTECTED_TOKENS:]
    grid = patches.transpose(1, 2).reshape(1, c, f0, t0).float()  # (1, C, f, t)
    grid = _resize_axis(grid, 3, t1)
    grid = _resize_axis(grid, 2, f1)  # (1, C, f', t')
    patches = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, f'*t', C)
    return torch.cat([prefix, patches], dim=1).contiguous()


def _resize_axis(grid: Tensor, axis: int, new: int) -> Tensor:
    """Centre-crop or bilinearly stretch one axis (2: frequency, 3: time) of a (1, C, f, t) grid."""
    old = grid.shape[axis]
    if new == old:
        return grid
    if new < old:
        return grid.narrow(axis, old // 2 - new // 2, new)
    size = (new, grid.shape[3]) if axis == 2 else (grid.shape[2], new)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def change_input_frames(ckpt: Checkpoint, input_frames: int) -> Checkpoint:
    """The checkpoint for another input length: new config, adapted pos_embed, feature frames to match."""
    config = replace(ckpt.config, input_frames=input_frames)  # ConfigError when shorter than one patch
    state = dict(ckpt.state_dict)
    if "pos_embed" in state:
        state["pos_embed"] = adapt_pos_embed(state["pos_embed"], ckpt.config.grid, config.grid)
    info = ckpt.info | {"pos_embed_grid": [list(ckpt.config.grid), list(config.grid)]}
    features = replace(ckpt.features, frames=input_frames)
    return replace(ckpt, config=config, state_dict=state, features=features, info=info)


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or mis-shaped key is one CheckpointError with counts."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        _count(items, what)
        for items, what in ((missing, "missing key"), (unexpected, "unexpected key"), (mismatched, "shape mismatch"))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model: {', '.join(problems)}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # NaN or inf weights give NaN outputs that no later check could trust
        raise CheckpointError(f"{source} holds NaN or inf values in {_count(broken, 'tensor')}; it is damaged "
                              "or diverged in training: use another checkpoint")
    model.load_state_dict(state, strict=True)




__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_SOURCE",
    "Checkpoint",
    "adapt_pos_embed",
    "change_input_frames",
    "default_checkpoint",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
