"""The one reader and writer of checkpoint metadata: a JSON object under one key of a safetensors header, beside
the tensors. This project's FastAST checkpoints (key ``contract.METADATA_KEY``) and its CNN checkpoints both go
through it, so that a damaged file of either kind is reported as what it is, and why."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from fastast_deploy.checkpoints.access import _header_names, _safetensors_layout
from fastast_deploy.errors import CheckpointError, ConfigError
from fastast_deploy.files import atomic_path

CNN_METADATA_KEY = "fastast_deploy_cnn"  # the header key of CNN checkpoints (FastAST ones: contract.METADATA_KEY)
_FIX = "save it again, or use another copy (a run keeps RUN/best and RUN/last)"


def write_checkpoint_file(path: str | os.PathLike[str], state: Mapping[str, Tensor], key: str,
                          meta: dict[str, Any]) -> Path:
    """``state`` as one safetensors file with ``meta`` as JSON under ``key`` in its header; atomic (temp file +
    rename). ConfigError when ``meta`` (its ``extra``, in practice) is not JSON-serialisable."""
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint extra must be JSON-serialisable: {err}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return write_safetensors(path, tensors, {"format": "pt", key: text})


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """``tensors`` as one safetensors file, atomic (temp file + rename), with the mode every other output has
    (safetensors itself creates files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~umask)
    return Path(path)


def read_metadata(path: str | os.PathLike[str], key: str, what: str, version: int) -> dict[str, Any] | None:
    """The JSON object under ``key`` in the header of the safetensors file ``path`` (a ``what``, of format
    ``version``), reading only the header; None when ``path`` is not a safetensors file that names ``key`` (another
    format: the caller says which it expected). A file that names ``key`` but is damaged (header cut or corrupt,
    metadata not a JSON object, tensors cut short) or of another format version is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    damaged = f"{path} is a damaged {what}"
    try:
        header, needed = _safetensors_layout(path)
    except CheckpointError:
        if _header_names(path, key):
            raise CheckpointError(f"{damaged}: its safetensors header is cut or corrupt ({size} bytes); "
                                  f"{_FIX}") from None
        return None
    raw = (header.get("__metadata__") or {}).get(key)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{damaged}: its metadata is not valid JSON ({err}); {_FIX}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{damaged}: its metadata is a JSON {type(meta).__name__}, expected an object; {_FIX}")
    if meta.get("format_version") != version:
        raise CheckpointError(f"{path} is a {what} of format version {meta.get('format_version')!r}; this version "
                              f"of fastast-deploy reads {version}")
    if size < needed:
        raise CheckpointError(f"{damaged}: its tensors are cut short ({size} of {needed} bytes); {_FIX}")
    return meta
