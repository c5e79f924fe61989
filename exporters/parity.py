"""Export-time parity: the ONNX graph on ONNX Runtime CPU against the PyTorch model it came from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastast_deploy.contract import INPUT_NAME, merge_positions, tolerance
from fastast_deploy.errors import FastASTError
from fastast_deploy.metrics import dummy_inputs, merge_agreement, parity_checks, parity_failure
from fastast_deploy.model.fastast import FastAST

NO_CHECK = "use --no-check to write the model anyway"


def require_parity(reference: np.ndarray, candidate: np.ndarray, precision: str, what: str,
                   hint: str = NO_CHECK) -> dict[str, Any]:
    """The export tolerance of ``precision`` (`contract.TOLERANCES["export"]`) applied to candidate logits
    (N, labels) against the reference through `metrics.parity_checks`; FastASTError "``what``: the failed
    condition; ``hint``" when one fails (NaN or inf on either side always does). Returns the figures."""
    limits = tolerance("export", precision)
    figures, checks = parity_checks(reference, candidate, limits)
    figures["tolerance"] = limits.to_dict()
    failure = parity_failure(figures, checks)
    if failure is not None:
        raise FastASTError(f"{what} ({precision}): {failure}; {hint}")
    return figures


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
    x = dummy_inputs(INPUT_NAME, (cfg.input_frames, cfg.num_mel_bins), batch, seed)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x})
    # PyTorch in chunks (a static batch is run whole only where the graph requires it: ONNX Runtime)
    chunks = [torch_outputs(model, x[i : i + num]) for i in range(0, batch, num)]
    want = np.concatenate([logits for logits, _ in chunks])
    want_merges = [np.concatenate([m[k] for _, m in chunks]) for k in range(len(chunks[0][1]))]
    result = require_parity(want, got[0], options.precision, "ONNX Runtime disagrees with PyTorch on fbank-like inputs")
    result["inputs"] = int(batch)
    if options.debug_merges:
        per_block = merge_agreement(want_merges, list(got[1:]))
        result["merge_agreement"] = min(per_block) if per_block else 1.0
    return result


def check_parity_int8(model: FastAST, proto: Any, fbank: np.ndarray, source: str,
                      batch: int | None) -> dict[str, Any]:
    """The int8 graph (with its merge-position outputs) on ONNX Runtime CPU against the fp32 PyTorch model on
    clips (N, T, F): top-1 agreement (the pass condition, contract.TOLERANCES["export"]["int8"]), cosine, and per
    merging block the share of clips whose merge decisions are identical."""
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
    result = require_parity(want, got[0], "int8", f"int8 graph disagrees with the fp32 model on {source}",
                            "calibrate on more or more typical clips (--calib, --calib-clips), or " + NO_CHECK)
    result.update(inputs=int(len(fbank)), source=source, min_top1=tolerance("export", "int8").min_top1,
                  reference="fp32 PyTorch model")
    blocks = [i for i, r in enumerate(model.schedule) if r > 0]
    per_block = merge_agreement(want_merges, got[1:]) if blocks else []
    result["merge_agreement_per_block"] = dict(zip((f"block{i}" for i in blocks), per_block, strict=True))
    result["merge_agreement"] = min(per_block) if per_block else 1.0
    pairs = merge_pair_agreement(want_merges, got[1:]) if blocks else []
    result["merge_pair_agreement_per_block"] = dict(zip((f"block{i}" for i in blocks), pairs, strict=True))
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
