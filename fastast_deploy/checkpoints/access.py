"""Reading checkpoint files safely: safetensors headers and tensors, torch files with ``weights_only=True``
(tensors, never code), and the error helpers every checkpoint format shares."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fastast_deploy.errors import CheckpointError, ConfigError, error_summary
from fastast_deploy.files import read_json_object, sha256_file
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig

ACCEPTED_FORMATS = (
    "an original AST .pth state dict (keys module.v.*, module.mlp_head.*)",
    "a Hugging Face AST directory (config.json + model.safetensors or pytorch_model.bin)",
    "a fastast-deploy .safetensors file written by save_checkpoint",
)
_EXPECTED = "expected " + "; or ".join(ACCEPTED_FORMATS)
_MAX_HEADER_BYTES = 100 * 2**20  # the limit safetensors itself enforces
_EXAMPLES = 3  # keys quoted per kind of mismatch
_T = TypeVar("_T")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and converted to FastAST parameter names, before a model is built from it."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    features: FeatureConfig
    labels: tuple[str, ...] | None = None
    tome: TomeConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header (tensor table and "__metadata__") of a safetensors file, reading nothing else."""
    return _safetensors_layout(path)[0]


def _safetensors_layout(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the size in bytes the whole file must have (8 + header + the
    tensors' data, by the header's offsets), reading nothing past the header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{path} is truncated or not a safetensors file ({size} bytes); {_EXPECTED}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupt safetensors header; {_EXPECTED}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header; {_EXPECTED}")
    data = 0  # bytes of tensor data: the furthest end offset of any tensor
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if name != "__metadata__" and isinstance(entry, dict) else None
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
            data = max(data, offsets[1])
    return header, 8 + length + data


def _header_names(path: Path, key: str) -> bool:
    """Whether the (possibly cut or corrupt) header of a file that starts like a safetensors file names ``key``:
    what a damaged file was meant to be."""
    with path.open("rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:] != b"{":
            return False
        length = int.from_bytes(head[:8], "little")
        raw = head[8:] + f.read(max(0, min(length, _MAX_HEADER_BYTES) - 1))
    return b'"' + key.encode() + b'"' in raw


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} ({error_summary(err, with_type=True)}); expected a complete "
                              "safetensors file") from None


# How the files torch.save writes begin: a zip archive (torch >= 1.6), or the legacy pickle (protocol 2, then
# torch's magic number as a long), or a tar archive (torch < 0.4; "ustar" at byte 257).
_TORCH_HEADS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")
_FOREIGN_HEADS = ((b"RIFF", "an audio file (wav)"), (b"fLaC", "an audio file (flac)"), (b"OggS", "an audio file (ogg)"),
                  (b"ID3", "an audio file (mp3)"), (b"\x89PNG", "an image (png)"), (b"\x93NUMPY", "a numpy .npy array"))


def _not_torch(path: Path) -> str | None:
    """What ``path`` is when it cannot be a file torch.save wrote (told from its first bytes), else None: an empty
    file, audio, an ONNX model, a plain pickle, a text file. torch.load of such a file fails with a message about
    the pickle machinery ("Unsupported operand 8"), not about the file."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(_TORCH_HEADS) or head[257:262] == b"ustar":
        return None
    for magic, what in _FOREIGN_HEADS:
        if head.startswith(magic):
            return what
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"\x12" in head[:16]):
        return "an ONNX model (export reads the checkpoint it came from; build-engine and predict take the model)"
    if head[:1] == b"\x80":
        return f"a pickle (protocol {head[1]}) that torch.save did not write"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        text = head[: err.start].decode("utf-8") if err.start > 64 else None
    if text is not None and "\x00" not in text:
        first = " ".join(text.split())[:40]
        return f"a text file (it starts {first!r})"
    return f"not a file torch.save writes (it starts with bytes {head[:4].hex(' ')})"


def _torch_load(path: Path) -> dict[str, Tensor]:
    """A tensor state dict from a torch file, with weights_only=True; anything else is a CheckpointError."""
    what = _not_torch(path)
    if what is not None:
        raise CheckpointError(f"{path} is {what}, not a checkpoint; {_EXPECTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file fails in many ways; each means "not a checkpoint"
        text = str(err)
        unsafe = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: its pickle calls {unsafe[1]}, which could run code; "
                f"expected a plain state dict of tensors (re-save it with torch.save(model.state_dict()))"
            ) from None
        reason = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        if reason:
            reason = reason[1].strip()
        elif "Weights only load failed" in text:  # torch's text goes on to advise an unsafe load: never relay it
            reason = "it holds objects other than tensors, which only a load that can run code would rebuild"
        else:
            reason = error_summary(err, with_type=True)
        raise CheckpointError(f"cannot read {path} with torch.load ({reason}); {_EXPECTED}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; {_EXPECTED}")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _info(fmt: str, path: Path, files: Sequence[Path]) -> dict[str, Any]:
    return {"format": fmt, "path": str(path), "sha256": {str(p): sha256_file(p) for p in files}}


def _checked(path: Path, make: Callable[[], _T]) -> _T:
    """``make()``, with a ConfigError or a missing/mistyped field reported as this checkpoint's error."""
    try:
        return make()
    except (ConfigError, IndexError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid configuration ({error_summary(err, with_type=True)})") from None


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError)


def _count(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_EXAMPLES]) + (", ..." if len(items) > _EXAMPLES else "")
    plural = what if len(items) == 1 else (what + "es" if what.endswith("ch") else what + "s")
    return f"{len(items)} {plural} ({shown})"

