"""Engines: an exported FastAST model built into a TensorRT plan or an ONNX Runtime engine, behind one
``Engine`` interface. numpy + onnx / onnxruntime at import; tensorrt and polygraphy only inside the functions
that build or run plans; never torch (a deployment box runs engines without it)."""

from .base import (
    BATCH,
    BackendUnavailableError,
    BatchRange,
    Engine,
    EngineError,
    EngineMismatchError,
)
from .loading import load_engine

__all__ = [
    "BATCH",
    "BackendUnavailableError",
    "BatchRange",
    "Engine",
    "EngineError",
    "EngineMismatchError",
    "load_engine",
]
