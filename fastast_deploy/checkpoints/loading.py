"""Any checkpoint behind one call: `load_any` opens a CNN checkpoint or run, or anything `load_model` reads;
`load_weights` copies a project checkpoint's weights into a model that is already built (a resumed training)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from fastast_deploy.checkpoints.access import _load_safetensors
from fastast_deploy.checkpoints.cnn import cnn_metadata, load_cnn
from fastast_deploy.checkpoints.native import load_model, load_state_dict_strict, read_checkpoint_metadata, resolve_run


def model_extra(model: nn.Module) -> dict[str, Any]:
    """What training recorded in a checkpoint (``task``, ``metrics``, ...) for a CNN or FastAST; {} if nothing."""
    extra = getattr(model, "extra", None)
    if extra is None:
        extra = (getattr(model, "source_info", None) or {}).get("extra")
    return extra if isinstance(extra, dict) else {}


def load_any(source: str | os.PathLike[str]) -> nn.Module:
    """A model in eval mode: a CNN checkpoint or run, or anything `load_model` reads (AST .pth, Hugging Face AST
    directory, FastAST checkpoint or run; with its own ToMe schedule)."""
    path = resolve_run(source)
    if path.is_file() and cnn_metadata(path) is not None:
        return load_cnn(path)
    return load_model(path).eval()


def load_weights(model: nn.Module, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy the weights of a FastAST or CNN checkpoint in this project's format (or run) into ``model``, with strict
    key and shape matching; returns what training recorded in it (its ``extra``, {} if nothing)."""
    path = resolve_run(source)
    meta = checkpoint_metadata(path)
    load_state_dict_strict(model, _load_safetensors(path), f"checkpoint {path}")
    extra = meta.get("extra")
    return extra if isinstance(extra, dict) else {}


def checkpoint_metadata(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a FastAST or CNN checkpoint in this project's format (or run), reading only its header;
    a one-line CheckpointError when it is neither, or damaged."""
    path = resolve_run(source)
    meta = cnn_metadata(path)
    return meta if meta is not None else read_checkpoint_metadata(path)
