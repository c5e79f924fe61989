"""Teachers for distillation: CNN models, loading any teacher (CNN run, AST or FastAST checkpoint) for
`train --teacher`, and teacher-logits files (`train --teacher-logits`).

The CNN is EfficientNet from timm where timm is installed (randomly initialised: no hub downloads), else a compact
VGG-style CNN. Its checkpoints are one safetensors file with JSON metadata under ``fastast_deploy_cnn``, never a
pickle. A teacher carries ``label_names`` and ``feature_config`` like FastAST, and maps (B, T, F) normalised fbank
to logits (B, labels).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastast_deploy.audio.datasets import Dataset
from fastast_deploy.audio.features import FeatureConfig
from fastast_deploy.errors import CheckpointError, ConfigError, DatasetError, error_summary
from fastast_deploy.files import atomic_path

CNN_METADATA_KEY = "fastast_deploy_cnn"
CNN_FORMAT_VERSION = 1
CNN_ARCHS = ("compact", "efficientnet_b0", "efficientnet_b2")


@dataclass(frozen=True)
class CNNConfig:
    """A CNN classifier of (frames, mel bins) fbank. ``width`` is the compact CNN's first stage's channels."""

    num_labels: int
    input_frames: int
    num_mel_bins: int
    arch: str = "compact"
    width: int = 32

    def __post_init__(self) -> None:
        if self.arch not in CNN_ARCHS:
            raise ConfigError(f"unknown CNN architecture {self.arch!r}; available: {list(CNN_ARCHS)}")
        for name in ("num_labels", "input_frames", "num_mel_bins", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CNN {name} must be >= 1, got {getattr(self, name)}")
        if min(self.input_frames, self.num_mel_bins) < 16:
            raise ConfigError(f"a CNN input needs at least 16 frames and 16 mel bins, got "
                              f"{self.input_frames} x {self.num_mel_bins}")


def default_cnn_arch() -> str:
    """EfficientNet-B2 (the CMKD paper's CNN) where timm is installed, else the compact CNN."""
    return "efficientnet_b2" if importlib.util.find_spec("timm") is not None else "compact"


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactCNN(nn.Module):
    """Four stages of two 3x3 conv + BN + ReLU and 2x2 average pooling; frequency mean, time mean + max, linear."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        w = config.width
        stages, cin = [], 1
        for cout in (w, 2 * w, 4 * w, 8 * w):
            stages += [_conv(cin, cout), _conv(cout, cout), nn.AvgPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(cin, config.num_labels)

    def forward(self, fbank: Tensor) -> Tensor:
        x = self.features(fbank.unsqueeze(1))  # (B, C, T / 16, F / 16)
        x = x.mean(dim=3)  # (B, C, T')
        return self.head(x.mean(dim=2) + x.amax(dim=2))  # (B, labels)


class TimmCNN(nn.Module):
    """A timm image model on one input channel: (B, T, F) -> (B, 1, T, F)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError(f"CNN architecture {config.arch} needs timm (pip install timm); "
                              f"use the compact CNN instead") from None
        self.net = timm.create_model(config.arch, pretrained=False, in_chans=1, num_classes=config.num_labels)

    def forward(self, fbank: Tensor) -> Tensor:
        return self.net(fbank.unsqueeze(1))


class CNNClassifier(nn.Module):
    """A CNN teacher (or student) with the attributes the training loop and checkpoints expect."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.body = CompactCNN(config) if config.arch == "compact" else TimmCNN(config)
        self.label_names: tuple[str, ...] | None = None
        self.feature_config: FeatureConfig | None = None
        self.extra: dict[str, Any] = {}  # what training recorded (task, metrics), set by `load_cnn`

    def forward(self, fbank: Tensor) -> Tensor:
        """(B, T, F) normalised fbank -> logits (B, labels)."""
        expected = (self.config.input_frames, self.config.num_mel_bins)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != expected:
            raise ConfigError(f"CNN input must be (batch, {expected[0]} frames, {expected[1]} mel bins), "
                              f"got {tuple(fbank.shape)}")
        return self.body(fbank)


def save_cnn(model: CNNClassifier, path: str | os.PathLike[str], *, label_names: Sequence[str] | None = None,
             feature_config: FeatureConfig | None = None, extra: dict[str, Any] | None = None) -> Path:
    """One safetensors file with the config, labels and features in its header; atomic."""
    from safetensors.torch import save_file

    labels = label_names if label_names is not None else model.label_names
    features = feature_config or model.feature_config
    if labels is not None and len(labels) != model.config.num_labels:
        raise ConfigError(f"{len(labels)} label names for a CNN with {model.config.num_labels} outputs")
    meta = {
        "format_version": CNN_FORMAT_VERSION,
        "model": asdict(model.config),
        "labels": None if labels is None else [str(n) for n in labels],
        "features": None if features is None else features.to_dict(),
        "extra": extra or {},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", CNN_METADATA_KEY: json.dumps(meta)})
    return Path(path)


def cnn_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The CNN metadata of a safetensors file, None when the file is not a CNN checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(CNN_METADATA_KEY)
    except (SafetensorError, OSError, ValueError):
        return None
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: CNN metadata is not valid JSON") from None
    if meta.get("format_version") != CNN_FORMAT_VERSION:
        raise CheckpointError(f"{path} has CNN checkpoint version {meta.get('format_version')!r}; this version "
                              f"reads {CNN_FORMAT_VERSION}")
    return meta


def load_cnn(path: str | os.PathLike[str]) -> CNNClassifier:
    from safetensors.torch import load_file

    from fastast_deploy.checkpoints.native import load_state_dict_strict

    meta = cnn_metadata(path)
    if meta is None:
        raise CheckpointError(f"{path} is not a CNN checkpoint written by `fastast-deploy train --arch cnn`")
    try:
        config = CNNConfig(**meta["model"])
        features = FeatureConfig.from_dict(meta["features"]) if meta.get("features") else None
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path}: invalid CNN configuration ({err})") from None
    model = CNNClassifier(config)
    load_state_dict_strict(model, load_file(str(path), device="cpu"), f"CNN checkpoint {path}")
    model.label_names = tuple(meta["labels"]) if meta.get("labels") else None
    model.feature_config = features
    model.extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    return model.eval()


def model_extra(model: nn.Module) -> dict[str, Any]:
    """What training recorded in a checkpoint (``task``, ``metrics``, ...) for a CNN or FastAST; {} if nothing."""
    extra = getattr(model, "extra", None)
    if extra is None:
        extra = (getattr(model, "source_info", None) or {}).get("extra")
    return extra if isinstance(extra, dict) else {}


def resolve_run(source: str | os.PathLike[str]) -> Path:
    """A training run directory stands for its ``best`` checkpoint; anything else is itself."""
    path = Path(source)
    if path.is_dir() and (path / "best").is_file():
        return path / "best"
    return path


def load_teacher(source: str | os.PathLike[str]) -> nn.Module:
    """A teacher in eval mode: a CNN checkpoint or run, or anything `load_model` reads (AST .pth, Hugging Face AST
    directory, FastAST checkpoint or run; with its own ToMe schedule)."""
    from fastast_deploy.checkpoints.native import load_model

    path = resolve_run(source)
    if path.is_file() and cnn_metadata(path) is not None:
        return load_cnn(path)
    return load_model(path).eval()


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
