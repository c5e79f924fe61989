"""The JSON sidecar written beside every engine (``ENGINE.json``): what made it, from which model, for which
batch range and backend. Reading and checking it needs neither TensorRT nor a GPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from fastast_deploy.contract import BACKENDS, PACKAGE_VERSION, sidecar_path
from fastast_deploy.errors import FastASTError
from fastast_deploy.files import sha256_file
from fastast_deploy.pairs import read_pair_sidecar

from .base import BatchRange, EngineError, EngineMismatchError
from .onnx_model import OnnxModelInfo
from .schema import SIDECAR, check_fields

FORMAT_VERSION = 1
REQUIRED = ("format_version", "backend", "engine", "source", "batch", "inputs", "outputs", "precision", "export",
            "versions")
# what loaders read from the backend's own entry
BACKEND_REQUIRED = {"tensorrt": ("version", "gpu.name", "gpu.compute_capability"),
                    "onnxruntime": ("version", "provider")}


def tensor_specs(info: OnnxModelInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inputs and outputs as the exporter recorded them: shapes with BATCH where the batch is dynamic."""
    meta = info.metadata
    inputs = {name: {"shape": list(t["shape"]), "dtype": t["dtype"]} for name, t in meta["inputs"].items()}
    outputs = {name: {"shape": list(meta["outputs"][name]["shape"]), "dtype": meta["outputs"][name]["dtype"]}
               for name in info.output_names}  # graph order (the metadata JSON has sorted keys)
    return inputs, outputs


def engine_sidecar(*, backend: str, engine: Path, engine_sha256: str, source: OnnxModelInfo, batch: BatchRange,
                   precision: str, details: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
    """The sidecar of a built engine; ``details`` goes under the backend's own key."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; available: {list(BACKENDS)}")
    inputs, outputs = tensor_specs(source)
    return {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "engine": {"file": engine.name, "sha256": engine_sha256},
        "source": {"file": str(source.path), "sha256": source.sha256},
        "batch": batch.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "precision": precision,
        "export": source.metadata,
        "versions": {"fastast_deploy": PACKAGE_VERSION, "python": platform.python_version(), **versions},
        backend: details,
    }


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The engine sidecar of ``path``; None when ``path`` has no sidecar or only an export's (no backend)."""
    try:
        data = read_pair_sidecar(path)  # the last complete commit's sidecar (pairs.py)
    except FastASTError as err:
        raise EngineError(str(err)) from None  # the message names the file and what to do (pairs.py)
    if data is None or "backend" not in data:
        return None
    return data


def _has(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def check_sidecar(data: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Format checks: known format version and backend, required keys present. Returns ``data``."""
    side = sidecar_path(path)
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EngineError(f"sidecar {side} has format_version {version!r}; this fastast-deploy reads "
                          f"{FORMAT_VERSION}; upgrade fastast-deploy or rebuild the engine")
    if data["backend"] not in BACKENDS:
        raise EngineError(f"sidecar {side} names backend {data['backend']!r}; available: {list(BACKENDS)}")
    backend = data["backend"]
    missing = [k for k in (*REQUIRED, *(f"{backend}.{k}" for k in BACKEND_REQUIRED[backend])) if not _has(data, k)]
    if missing:
        raise EngineError(f"sidecar {side} lacks {missing}; rebuild the engine with `fastast-deploy build-engine`")
    check_fields(data, SIDECAR, f"sidecar {side}", "rebuild the engine with `fastast-deploy build-engine`")
    try:  # the one batch-range check: inspect, predict, verify and triton all read the range through here
        BatchRange.from_dict(data["batch"])
    except EngineError as err:
        raise EngineError(f"sidecar {side}: {err}; rebuild the engine with `fastast-deploy build-engine`") from None
    return data


def check_engine_file(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """The engine file is the one the sidecar describes (not truncated, replaced or renamed from another)."""
    path = Path(path)
    recorded = data["engine"].get("sha256")
    found = sha256_file(path)
    if recorded != found:
        raise EngineMismatchError(f"{path} does not match its sidecar (sha256 {str(recorded)[:12]}... recorded, "
                                  f"{found[:12]}... found): truncated or replaced; rebuild it")


def check_source(data: dict[str, Any], model: str | os.PathLike) -> None:
    """The engine was built from ``model`` (same sha256)."""
    recorded = data["source"].get("sha256")
    found = sha256_file(model)
    if recorded != found:
        raise EngineMismatchError(f"engine was built from an ONNX model with sha256 {str(recorded)[:12]}..., "
                                  f"{model} has {found[:12]}...; rebuild the engine or pass the model it came from")
