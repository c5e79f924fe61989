"""Markers gpu / tensorrt skip themselves, with a reason, where the hardware or package is missing."""

from __future__ import annotations

import importlib.util

import pytest

HF_LABELS = ("dog", "rain", "sea waves", "crackling fire", "crickets", "chirping birds", "water drops")


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


def _hf_model(**overrides: object) -> torch.nn.Module:  # noqa: F821 (torch is imported inside)
    """A tiny random HF AST; every parameter random (HF itself zero-initialises pos embeddings and dist token).

    Tests that call it skip where transformers is not installed; the others still run.
    """
    import torch

    transformers = pytest.importorskip("transformers")
    kwargs = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_length": 64,
        "num_mel_bins": 32,
        "frequency_stride": 10,
        "time_stride": 16,
        "id2label": dict(enumerate(HF_LABELS)),
        "label2id": {n: i for i, n in enumerate(HF_LABELS)},
        "attn_implementation": "eager",
        **overrides,
    }
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(transformers.ASTConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def make_hf_model():
    """Factory of tiny random Hugging Face AST models (skips where transformers is missing)."""
    return _hf_model


def _assert_same_merges(got: list, want: list) -> None:
    """Merge outputs (src, dst per merging block, each (batch, r)) make the same merges: per clip the same set of
    (source, destination) pairs. The order of sources whose scores agree to the last bits is not part of the merge
    (two kernels may rank such a near-tie either way); the pairs are."""
    assert len(got) == len(want) and len(want) % 2 == 0
    for i in range(0, len(want), 2):
        for gs, gd, ws, wd in zip(got[i], got[i + 1], want[i], want[i + 1], strict=True):
            pairs = sorted(zip(gs.tolist(), gd.tolist(), strict=True))
            assert pairs == sorted(zip(ws.tolist(), wd.tolist(), strict=True)), f"merge outputs {i}, {i + 1}"


@pytest.fixture
def assert_same_merges():
    """`_assert_same_merges`: merge outputs (src, dst, ...) that make the same merges per clip."""
    return _assert_same_merges


@pytest.fixture
def spoil_onnx_runtime(monkeypatch: pytest.MonkeyPatch):
    """``spoil(value, row, col)``: every ONNX Runtime session run from then on returns its first output with
    ``[row, col]`` replaced by ``value`` (NaN or inf), as a broken kernel would."""
    import onnxruntime as ort

    real_run = ort.InferenceSession.run

    def spoil(value: float, row: int, col: int) -> None:
        def spoiled_run(self: ort.InferenceSession, *args: object, **kwargs: object) -> list:
            outputs = real_run(self, *args, **kwargs)
            outputs[0][row, col] = value
            return outputs

        monkeypatch.setattr(ort.InferenceSession, "run", spoiled_run)

    return spoil
