"""One build path: an exported model -> a TensorRT plan or an offline-optimised ONNX Runtime model.
``build-engine``, ``quickstart``, ``bench`` and verify's r = 0 baseline all build through ``build_engine``; the
baseline takes its options from the engine it is compared with (``options_like``), so both are built alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastast_deploy.contract import BACKENDS

from .base import BuildResult, EngineError
from .ort_engine import OrtBuildOptions, build_onnxruntime_engine
from .trt_engine import TrtBuildOptions, build_tensorrt_engine

BuildOptions = TrtBuildOptions | OrtBuildOptions

# The file name ending each backend's engines get when a command names them itself.
ENGINE_SUFFIX = {"tensorrt": ".plan", "onnxruntime": ".ort.onnx"}


def build_engine(model: str | os.PathLike, output: str | os.PathLike, backend: str,
                 options: BuildOptions | None = None) -> BuildResult:
    """Build ``model`` (an exported .onnx) for ``backend`` into ``output`` plus its sidecar; ``options`` must be
    that backend's options (None: its defaults). Nothing is written when the build fails."""
    if backend == "tensorrt":
        options = TrtBuildOptions() if options is None else options
        if not isinstance(options, TrtBuildOptions):
            raise EngineError(f"--backend tensorrt takes TensorRT build options, got {type(options).__name__}")
        return build_tensorrt_engine(model, output, options)
    if backend == "onnxruntime":
        options = OrtBuildOptions() if options is None else options
        if not isinstance(options, OrtBuildOptions):
            raise EngineError(f"--backend onnxruntime takes ONNX Runtime build options, got {type(options).__name__}")
        return build_onnxruntime_engine(model, output, options)
    raise EngineError(f"unknown backend {backend!r}; available: {list(BACKENDS)}")


def options_like(metadata: dict[str, Any]) -> BuildOptions:
    """The build options an engine was made with, read back from its sidecar metadata: what a second engine
    needs to be built the same way (same backend, precision, batch range, backend settings)."""
    batch = metadata["batch"]
    batches = {"min_batch": batch["min"], "opt_batch": batch["opt"], "max_batch": batch["max"]}
    if metadata["backend"] == "tensorrt":
        trt = metadata["tensorrt"]
        return TrtBuildOptions(precision=metadata["precision"], tf32=trt.get("tf32", False),
                               workspace_mib=trt.get("workspace_mib"),
                               builder_optimization_level=trt.get("builder_optimization_level", 3), **batches)
    ort = metadata["onnxruntime"]
    return OrtBuildOptions(provider=ort["provider"], optimization=ort["optimization_level"],
                           threads=ort.get("intra_op_threads", 0), **batches)


def check_ready(backend: str, *, data: str | os.PathLike | None = None,
                labels: str | os.PathLike | None = None) -> None:
    """What a command that exports and builds first can check at once: the backend is there (TensorRT and a
    GPU), and the data and label files it will read later exist."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; available: {list(BACKENDS)}")
    if backend == "tensorrt":
        from .gpu import query_gpu
        from .trt_policy import import_tensorrt

        import_tensorrt()
        query_gpu()
    for option, path in (("--data", data), ("--labels", labels)):
        if path is not None and not Path(path).exists():
            raise EngineError(f"{option} {path} does not exist")


def engine_path(folder: Path, stem: str, backend: str) -> Path:
    """``folder/stem`` with the backend's engine suffix (``model.plan``, ``model.ort.onnx``)."""
    return folder / f"{stem}{ENGINE_SUFFIX[backend]}"
