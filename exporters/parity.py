"""Export-time parity: the ONNX graph on ONNX Runtime CPU against the PyTorch model it came from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastast_deploy.contract import INPUT_NAME, merge_positions
from fastast_deploy.errors import FastASTError
from fastast_deploy.evaluation.metrics import compare_logits, fbank_like, merge_agreement
from fastast_deploy.model.fastast import FastAST

# fp32: |onnx - torch| <= ATOL + RTOL * max|torch|. fp16 is compared with the fp32 model: cosine and top-1.
ATOL, RTOL = 1e-4, 1e-4
FP16_MIN_COSINE = 0.999


def torch_outputs(model: FastAST, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and merge positions (src, dst per merging block) of the float32 PyTorch model."""
    model = model.float().eval()
    with torch.no_grad():
        logits, merges = model.forward_with_merges(torch.from_numpy(x))
    positions = []
    for m in merges:
        positions += [p.numpy() for p in merge_positions(m.src_idx, m.dst_idx)]
    return logits.numpy(), positions


def check_parity(model: FastAST, onnx_bytes: bytes, options: Any, num: int = 4, seed: int = 0) -> dict[str, Any]:
    """Run both on the same fbank-like inputs; raise FastASTError beyond tolerance, else return the figures."""
    import onnxruntime as ort

    cfg = model.config
    batch = options.batch or num
    x = fbank_like(batch, cfg.input_frames, cfg.num_mel_bins, seed)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x})
    want, want_merges = torch_outputs(model, x)
    result = compare_logits(want, got[0])
    result["inputs"] = int(batch)
    if options.debug_merges:
        per_block = merge_agreement(want_merges, list(got[1:]))
        result["merge_agreement"] = min(per_block) if per_block else 1.0
    if result["non_finite_clips"] or not np.isfinite(want).all():
        raise FastASTError(f"NaN or inf logits on {result['non_finite_clips']} of {batch} fbank-like inputs "
                           "(PyTorch or ONNX Runtime): the graph cannot be trusted; use --no-check to write it anyway")
    if options.precision == "fp32":
        limit = ATOL + RTOL * float(np.abs(want).max())
        result["tolerance"] = limit
        if not result["max_abs_diff"] <= limit:  # written so that NaN fails too
            raise FastASTError(f"ONNX Runtime disagrees with PyTorch: max |logit diff| {result['max_abs_diff']:.3g} "
                               f"> {limit:.3g} (fp32); use --no-check to write the model anyway")
    elif not result["cosine_mean"] >= FP16_MIN_COSINE:
        raise FastASTError(f"fp16 graph drifts from the fp32 model: mean cosine {result['cosine_mean']:.5f} < "
                           f"{FP16_MIN_COSINE}; use --no-check to write the model anyway")
    return result
