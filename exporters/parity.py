"""Export-time parity: the ONNX graph on ONNX Runtime CPU against the PyTorch model it came from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastast_deploy.errors import FastASTError
from fastast_deploy.model import FastAST

# fp32: |onnx - torch| <= ATOL + RTOL * max|torch|. fp16 is compared with the fp32 model: cosine and top-1.
ATOL, RTOL = 1e-4, 1e-4
FP16_MIN_COSINE = 0.999


def fbank_like(num: int, frames: int, mel: int, seed: int = 0) -> np.ndarray:
    """Seeded (num, frames, mel) float32 arrays with the scale of normalised fbank (mean 0, std 0.5), smoothed
    along time and frequency so neighbouring patches look alike, as in real spectrograms."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, frames + 2, mel + 2)).astype(np.float32)
    x = (x[:, :-2] + x[:, 1:-1] + x[:, 2:]) / 3  # smooth along time
    x = (x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]) / 3  # and frequency
    return (0.5 * x / x.std()).astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1) + 1e-30)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    cos = cosine_rows(reference, candidate)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "top1_agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
    }


def merge_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Fraction of (clip, block) merge decisions that are identical: same sources into the same destinations."""
    same = total = 0
    for ref, got in zip(reference, candidate, strict=True):
        same += int(np.all(ref == got, axis=-1).sum())
        total += ref.shape[0]
    return same / total if total else 1.0


def torch_outputs(model: FastAST, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and merge positions (src, dst per merging block) of the float32 PyTorch model."""
    model = model.float().eval()
    with torch.no_grad():
        logits, merges = model.forward_with_merges(torch.from_numpy(x))
    positions = []
    for m in merges:
        positions += [(2 * m.src_idx).numpy(), (2 * m.dst_idx + 1).numpy()]
    return logits.numpy(), positions


def check_parity(model: FastAST, onnx_bytes: bytes, options: Any, num: int = 4, seed: int = 0) -> dict[str, Any]:
    """Run both on the same fbank-like inputs; raise FastASTError beyond tolerance, else return the figures."""
    import onnxruntime as ort

    cfg = model.config
    batch = options.batch or num
    x = fbank_like(batch, cfg.input_frames, cfg.num_mel_bins, seed)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {"fbank": x})
    want, want_merges = torch_outputs(model, x)
    result = compare_logits(want, got[0])
    result["inputs"] = int(batch)
    if options.debug_merges:
        result["merge_agreement"] = merge_agreement(want_merges, list(got[1:]))
    if options.precision == "fp32":
        limit = ATOL + RTOL * float(np.abs(want).max())
        result["tolerance"] = limit
        if result["max_abs_diff"] > limit:
            raise FastASTError(f"ONNX Runtime disagrees with PyTorch: max |logit diff| {result['max_abs_diff']:.3g} "
                               f"> {limit:.3g} (fp32); use --no-check to write the model anyway")
    elif result["cosine_mean"] < FP16_MIN_COSINE:
        raise FastASTError(f"fp16 graph drifts from the fp32 model: mean cosine {result['cosine_mean']:.5f} < "
                           f"{FP16_MIN_COSINE}; use --no-check to write the model anyway")
    return result
