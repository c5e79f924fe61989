"""The checkpoint stage: reading original AST ``.pth`` files and Hugging Face directories (``foreign``) through
safe, size-checked file access (``access``), and this project's own safetensors format (``native``)."""

from fastast_deploy.checkpoints.native import default_checkpoint, load_model, save_checkpoint

__all__ = ["default_checkpoint", "load_model", "save_checkpoint"]
