"""fastast-deploy: FastAST (AST + Token Merging + CMKD) from a PyTorch checkpoint to verified inference engines.

Importing the package loads no torch: ``fastast_deploy.engines`` runs on numpy + onnxruntime / tensorrt alone.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastast_deploy.errors import FastASTError

try:
    __version__ = version("fastast-deploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["FastASTError", "__version__", "load_model", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "save_checkpoint"):
        from fastast_deploy import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'fastast_deploy' has no attribute {name!r}")
