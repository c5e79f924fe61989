"""Markers gpu / tensorrt skip themselves, with a reason, where the hardware or package is missing."""

from __future__ import annotations

import importlib.util

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = None if _has_cuda() else pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    skip_trt = (
        None
        if importlib.util.find_spec("tensorrt") is not None
        else pytest.mark.skip(reason='needs TensorRT: pip install "fastast-deploy[tensorrt]"')
    )
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt and "tensorrt" in item.keywords:
            item.add_marker(skip_trt)
