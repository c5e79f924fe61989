"""An audio clip cut into model-input windows: fbank windows (W, T, F) for fbank-in models and
waveform windows (W, samples) for waveform-in ones, the two giving the same features (``predict`` feeds them;
``audio.streaming`` cuts the same windows from a file in constant memory)."""

from __future__ import annotations

import numpy as np
import torch

from fastast_deploy.audio.features import pad_or_cut, resample
from fastast_deploy.audio.frames import frame_count, frame_sizes, require_frame, window_count
from fastast_deploy.model.config import FeatureConfig


def split_windows(features: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
    """(T_total, F) fbank -> (W, frames, F) windows starting every ``hop`` frames, the last zero-padded.

    W = 1 when T_total <= frames, else 1 + ceil((T_total - frames) / hop).
    """
    count = window_count(features.shape[0], frames, hop)
    return torch.stack([pad_or_cut(features[i * hop :], frames) for i in range(count)])  # (W, frames, F)


def waveform_windows(waveform: torch.Tensor, sample_rate: int, config: FeatureConfig, hop: int,
                     samples: int) -> np.ndarray:
    """Waveform-in model inputs (W, samples) float32 of one (samples,) clip: resampled to the model's rate, cut
    into windows starting every ``hop`` frames, NaN past the clip's end. Window w holds the samples of fbank
    frames w * hop ... w * hop + frames - 1, and its NaN tail marks the frames `split_windows` zero-pads, so the
    in-graph fbank equals the whole-clip fbank cut by `split_windows` (W is the same)."""
    audio = resample(waveform, sample_rate, config.sample_rate).numpy().astype(np.float32, copy=False)
    require_frame(len(audio), config.sample_rate)
    shift = frame_sizes(config.sample_rate)[1]
    count = window_count(frame_count(len(audio), config.sample_rate), config.frames, hop)
    out = np.full((count, samples), np.nan, dtype=np.float32)
    for i in range(count):
        clip = audio[i * hop * shift : i * hop * shift + samples]
        out[i, : len(clip)] = clip
    return out
