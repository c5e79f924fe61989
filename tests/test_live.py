"""Live input: audio piped in at real-time speed is scored window by window as it arrives, and a resampled WAV
stream gives the scores predict gives for the same audio as a file."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from fastast_deploy.errors import AudioError
from fastast_deploy.inference.live import analyze_stream, closing_note
from fastast_deploy.inference.runner import Runner, open_runner
from fastast_deploy.inference.scoring import activate, file_windows, run_windows

SPAN = 400 + 160 * 127  # samples of the built-in model's window at 16 kHz: 128 frames of 25 ms every 10 ms
WRITER = """
import sys, time
import numpy as np
rate, seconds = 16000, float(sys.argv[1])
rng = np.random.default_rng(3)
t = np.arange(int(rate * seconds)) / rate
audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
pcm = (audio * 32767).astype("<i2").tobytes()
t0 = time.monotonic()
print(t0, file=sys.stderr, flush=True)
for k, at in enumerate(range(0, len(pcm), 320)):  # 10 ms blocks, each written once it has been "recorded"
    time.sleep(max(0.0, t0 + (k + 1) * 0.01 - time.monotonic()))
    sys.stdout.buffer.write(pcm[at : at + 320])
    sys.stdout.buffer.flush()
"""


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with open_runner("default", threads=1) as opened:  # one thread: two stall each other on a busy 2-core box
        opened.infer(np.zeros((1, opened.features.frames, opened.features.num_mel_bins), np.float32))  # warm up
        yield opened


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _lines(runner: Runner, data: bytes, **kwargs: object) -> tuple[list[dict], dict]:
    lines: list[str] = []
    options = {"rate": None, "hop_s": None, "min_score": 0.0, "top_k": None, **kwargs}
    summary = analyze_stream(runner, io.BytesIO(data), emit=lines.append, **options)  # type: ignore[arg-type]
    return [json.loads(line) for line in lines], summary


def test_a_pipe_at_real_time_speed_gives_a_line_per_hop_as_it_arrives(runner: Runner) -> None:
    seconds, hop = 6.0, 64 * 160  # --hop 0.64 s
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(seconds)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    emitted: list[tuple[float, dict]] = []
    try:
        summary = analyze_stream(runner, writer.stdout, rate=16000, hop_s=0.64, min_score=0.0, top_k=3,
                                 emit=lambda line: emitted.append((time.monotonic(), json.loads(line))))
    finally:
        writer.wait(timeout=30)
    t0 = float(writer.stderr.read().decode().split()[0])
    total = int(16000 * seconds)
    count = (total - SPAN) // hop + 1  # complete windows: 8
    assert summary["windows"] == len(emitted) == count == 8
    assert [line["start"] for _, line in emitted] == [round(i * 0.64, 3) for i in range(count)]
    assert all(line["end"] == round(line["start"] + 1.28, 3) for _, line in emitted)
    for i, (at, line) in enumerate(emitted):
        ready = t0 + (i * hop + SPAN) / 16000  # when the writer had the window's last sample, at the earliest
        assert at >= ready, (i, at - t0)  # never ahead of the audio
        # the reported latency runs from the read of the last sample, which the writer sent at `ready` or later
        assert 0 < line["latency_ms"] <= (at - ready) * 1000 + 1, (i, line, (at - ready) * 1000)
        assert line["latency_ms"] < 4000, (i, line)
        assert len(line["labels"]) == 3
    assert emitted[0][0] - t0 < seconds - 1, summary  # the first line came while the stream was still running
    assert summary["audio_s"] == seconds
    assert 0 < summary["latency_ms"]["median"] <= summary["latency_ms"]["p99"] < 4000
    assert 0 < summary["real_time_factor"] < 1, summary
    unscored = total - ((count - 1) * hop + SPAN)
    assert summary["unscored_s"] == round(unscored / 16000, 3)
    into = (total - count * hop) / 16000
    assert summary["warning"] == (f"the stream ended {into:.3f} s into a window; the last {unscored / 16000:.3f} s "
                                  "were not scored")


def _streamed_wav(path: Path) -> bytes:
    """The bytes of a WAV file as sox / arecord write one to a pipe: RIFF and data sizes 0xFFFFFFFF."""
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[4:8] = data[at + 4 : at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    return bytes(data)


def test_an_8khz_stereo_wav_stream_scores_as_predict_scores_the_file(runner: Runner, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    t = np.arange(16000 * 4) / 16000
    tone = np.sin(2 * np.pi * (300 + 200 * t) * t)  # a chirp in band at 8 kHz
    left = soxr.resample(0.4 * tone + 0.05 * rng.standard_normal(len(t)), 16000, 8000)
    right = soxr.resample(0.2 * np.sign(np.sin(2 * np.pi * 3 * t)) * tone, 16000, 8000)
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    lines, summary = _lines(runner, _streamed_wav(path), rate=44100)  # the header's 8 kHz wins over --rate
    assert summary["stream"] == {"format": "wav", "rate": 8000, "channels": 2}
    assert summary["windows"] == len(lines) == 3  # 64000 samples at 16 kHz: windows at 0, 20480, 40960
    windows = np.stack(list(file_windows(runner, path)))  # predict's windows of the file, resampled whole
    want = activate(run_windows(runner, windows, 1), runner.activation)  # (4, labels), the last zero-padded
    for line, row in zip(lines, want, strict=False):
        got = np.array([next(x["score"] for x in line["labels"] if x["label"] == name) for name in runner.labels])
        assert np.abs(got - row).max() <= 1e-4  # lines carry 4 decimals
        assert line["labels"][0]["label"] == runner.labels[int(np.argmax(row))]


@pytest.fixture(scope="module")
def waveform_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The built-in model exported with the fbank inside the graph (it takes (n, samples) waveforms)."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx

    path = tmp_path_factory.mktemp("live") / "default-waveform.onnx"
    export_onnx(load_model("default"), path, ExportOptions(input="waveform"), check=False)
    with open_runner(path, threads=1) as opened:
        yield opened


def test_a_waveform_in_model_scores_a_44khz_stream_as_predict_scores_the_file(waveform_runner: Runner,
                                                                             tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    t = np.arange(44100 * 3) / 44100
    audio = 0.3 * np.sin(2 * np.pi * 1200 * t) * (t % 0.5 < 0.25) + 0.02 * rng.standard_normal(len(t))
    path = tmp_path / "clip.wav"
    sf.write(path, audio, 44100, subtype="PCM_16")
    raw = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()
    lines, summary = _lines(waveform_runner, raw, rate=44100, hop_s=0.5)  # raw PCM at --rate 44100
    assert waveform_runner.input_name == "waveform" and summary["stream"]["format"] == "raw"
    assert [line["start"] for line in lines] == [0.0, 0.5, 1.0, 1.5]  # windows of 1.295 s in 3 s, every 0.5 s
    windows = np.stack(list(file_windows(waveform_runner, path, 50)))  # predict --hop 0.5
    want = activate(run_windows(waveform_runner, windows, 1), waveform_runner.activation)
    for line, row in zip(lines, want, strict=False):
        got = np.array([next(x["score"] for x in line["labels"] if x["label"] == name)
                        for name in waveform_runner.labels])
        assert np.abs(got - row).max() <= 1e-4


def test_a_wav_stream_with_a_data_size_reads_that_much(runner: Runner, tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(30000, np.float32), 16000, subtype="PCM_16")
    data = path.read_bytes() + b"LIST\x04\x00\x00\x00junk"  # a chunk after the audio is not audio
    lines, summary = _lines(runner, data, min_score=0.5, top_k=1)
    assert summary["audio_s"] == 30000 / 16000 and len(lines) == 1
    assert len(lines[0]["labels"]) <= 1 and all(x["score"] >= 0.5 for x in lines[0]["labels"])


def test_a_stream_cut_mid_window_says_what_was_not_scored(runner: Runner) -> None:
    lines, summary = _lines(runner, _pcm(np.full(32000, 0.1)))  # 2.0 s: one window of 1.295 s, the next from 1.28 s
    assert [line["start"] for line in lines] == [0.0] and summary["windows"] == 1
    assert summary["unscored_s"] == 0.705
    assert summary["warning"] == "the stream ended 0.720 s into a window; the last 0.705 s were not scored"
    note = closing_note(summary)
    assert re.fullmatch(r"1 window in 2\.000 s of audio: latency median [0-9.]+ ms, p99 [0-9.]+ ms; real-time "
                        r"factor [0-9.]+ \(features and model per second of audio\)", note), note
    short, summary = _lines(runner, _pcm(np.full(8000, 0.1)))
    assert short == [] and summary["windows"] == 0
    assert summary["warning"] == "the stream ended 0.500 s into a window; the last 0.500 s were not scored"


class _Interrupted(io.BytesIO):
    """A stream that Ctrl-C interrupts once ``after`` bytes were read."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.after = after

    def read1(self, size: int = -1) -> bytes:
        if self.tell() >= self.after:
            raise KeyboardInterrupt
        return super().read1(min(size, self.after - self.tell()))


def test_ctrl_c_ends_the_stream_with_its_summary(runner: Runner) -> None:
    lines: list[str] = []
    summary = analyze_stream(runner, _Interrupted(_pcm(np.full(48000, 0.1)), 2 * 24000), rate=None, hop_s=None,
                             min_score=0.0, top_k=1, emit=lines.append)
    assert summary["interrupted"] and summary["windows"] == len(lines) == 1 and summary["audio_s"] == 1.5
    assert summary["warning"] == "the stream ended 0.220 s into a window; the last 0.205 s were not scored"


def test_a_whole_window_leaves_no_warning(runner: Runner) -> None:
    lines, summary = _lines(runner, _pcm(np.full(SPAN, 0.1)))
    assert len(lines) == 1 and summary["warning"] is None and summary["unscored_s"] == 0


def test_an_odd_byte_count_is_one_line_after_the_lines_done(runner: Runner) -> None:
    lines: list[str] = []
    with pytest.raises(AudioError, match=r"ended inside a sample frame \(1 of 2 bytes\) after 1 windows") as err:
        analyze_stream(runner, io.BytesIO(_pcm(np.full(24000, 0.1)) + b"\x01"), rate=None, hop_s=None,
                       min_score=0.0, top_k=1, emit=lines.append)
    assert "\n" not in str(err.value) and len(lines) == 1


@pytest.mark.parametrize(("subtype", "found"), [("FLOAT", "format tag 0x3"), ("PCM_24", "24-bit PCM")])
def test_a_wav_stream_that_is_not_16_bit_pcm_is_refused(runner: Runner, tmp_path: Path, subtype: str,
                                                        found: str) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype=subtype)
    with pytest.raises(AudioError, match=f"{found} audio; expected 16-bit PCM"):
        _lines(runner, _streamed_wav(path))


def test_an_empty_stream_is_refused(runner: Runner) -> None:
    with pytest.raises(AudioError, match="held no audio"):
        _lines(runner, b"")
