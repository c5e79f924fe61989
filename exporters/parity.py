"""Export-time parity: the ONNX graph on ONNX Runtime CPU against the PyTorch model it came from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastast_deploy.contract import INPUT_NAME, merge_positions
from fastast_deploy.errors import FastASTError
from fastast_deploy.metrics import compare_logits, fbank_like, merge_agreement
from fastast_deploy.model.fastast import FastAST

# fp32: |onnx - torch| <= ATOL + RTOL * max|torch|. fp16 is compared with the fp32 model: cosine and top-1.
ATOL, RTOL = 1e-4, 1e-4
FP16_MIN_COSINE = 0.999
# int8 is compared with the fp32 model on real clips by its labels: an export below this top-1 agreement fails.
INT8_MIN_TOP1 = 0.9


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


def check_parity_int8(model: FastAST, proto: Any, fbank: np.ndarray, source: str,
                      batch: int | None) -> dict[str, Any]:
    """The int8 graph (with its merge-position outputs) on ONNX Runtime CPU against the fp32 PyTorch model on
    clips (N, T, F): top-1 agreement (the pass condition, >= INT8_MIN_TOP1), cosine, and per merging block the
    share of clips whose merge decisions are identical."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    size = batch or 16
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(fbank), size):
        chunk = fbank[start : start + size]
        real = len(chunk)
        if batch and real < batch:  # a static batch: pad with repeats, keep the real rows
            chunk = np.resize(chunk, (batch, *chunk.shape[1:]))
        parts.append([out[:real] for out in session.run(None, {INPUT_NAME: chunk})])
    got = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    reference = [torch_outputs(model, fbank[i : i + 16]) for i in range(0, len(fbank), 16)]
    want = np.concatenate([logits for logits, _ in reference])
    want_merges = [np.concatenate([m[k] for _, m in reference]) for k in range(len(reference[0][1]))]
    result = compare_logits(want, got[0])
    result.update(inputs=int(len(fbank)), source=source, min_top1=INT8_MIN_TOP1, reference="fp32 PyTorch model")
    blocks = [i for i, r in enumerate(model.schedule) if r > 0]
    per_block = merge_agreement(want_merges, got[1:]) if blocks else []
    result["merge_agreement_per_block"] = dict(zip((f"block{i}" for i in blocks), per_block, strict=True))
    result["merge_agreement"] = min(per_block) if per_block else 1.0
    pairs = merge_pair_agreement(want_merges, got[1:]) if blocks else []
    result["merge_pair_agreement_per_block"] = dict(zip((f"block{i}" for i in blocks), pairs, strict=True))
    if result["non_finite_clips"]:
        raise FastASTError(f"int8 graph gives NaN or inf logits on {result['non_finite_clips']} of {len(fbank)} clips")
    if result["top1_agreement"] < INT8_MIN_TOP1:
        raise FastASTError(f"int8 graph disagrees with the fp32 model: top-1 agreement {result['top1_agreement']:.3f} "
                           f"< {INT8_MIN_TOP1} on {source}; calibrate on more or more typical clips (--calib, "
                           "--calib-clips), or use --no-check to write the model anyway")
    return result


def merge_pair_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """Per merging block, the mean share of the reference's (source, destination) pairs that the candidate also
    merges: softer than whole-clip identity, which one flipped near-tie among r merges already breaks."""
    shares = []
    for i in range(0, len(reference), 2):
        per_clip = []
        for rs, rd, cs, cd in zip(reference[i], reference[i + 1], candidate[i], candidate[i + 1], strict=True):
            want, got = set(zip(rs.tolist(), rd.tolist(), strict=True)), set(zip(cs.tolist(), cd.tolist(), strict=True))
            per_clip.append(len(want & got) / max(len(want), 1))
        shares.append(float(np.mean(per_clip)))
    return shares
