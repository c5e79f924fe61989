"""CNN checkpoints: one safetensors file with JSON metadata under ``fastast_deploy_cnn`` (config, labels, feature
settings, what training recorded), never a pickle."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastast_deploy.checkpoints.access import _load_safetensors
from fastast_deploy.checkpoints.metadata import CNN_METADATA_KEY, read_metadata, write_checkpoint_file
from fastast_deploy.checkpoints.native import load_state_dict_strict
from fastast_deploy.errors import CheckpointError, ConfigError
from fastast_deploy.model.cnn import CNNClassifier, CNNConfig
from fastast_deploy.model.config import FeatureConfig

CNN_FORMAT_VERSION = 1


def save_cnn(model: CNNClassifier, path: str | os.PathLike[str], *, label_names: Sequence[str] | None = None,
             feature_config: FeatureConfig | None = None, extra: dict[str, Any] | None = None) -> Path:
    """One safetensors file with the config, labels and features in its header; atomic."""
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
    return write_checkpoint_file(path, model.state_dict(), CNN_METADATA_KEY, meta)


def cnn_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The CNN metadata of a file, reading only its header; None when the file is not a CNN checkpoint, a one-line
    CheckpointError when it is a damaged one."""
    return read_metadata(path, CNN_METADATA_KEY, "CNN checkpoint", CNN_FORMAT_VERSION)


def load_cnn(path: str | os.PathLike[str]) -> CNNClassifier:
    path = Path(path)
    meta = cnn_metadata(path)
    if meta is None:
        raise CheckpointError(f"{path} is not a CNN checkpoint written by `fastast-deploy train --arch cnn`")
    try:
        config = CNNConfig(**meta["model"])
        features = FeatureConfig.from_dict(meta["features"]) if meta.get("features") else None
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path}: invalid CNN configuration ({err})") from None
    model = CNNClassifier(config)
    load_state_dict_strict(model, _load_safetensors(path), f"CNN checkpoint {path}")
    model.label_names = tuple(meta["labels"]) if meta.get("labels") else None
    model.feature_config = features
    model.extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    return model.eval()
