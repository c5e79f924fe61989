"""Live input: a model over an audio stream (standard input), one JSON line per hop as soon as its window is complete.

The stream is raw 16-bit little-endian PCM, mono, at a given rate, or a WAV stream (detected by its RIFF header,
parsed from the first bytes since a pipe cannot seek: 16-bit PCM, any channel count mixed down to mono, its own
rate; a data size of 0 or 0xFFFFFFFF, as sox and arecord write to pipes, or one larger than what arrives, means
"until the stream ends"). Audio is read in blocks of 10 ms, resampled as a stream to the model's rate (soxr HQ,
the resampler files go through, which buffers up to about 0.1 s), and kept in a buffer of one window. Every hop
the newest complete window becomes the model's input as a file's window does (``features.waveform_to_input``, or
the waveform itself for a waveform-in model) and its line is emitted: ``{"start", "end", "labels": [{"label",
"score"}], "latency_ms"}``, the latency running from the read that completed the window to the line.

Windows start every hop from the stream's first sample, as `predict` cuts a file; a window the stream stops in is
not scored (the summary says how much audio that leaves out).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from fastast_deploy.audio.frames import frame_sizes, hop_frames, waveform_samples, window_seconds
from fastast_deploy.contract import WAVEFORM_NAME
from fastast_deploy.errors import AudioError, ConfigError
from fastast_deploy.inference.runner import Runner
from fastast_deploy.inference.scoring import WindowBatches, window_hits

BLOCK_MS = 10  # audio read per step
UNTIL_EOF = (0, 0xFFFFFFFF)  # WAV data sizes that streaming writers use for "unknown"
PCM, EXTENSIBLE = 1, 0xFFFE  # WAV format tags
MAX_HEADER_CHUNK = 1 << 20  # bytes of a non-audio chunk before the data skipped at most


@dataclass(frozen=True)
class StreamFormat:
    """What the stream holds: ``kind`` "wav" or "raw", sample rate (Hz), channels; ``data_bytes`` the WAV data
    size when it bounds the audio, else None (until the stream ends)."""

    kind: str
    rate: int
    channels: int = 1
    data_bytes: int | None = None


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes, or fewer where the stream ends first (a pipe may return short reads)."""
    parts, got = [], 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _header_bytes(stream: BinaryIO, size: int, what: str) -> bytes:
    data = _read_exact(stream, size)
    if len(data) < size:
        raise AudioError(f"the WAV stream ended inside its header ({what}); expected a complete RIFF/WAVE header")
    return data


def read_wav_header(stream: BinaryIO) -> StreamFormat:
    """The format of a WAV stream whose first 4 bytes (``RIFF``) were read: the rest of the header up to the first
    byte of the data chunk; AudioError for a header that is not 16-bit PCM."""
    if _header_bytes(stream, 8, "RIFF size")[4:] != b"WAVE":
        raise AudioError("the stream starts with RIFF but is not WAVE; expected a WAV stream or raw 16-bit PCM")
    fmt: tuple[int, int, int, int] | None = None  # tag, channels, rate, bits
    while True:
        chunk, size = struct.unpack("<4sI", _header_bytes(stream, 8, "chunk header"))
        if chunk == b"data":
            break
        if chunk == b"fmt ":
            if not 16 <= size <= 256:
                raise AudioError(f"the WAV stream's fmt chunk has {size} bytes; expected 16 to 256")
            body = _header_bytes(stream, size + size % 2, "fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == EXTENSIBLE and size >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
            fmt = (tag, channels, rate, bits)
        else:  # LIST, fact, ...: skipped
            if size > MAX_HEADER_CHUNK:
                raise AudioError(f"the WAV stream's {chunk!r} chunk before the audio has {size} bytes; expected a "
                                 "WAV stream whose audio follows a short header")
            _header_bytes(stream, size + size % 2, f"{chunk!r} chunk")
    if fmt is None:
        raise AudioError("the WAV stream has no fmt chunk before its data; expected a RIFF/WAVE header")
    tag, channels, rate, bits = fmt
    if tag != PCM or bits != 16:
        kind = "PCM" if tag == PCM else f"format tag {tag:#x}"
        raise AudioError(f"the WAV stream holds {bits}-bit {kind} audio; expected 16-bit PCM (e.g. arecord -f S16_LE, "
                         "sox ... -b 16 -e signed -t wav -)")
    if channels < 1 or rate < 1:
        raise AudioError(f"the WAV stream's header gives {channels} channels at {rate} Hz; expected at least one "
                         "channel at a positive rate")
    return StreamFormat("wav", rate, channels, None if size in UNTIL_EOF else size)


def stream_format(stream: BinaryIO, rate: int) -> tuple[StreamFormat, bytes]:
    """The stream's format from its first bytes, and the audio bytes read while looking (raw streams)."""
    head = _read_exact(stream, 4)
    if head == b"RIFF":
        return read_wav_header(stream), b""
    if head in (b"RIFX", b"RF64"):
        raise AudioError(f"the stream is a {head.decode()} file; expected a little-endian RIFF/WAVE stream or raw "
                         "16-bit PCM")
    return StreamFormat("raw", rate), head


class _Samples:
    """16-bit PCM bytes -> mono float32 samples at the model's rate, in blocks as they arrive; whole frames only,
    the rest carried to the next block."""

    def __init__(self, source: StreamFormat, rate: int) -> None:
        self.source, self.carry = source, b""
        self.frame = 2 * source.channels
        self.resampler = None
        if source.rate != rate:
            import soxr

            self.resampler = soxr.ResampleStream(source.rate, rate, 1, dtype="float32", quality="HQ")

    def convert(self, data: bytes, last: bool = False) -> np.ndarray:
        data = self.carry + data
        whole = len(data) - len(data) % self.frame
        self.carry = data[whole:]
        pcm = np.frombuffer(data[:whole], dtype="<i2").reshape(-1, self.source.channels)  # (samples, channels)
        mono = pcm.astype(np.float32) / np.float32(32768)  # as libsndfile reads PCM16
        mono = mono.mean(axis=1, dtype=np.float32) if self.source.channels > 1 else mono[:, 0]
        if self.resampler is None:
            return mono
        return np.asarray(self.resampler.resample_chunk(mono, last=last), dtype=np.float32)


class _Windows:
    """A buffer of one window of samples: ``add`` appends a block and calls ``on_window`` with the buffer each
    time it holds a complete window, then keeps what the next window shares with it (windows start every
    ``hop`` samples)."""

    def __init__(self, span: int, hop: int) -> None:
        self.window = np.zeros(span, dtype=np.float32)
        self.span, self.hop = span, hop
        self.filled = 0  # samples of the next window held
        self.total = 0  # samples received

    def add(self, block: np.ndarray, on_window: Callable[[np.ndarray], None]) -> None:
        self.total += len(block)
        while len(block):
            take = min(self.span - self.filled, len(block))
            self.window[self.filled : self.filled + take] = block[:take]
            self.filled += take
            block = block[take:]
            if self.filled == self.span:
                on_window(self.window)
                self.window[: self.span - self.hop] = self.window[self.hop :]  # numpy copies overlaps safely
                self.filled = self.span - self.hop


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def analyze_stream(runner: Runner, stream: BinaryIO, *, rate: int | None, hop_s: float | None, min_score: float,
                   top_k: int | None, emit: Callable[[str], None],
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Score the audio of ``stream`` (a binary file object: ``sys.stdin.buffer``) window by window as it arrives.

    ``rate``: the rate of raw PCM (None: the model's; a WAV stream's header gives its own). ``hop_s``: seconds
    between window starts (None: one window, no overlap). Each complete window gives one line through ``emit``
    (which must write and flush it): its ``top_k`` labels (None: all) scoring at least ``min_score``, best first.
    Returns the summary: ``windows``, ``audio_s`` (audio read, at the model's rate), ``latency_ms`` ({"median",
    "p99"}), ``real_time_factor`` (seconds spent on features and the model per second of audio read),
    ``compute_s``, ``stream`` (its format), ``unscored_s`` and ``warning`` (None, or a line saying how far into a
    window the stream ended and how much audio that left unscored), ``interrupted`` (Ctrl-C ended the stream: the
    caller exits 130 after the summary). AudioError for a stream that is not 16-bit PCM, that ends inside a
    sample, or that holds no audio."""
    if rate is not None and rate < 1:
        raise ConfigError(f"--rate must be a positive sample rate in Hz, got {rate}")
    features = runner.features
    model_rate = features.sample_rate
    span = waveform_samples(features)  # samples of one window
    hop = hop_frames(hop_s, features.frames) * frame_sizes(model_rate)[1]  # samples between window starts
    batches = WindowBatches(runner, 1)
    batches.add(None, _model_input(runner, np.zeros(span, dtype=np.float32)))  # warm up before the first window
    source, pending = stream_format(stream, model_rate if rate is None else rate)
    samples = _Samples(source, model_rate)
    windows = _Windows(span, hop)
    latencies: list[float] = []
    compute = 0.0
    read_at = clock()

    def on_window(window: np.ndarray) -> None:
        nonlocal compute
        begun = clock()
        ((_, scores),) = batches.add(None, _model_input(runner, window))
        start = len(latencies) * hop / model_rate
        labels = [{"label": runner.labels[i], "score": round(score, 4)}
                  for i, score in window_hits(scores, min_score, top_k)]
        line = {"start": round(start, 3), "end": round(start + window_seconds(features), 3), "labels": labels}
        done = clock()
        compute += done - begun
        latencies.append((done - read_at) * 1000)
        emit(json.dumps({**line, "latency_ms": round(latencies[-1], 1)}, ensure_ascii=False))

    step = max(1, source.rate * BLOCK_MS // 1000) * samples.frame  # bytes per read
    left = source.data_bytes
    if pending:
        windows.add(samples.convert(pending), on_window)
    read = getattr(stream, "read1", stream.read)  # what has arrived, up to a block: no wait for a full one
    interrupted = False
    try:
        while left is None or left > 0:
            data = read(step if left is None else min(step, left))
            if not data:
                break
            read_at = clock()
            if left is not None:
                left -= len(data)
            windows.add(samples.convert(data), on_window)
        windows.add(samples.convert(b"", last=True), on_window)  # what the resampler holds
    except KeyboardInterrupt:  # Ctrl-C ends a live stream: what was scored is summarised
        interrupted = True
        samples.carry = b""
    if samples.carry:
        raise AudioError(f"the stream ended inside a sample frame ({len(samples.carry)} of {samples.frame} bytes) "
                         f"after {len(latencies)} windows were scored; expected whole 16-bit "
                         f"{'mono' if source.channels == 1 else f'{source.channels}-channel'} samples")
    if windows.total == 0 and not pending:
        raise AudioError("the stream held no audio; pipe raw 16-bit PCM or a WAV stream into it, e.g. "
                         "arecord -f S16_LE -r 16000 | fastast-deploy analyze MODEL -")
    return {**_summary(windows, latencies, compute, source, model_rate, hop), "interrupted": interrupted}


def closing_note(summary: dict[str, Any]) -> str:
    """The summary of `analyze_stream` as one line: windows, audio, latency median and p99, real-time factor."""
    latency = summary["latency_ms"]
    timing = ("" if latency["median"] is None else
              f": latency median {latency['median']:.1f} ms, p99 {latency['p99']:.1f} ms")
    factor = summary["real_time_factor"]
    speed = "" if factor is None else f"; real-time factor {factor:.4f} (features and model per second of audio)"
    count = summary["windows"]
    return f"{count} window{'' if count == 1 else 's'} in {summary['audio_s']:.3f} s of audio{timing}{speed}"


def _model_input(runner: Runner, window: np.ndarray) -> np.ndarray:
    """A window's samples (samples,) as the model takes them, as a file's window is made: the normalised fbank
    (T, F) float32, or a copy of the samples for a waveform-in model."""
    if runner.input_name == WAVEFORM_NAME:
        return window.copy()
    import torch

    from fastast_deploy.audio.features import waveform_to_input

    features = runner.features
    model_input = waveform_to_input(torch.from_numpy(window), features.sample_rate, features)  # (T, F)
    return model_input.numpy().astype(np.float32, copy=False)


def _summary(windows: _Windows, latencies: list[float], compute: float, source: StreamFormat, rate: int,
             hop: int) -> dict[str, Any]:
    count = len(latencies)
    scored_end = (count - 1) * hop + windows.span if count else 0  # samples up to the last scored window's end
    unscored = max(0, windows.total - scored_end)
    audio_s = windows.total / rate
    warning = None
    if unscored:
        into = (windows.total - count * hop) / rate  # into the first window not scored
        warning = f"the stream ended {into:.3f} s into a window; the last {unscored / rate:.3f} s were not scored"
    return {"windows": count, "audio_s": round(audio_s, 3),
            "latency_ms": {"median": _percentile(latencies, 50), "p99": _percentile(latencies, 99)},
            "real_time_factor": round(compute / audio_s, 4) if audio_s else None, "compute_s": round(compute, 3),
            "stream": {"format": source.kind, "rate": source.rate, "channels": source.channels},
            "unscored_s": round(unscored / rate, 3), "warning": warning}
