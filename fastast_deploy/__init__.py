"""fastast-deploy: FastAST (AST + Token Merging + CMKD) from a PyTorch checkpoint to verified inference engines.

Importing the package loads no torch: ``fastast_deploy.engines`` runs on numpy + onnxruntime / tensorrt alone.
"""

from __future__ import annotations

from typing import Any

from fastast_deploy.contract import PACKAGE_VERSION as __version__
from fastast_deploy.errors import FastASTError

__all__ = ["FastASTError", "__version__", "load_model", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "save_checkpoint"):
        from fastast_deploy import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'fastast_deploy' has no attribute {name!r}")
