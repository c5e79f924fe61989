"""The project's Kaldi fbank as a torch module that exports to TensorRT- and ONNX Runtime-native ops, prepended to
the model for ``export --input waveform``: ``waveform`` (batch, samples) float32 mono at the model's sample rate
in, the normalised (batch, frames, mel bins) fbank of `fastast_deploy.audio.features` out.

Why no STFT or DFT node: TensorRT's ONNX parser takes ``STFT`` only from 10.5 (FP32, initializer window and step)
and ``DFT`` / ``MelWeightMatrix`` never (onnx-tensorrt docs/operators.md). The DFT is therefore a MatMul with a
constant matrix, which every TensorRT version and ONNX Runtime run natively. Per-frame DC removal, pre-emphasis
and the window are linear maps of a frame too, so they are folded (in float64, once) into that one matrix:
``frame (400,) @ M (400, 2 * 257)`` gives the real and imaginary parts, and the power spectrum summed into the
mel bins is ``(y * y) @ [filters; filters]``. Framing is a Gather of constant sample indices (an exact copy,
static, no Conv whose algorithm TensorRT may pick with other rounding). Everything stays float32: the export
keeps this part out of fp16 (see ``FEATURE_FUNCTION``).

Why the DFT is split in two: the project's fbank is computed in float64. A plain float32 product (or a float32
FFT) loses bins far below a frame's loudest, where a tone's or a chirp's leakage lies, because the 400 terms of
such a bin are as large as the frame and cancel. So each frame is split
on a power-of-two grid, ``x = x_hi + x_lo`` (x_hi: FRAME_BITS bits below the frame's peak, x_lo exact), and so
is the matrix, ``M = M_hi + M_lo``; ``x_hi @ M_hi`` has every product and partial sum on one grid within 24
bits, so it is exact in float32 (and in TF32: its operands fit 10 bits), and the rest, ``x_hi @ M_lo + x_lo @ M``,
is some 2^-7 of the frame, so its rounding is too: three MatMuls instead of one, for a log-mel that follows the
float64 one at every bin (figures: docs/benchmarks.md).

Clip ends: the graph's ``samples`` is fixed by the model's frame count, ``win + shift * (frames - 1)``, the
shortest waveform giving exactly ``frames`` Kaldi frames (snip_edges). A shorter clip is padded with NaN: samples
that are NaN are no audio. Frames that reach a NaN sample are the ones `features.pad_or_cut` pads with zeros,
and they come out as zeros before normalisation, as the project's features do; whole-clip mean removal counts
the real samples only. A longer clip is cut (the frames past ``frames`` are cut by `pad_or_cut` too). Per-frame
DC removal makes the whole-clip mean removal a no-op up to rounding, but it keeps large DC offsets out of the
float32 DFT.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastast_deploy.audio.features import LOG_FLOOR, PREEMPHASIS, _fbank_weights
from fastast_deploy.audio.frames import frame_sizes, waveform_samples
from fastast_deploy.contract import INPUT_NAME, WAVEFORM_NAME
from fastast_deploy.metrics import dummy_inputs, merge_agreement
from fastast_deploy.model.config import FeatureConfig

__all__ = ["WaveformFbank", "check_waveform_parity", "graph_features", "input_shape", "waveform_samples"]

# The function whose ops the exporter's stack traces name: onnx_export tags them ``fastast_deploy.part =
# features`` so that precision transforms leave them in float32.
FEATURE_FUNCTION = "kaldi_fbank_graph"


def frame_matrix(sample_rate: int) -> np.ndarray:
    """(win, 2 * (n_fft // 2 + 1)) float64: frame -> [Re | Im] of the DFT of the DC-removed, pre-emphasised,
    windowed frame zero-padded to n_fft, exactly the chain `features.fbank` applies (Kaldi's x[-1] := x[0])."""
    win, _, n_fft = frame_sizes(sample_rate)
    window, _ = _fbank_weights(sample_rate, n_fft, 1, win)
    dc = np.eye(win) - np.full((win, win), 1.0 / win)  # frame - frame.mean()
    pre = np.eye(win)  # y[n] = x[n] - 0.97 x[n - 1], with x[-1] = x[0]
    pre[np.arange(1, win), np.arange(win - 1)] = -PREEMPHASIS
    pre[0, 0] -= PREEMPHASIS
    chain = np.diag(window.numpy()) @ pre @ dc  # (win, win): applied to a column frame
    bins = n_fft // 2 + 1
    angle = 2 * math.pi * np.outer(np.arange(win), np.arange(bins)) / n_fft  # (win, bins)
    dft = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1)  # (win, 2 * bins): row frame @ dft
    return chain.T @ dft  # row frame x (1, win): x @ chain.T @ dft


# Bits of a frame's high part (below its power-of-two peak) and of the matrix's high part (below 2^0). Exact when
# win * max|M| * 2^(FRAME_BITS + MATRIX_BITS) <= 2^24: max|M| < 2 (window <= 1, pre-emphasis 1 + 0.97), win 400
# at 16 kHz, so up to 14 bits in all; 7 + 6 leaves a factor of two for a peak one rounding above its power of two.
FRAME_BITS = 7
MATRIX_BITS = 6
TINY_PEAK = 2.0**-100  # a silent frame's scale (keeps log2 finite; any power of two is exact)


def split_matrix(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (win, n) -> float32 (hi, lo, full): hi on the 2^-MATRIX_BITS grid, lo = matrix - hi."""
    hi = np.round(matrix * 2.0**MATRIX_BITS) / 2.0**MATRIX_BITS
    if np.abs(hi).max() * matrix.shape[0] * 2.0 ** (FRAME_BITS + 1 + MATRIX_BITS) > 2.0**24:
        raise ValueError("the frame matrix is too large for an exact split product")  # a new window or rate
    return hi.astype(np.float32), (matrix - hi).astype(np.float32), matrix.astype(np.float32)


def kaldi_fbank_graph(waveform: Tensor, frame_index: Tensor, last_index: Tensor, transform_hi: Tensor,
                      transform_lo: Tensor, transform: Tensor, mel: Tensor, mean: float, std: float) -> Tensor:
    """Normalised fbank (B, T, F) of waveforms (B, S), NaN past each clip's end; see the module docstring."""
    valid = ~torch.isnan(waveform)  # (B, S)
    x = torch.where(valid, waveform, torch.zeros_like(waveform))
    count = valid.to(x.dtype).sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1), float: TensorRT clips floats only
    x = torch.where(valid, x - x.sum(dim=1, keepdim=True) / count, torch.zeros_like(x))  # whole-clip mean removed
    frames = x.index_select(1, frame_index.reshape(-1)).reshape(x.shape[0], *frame_index.shape)  # (B, T, win)
    peak = frames.abs().amax(dim=-1, keepdim=True).clamp(min=TINY_PEAK)  # (B, T, 1)
    step = torch.pow(2.0, torch.ceil(torch.log2(peak)) - FRAME_BITS)  # a power of two: x / step is exact
    high = torch.round(frames / step) * step  # (B, T, win) on the frame's grid
    low = frames - high  # exact
    spectrum = high @ transform_hi + (high @ transform_lo + low @ transform)  # (B, T, 2 * bins): [Re | Im]
    energies = (spectrum * spectrum) @ mel  # (B, T, F): |X|^2 summed into the mel bins
    logmel = energies.clamp(min=LOG_FLOOR).log()
    real = valid.index_select(1, last_index).unsqueeze(-1)  # (B, T, 1): the frame lies inside the clip
    logmel = torch.where(real, logmel, torch.zeros_like(logmel))  # frames past the end: pad_or_cut's zeros
    return (logmel - mean) / (2 * std)


class WaveformFbank(nn.Module):
    """``waveform`` (B, S) float32, S = `waveform_samples(config)`, NaN past a clip's end -> normalised fbank
    (B, config.frames, config.num_mel_bins) float32, as `features.waveform_to_input` computes it."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        win, shift, n_fft = frame_sizes(config.sample_rate)
        _, filters = _fbank_weights(config.sample_rate, n_fft, config.num_mel_bins, win)  # (bins, F)
        starts = torch.arange(config.frames) * shift
        self.samples = waveform_samples(config)
        self.register_buffer("frame_index", starts[:, None] + torch.arange(win)[None, :], persistent=False)
        self.register_buffer("last_index", starts + win - 1, persistent=False)
        parts = split_matrix(frame_matrix(config.sample_rate))  # (win, 2 * bins) each
        for name, part in zip(("transform_hi", "transform_lo", "transform"), parts, strict=True):
            self.register_buffer(name, torch.from_numpy(part), persistent=False)
        self.register_buffer("mel", torch.cat([filters, filters]).float(), persistent=False)  # (2 * bins, F)

    def forward(self, waveform: Tensor) -> Tensor:
        waveform = waveform.float()
        return kaldi_fbank_graph(waveform, self.frame_index, self.last_index, self.transform_hi,
                                 self.transform_lo, self.transform, self.mel, self.config.mean, self.config.std)



def graph_features(model: nn.Module) -> FeatureConfig:
    """The feature settings a waveform-in graph of ``model`` computes: the model's own, else AudioSet statistics,
    with the model's frame count and mel bins."""
    import dataclasses

    cfg = model.config
    features = getattr(model, "feature_config", None) or FeatureConfig()
    return dataclasses.replace(features, frames=cfg.input_frames, num_mel_bins=cfg.num_mel_bins)


def waveform_features(model: nn.Module) -> WaveformFbank:
    return WaveformFbank(graph_features(model))


def input_shape(model: nn.Module, name: str) -> tuple[int, ...]:
    """The graph input's shape without the batch: (T, F) for ``fbank``, (samples,) for ``waveform``."""

    if name == WAVEFORM_NAME:
        return (waveform_samples(graph_features(model)),)
    return (model.config.input_frames, model.config.num_mel_bins)


def reference_fbank(waveforms: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The project's own normalised fbank (N, T, F) of graph inputs (N, S): each clip up to its first NaN, through
    `features.waveform_to_input` (whole-clip mean removal, Kaldi fbank, pad or cut, normalisation)."""
    from fastast_deploy.audio.features import waveform_to_input

    out = []
    for row in np.asarray(waveforms, dtype=np.float32):
        nan = np.flatnonzero(np.isnan(row))
        clip = row[: nan[0]] if len(nan) else row
        out.append(waveform_to_input(torch.from_numpy(np.ascontiguousarray(clip)), config.sample_rate, config))
    return torch.stack(out).numpy()


def check_waveform_parity(model: nn.Module, onnx_bytes: bytes, options: object, num: int = 4,
                          seed: int = 0) -> dict[str, object]:
    """A waveform-in graph on ONNX Runtime CPU against the PyTorch model fed the project's fbank of the same
    waveforms (tones, chirps and noise, some clips shorter than the input), under the export tolerance of its
    precision (`parity.require_parity`: NaN or inf logits fail); FastASTError beyond it."""
    import onnxruntime as ort

    from .parity import require_parity, torch_outputs

    config = graph_features(model)
    batch = getattr(options, "batch", None) or num
    waves = dummy_inputs(WAVEFORM_NAME, (waveform_samples(config),), batch, seed, config.sample_rate)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {WAVEFORM_NAME: waves})
    want, want_merges = torch_outputs(model, reference_fbank(waves, config))
    result = require_parity(want, got[0], getattr(options, "precision", "fp32"),
                            "the waveform-in graph on ONNX Runtime disagrees with PyTorch on the project's fbank")
    result["inputs"] = int(batch)
    if getattr(options, "debug_merges", False):
        per_block = merge_agreement(want_merges, list(got[1:]))
        result["merge_agreement"] = min(per_block) if per_block else 1.0
    return result


def join_features(front: Any, proto: Any) -> Any:
    """``proto`` (an fbank-in graph, input ``fbank``) behind ``front`` (this module's graph: ``waveform`` in,
    ``fbank`` out), in float32: the waveform-in int8 export quantises the fbank-in graph on fbank clips, then
    takes the features, which no quantiser touches. The feature nodes carry their stack traces, which
    `onnx_export.tag_nodes` turns into ``fastast_deploy.part = features``. onnx.compose joins the graphs (the
    feature names get a prefix)."""
    import onnx
    from onnx import compose


    front = compose.add_prefix(front, "features/", rename_inputs=False)
    del front.metadata_props[:]
    if front.ir_version != proto.ir_version:
        front.ir_version = proto.ir_version  # one exporter, one opset: the IR version only labels the file
    joined = compose.merge_models(front, proto, io_map=[(f"features/{INPUT_NAME}", INPUT_NAME)],
                                  producer_name=proto.producer_name, producer_version=proto.producer_version)
    joined.graph.name = proto.graph.name
    onnx.checker.check_model(joined)
    return joined


def check_prepended(int8_fbank: Any, joined: Any, model: nn.Module, batch: int | None,
                    num: int = 4, seed: int = 0) -> dict[str, object]:
    """The joined waveform-in int8 graph on waveforms against its own fbank-in part on the project's fbank of
    them (ONNX Runtime CPU), under the int8 export tolerance (finite logits, top-1 agreement); FastASTError
    otherwise."""
    import onnxruntime as ort

    from .parity import require_parity

    config = graph_features(model)
    waves = dummy_inputs(WAVEFORM_NAME, (waveform_samples(config),), batch or num, seed, config.sample_rate)
    run = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
           for p in (int8_fbank, joined)]
    want = run[0].run(None, {INPUT_NAME: reference_fbank(waves, config)})[0]
    got = run[1].run(None, {WAVEFORM_NAME: waves})[0]
    result = require_parity(want, got, "int8", "the waveform-in int8 graph disagrees with its fbank-in part on the "
                            "project's fbank", "use --no-check to write it anyway")
    return {"inputs": int(len(waves)), "top1_agreement": result["top1_agreement"],
            "max_abs_diff": result["max_abs_diff"], "reference": "the int8 fbank-in graph on the project's fbank"}
