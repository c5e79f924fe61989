"""An audio clip cut into model-input windows: fbank windows (W, T, F) for fbank-in models and
waveform windows (W, samples) for waveform-in ones, the two giving the same features (``predict`` feeds them;
``audio.streaming`` cuts the same windows from a file in constant memory)."""

from __future__ import annotations

import math

import numpy as np
import torch

from fastast_deploy.audio.features import (
    FRAME_LENGTH_MS,
    FeatureConfig,
    _frame_sizes,
    pad_or_cut,
    resample,
)
from fastast_deploy.errors import AudioError


def window_count(total_frames: int, frames: int, hop: int) -> int:
    """How many windows of ``frames`` every ``hop`` cover ``total_frames`` (the last zero-padded)."""
    return 1 if total_frames <= frames else 1 + math.ceil((total_frames - frames) / hop)


def split_windows(features: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
    """(T_total, F) fbank -> (W, frames, F) windows starting every ``hop`` frames, the last zero-padded.

    W = 1 when T_total <= frames, else 1 + ceil((T_total - frames) / hop).
    """
    count = window_count(features.shape[0], frames, hop)
    return torch.stack([pad_or_cut(features[i * hop :], frames) for i in range(count)])  # (W, frames, F)


def waveform_samples(config: FeatureConfig) -> int:
    """Samples of a waveform window: the shortest waveform giving exactly ``config.frames`` Kaldi frames."""
    win, shift, _ = _frame_sizes(config.sample_rate)
    return win + shift * (config.frames - 1)


def waveform_windows(waveform: torch.Tensor, sample_rate: int, config: FeatureConfig, hop: int,
                     samples: int) -> np.ndarray:
    """Waveform-in model inputs (W, samples) float32 of one (samples,) clip: resampled to the model's rate, cut
    into windows starting every ``hop`` frames, NaN past the clip's end. Window w holds the samples of fbank
    frames w * hop ... w * hop + frames - 1, and its NaN tail marks the frames `split_windows` zero-pads, so the
    in-graph fbank equals the whole-clip fbank cut by `split_windows` (W is the same)."""
    audio = resample(waveform, sample_rate, config.sample_rate).numpy().astype(np.float32, copy=False)
    win, shift, _ = _frame_sizes(config.sample_rate)
    if len(audio) < win:
        raise AudioError(f"audio has {len(audio)} samples at {config.sample_rate} Hz, shorter than one "
                         f"{FRAME_LENGTH_MS} ms frame ({win} samples); expected at least {win} samples")
    count = window_count(1 + (len(audio) - win) // shift, config.frames, hop)  # Kaldi frames, snip_edges
    out = np.full((count, samples), np.nan, dtype=np.float32)
    for i in range(count):
        clip = audio[i * hop * shift : i * hop * shift + samples]
        out[i, : len(clip)] = clip
    return out
