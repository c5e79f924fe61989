"""Any checkpoint behind one call: `load_any` opens a CNN checkpoint or run, or anything `load_model` reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from fastast_deploy.checkpoints.cnn import cnn_metadata, load_cnn
from fastast_deploy.checkpoints.native import load_model


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


def load_any(source: str | os.PathLike[str]) -> nn.Module:
    """A model in eval mode: a CNN checkpoint or run, or anything `load_model` reads (AST .pth, Hugging Face AST
    directory, FastAST checkpoint or run; with its own ToMe schedule)."""
    path = resolve_run(source)
    if path.is_file() and cnn_metadata(path) is not None:
        return load_cnn(path)
    return load_model(path).eval()
