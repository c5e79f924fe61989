"""fastast-deploy: FastAST (AST + Token Merging + CMKD) from a PyTorch checkpoint to verified inference engines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastast-deploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .checkpoints import load_model, save_checkpoint  # noqa: E402
from .errors import FastASTError  # noqa: E402

__all__ = ["FastASTError", "__version__", "load_model", "save_checkpoint"]
