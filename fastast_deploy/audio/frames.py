"""Frame arithmetic of the Kaldi fbank every model input is made of: frame and window sizes in samples, frame and
window counts, the shortest audio that gives a frame. Plain Python, no torch: the feature code, streaming,
windowed prediction, training's length scan and the in-graph fbank all count frames here."""

from __future__ import annotations

import math

from fastast_deploy.errors import AudioError, ConfigError
from fastast_deploy.model.config import FeatureConfig

FRAME_LENGTH_MS = 25
FRAME_SHIFT_MS = 10


def frame_sizes(sample_rate: int) -> tuple[int, int, int]:
    """(window length, shift, FFT size) in samples: 25 ms, 10 ms, next power of two of the window."""
    win = sample_rate * FRAME_LENGTH_MS // 1000
    shift = sample_rate * FRAME_SHIFT_MS // 1000
    return win, shift, 1 << (win - 1).bit_length()


def require_frame(samples: int, sample_rate: int, what: str = "audio") -> None:
    """AudioError when ``samples`` at ``sample_rate`` are shorter than one frame."""
    win = frame_sizes(sample_rate)[0]
    if samples < win:
        raise AudioError(f"{what} has {samples} samples at {sample_rate} Hz, shorter than one {FRAME_LENGTH_MS} ms "
                         f"frame ({win} samples); expected at least {win} samples")


def frame_count(samples: int, sample_rate: int) -> int:
    """Kaldi frames (snip_edges) in ``samples``; 0 when shorter than one frame."""
    win, shift, _ = frame_sizes(sample_rate)
    return 0 if samples < win else 1 + (samples - win) // shift


def window_count(total_frames: int, frames: int, hop: int) -> int:
    """How many windows of ``frames`` every ``hop`` cover ``total_frames`` (the last zero-padded)."""
    return 1 if total_frames <= frames else 1 + math.ceil((total_frames - frames) / hop)


def frames_span(frames: int, sample_rate: int) -> int:
    """Samples that ``frames`` consecutive frames cover."""
    win, shift, _ = frame_sizes(sample_rate)
    return win + shift * (frames - 1)


def waveform_samples(config: FeatureConfig) -> int:
    """Samples of a waveform window: the shortest waveform giving exactly ``config.frames`` Kaldi frames."""
    return frames_span(config.frames, config.sample_rate)


def hop_frames(hop_s: float | None, frames: int) -> int:
    """A window hop in seconds as frames (10 ms each); ``None`` gives ``frames`` (windows do not overlap)."""
    if hop_s is None:
        return frames
    hop = round(hop_s * 1000 / FRAME_SHIFT_MS)
    if not 1 <= hop <= frames:
        raise ConfigError(f"hop {hop_s} s is {hop} frames; it must be 1 to {frames} frames (0.01 to "
                          f"{frames * FRAME_SHIFT_MS / 1000:g} s, the model's window)")
    return hop


def window_seconds(config: FeatureConfig) -> float:
    """The model's input length in seconds."""
    return config.frames * FRAME_SHIFT_MS / 1000
