"""Small real-speech datasets: ten words spoken by espeak-ng (Debian: ``apt-get install -y espeak-ng``) in many
accents, voice variants, rates and pitches, placed at a random time in a one-second 16 kHz clip over background
noise at a random SNR. Two sets (`SETS`) differ in all of these: "words" (yes, no, up, down, ...; eight English
accents, 53 voice variants, SNR 0-25 dB) and "digits" (zero .. nine; six accents, two of them Dutch and German
readings, every other variant, slower and faster rates, SNR -5-20 dB). Written in the AST layout that
`fastast-deploy train` and `evaluate` read: ``audio/``, ``train.json``, ``val.json``, ``test.json``
(``{"data": [{"wav": ..., "labels": ...}]}``) and ``labels.csv``.

Every class gets the same number of clips, split per class into train / val / held-out test (42 / 9 / 9 of 60 by
default, 420 / 90 / 90 clips for ten words). A clip's voice is drawn at random, so a split has voices in common with
the others but never the same clip.

    python benchmarks/speech_words.py -o /tmp/speech [--set digits]     # standalone; bench_distill.py calls it too
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak", "klatt",
            "klatt2", "klatt3", "klatt4", "whisper", "whisperf", "Alex", "Andy", "Annie", "Denis", "Gene", "Jacky",
            "Lee", "Michael", "Mike", "Storm", "Tweaky", "adam", "anika", "aunty", "belinda", "boris", "caleb",
            "david", "edward", "grandma", "grandpa", "john", "linda", "max", "norbert", "paul", "quincy", "rob",
            "robert", "steph", "travis", "victor", "zac")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class SpeechSet:
    """Which words, by which voices (``ACCENT+VARIANT``), at which rates (words per minute), pitches (0-99) and
    signal-to-noise ratios (dB)."""

    words: tuple[str, ...]
    accents: tuple[str, ...]
    variants: tuple[str, ...]
    rates: tuple[int, int]
    pitches: tuple[int, int]
    snr_db: tuple[float, float]


SETS = {
    "words": SpeechSet(WORDS, ACCENTS, VARIANTS, (110, 260), (15, 85), (0.0, 25.0)),
    "digits": SpeechSet(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
                        ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "nl", "de"),
                        VARIANTS[1::2], (80, 320), (0, 99), (-5.0, 20.0)),
}


def speak(word: str, voice: str, rate: int, pitch: int, workdir: Path) -> np.ndarray:
    """espeak-ng's rendering of ``word`` as float32 at 16 kHz, leading and trailing silence trimmed."""
    out = workdir / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(out), word],
                   check=True, capture_output=True)
    audio, sr = sf.read(str(out), dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * max(1e-6, float(np.abs(audio).max())))
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Background of white, pink or brown noise, sometimes with mains hum or a babble-like band."""
    white = rng.standard_normal(n)
    kind = rng.integers(0, 3)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    shape = [np.ones_like(freqs), 1 / np.sqrt(np.maximum(freqs, 20)), 1 / np.maximum(freqs, 20)][kind]
    x = np.fft.irfft(spectrum * shape, n)
    t = np.arange(n) / SAMPLE_RATE
    if rng.random() < 0.3:
        x = x / (x.std() + 1e-9) + rng.uniform(0.3, 1.5) * np.sin(2 * np.pi * rng.choice([50, 60]) * t)
    if rng.random() < 0.3:  # band-passed noise bursts around speech frequencies
        band = np.fft.rfft(rng.standard_normal(n)) * ((freqs > 300) & (freqs < 3000))
        x = x / (x.std() + 1e-9) + np.fft.irfft(band, n) * (1 + np.sin(2 * np.pi * rng.uniform(1, 5) * t))
    return (x / (x.std() + 1e-9)).astype(np.float32)


def render(word: str, rng: np.random.Generator, workdir: Path, seconds: float = 1.0,
           kind: SpeechSet = SETS["words"]) -> np.ndarray:
    n = round(seconds * SAMPLE_RATE)
    voice = f"{rng.choice(kind.accents)}+{rng.choice(kind.variants)}"
    speech = speak(word, voice, int(rng.integers(kind.rates[0], kind.rates[1] + 1)),
                   int(rng.integers(kind.pitches[0], kind.pitches[1] + 1)), workdir)
    if len(speech) > n:  # a slow rendering: keep a window of the word
        start = int(rng.integers(0, len(speech) - n + 1))
        speech = speech[start : start + n]
    clip = np.zeros(n, dtype=np.float32)
    offset = int(rng.integers(0, n - len(speech) + 1))
    clip[offset : offset + len(speech)] = speech / (np.sqrt(np.mean(speech**2)) + 1e-9)
    snr_db = rng.uniform(*kind.snr_db)
    speech_rms = np.sqrt(np.mean(clip[offset : offset + len(speech)] ** 2))
    clip += noise(n, rng) * speech_rms * 10 ** (-snr_db / 20)
    return (clip / (np.abs(clip).max() + 1e-9) * rng.uniform(0.1, 0.9)).astype(np.float32)


def make_speech_words(output: Path, clips_per_class: int = 60, val: int = 9, test: int = 9, seed: int = 0,
                      kind: str = "words") -> dict[str, int]:
    """Write the set ``kind`` (a key of `SETS`) to ``output`` (a new folder); returns the clip count of each
    split."""
    spoken = SETS[kind]
    words = spoken.words
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install -y espeak-ng)")
    if clips_per_class <= val + test:
        raise SystemExit(f"{clips_per_class} clips per class leave none for training after {val} + {test}")
    (output / "audio").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "val": [], "test": []}
    with tempfile.TemporaryDirectory(prefix="speech-words-") as tmp:
        for k, word in enumerate(words):
            for i in range(clips_per_class):
                name = f"audio/{word}_{i:03d}.wav"
                clip = render(word, rng, Path(tmp), kind=spoken)
                sf.write(str(output / name), clip, SAMPLE_RATE, subtype="PCM_16")
                split = "test" if i < test else "val" if i < test + val else "train"
                splits[split].append({"wav": name, "labels": f"/w/{k:02d}"})
    with (output / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        for k, word in enumerate(words):
            writer.writerow([k, f"/w/{k:02d}", word])
    for split, rows in splits.items():
        order = rng.permutation(len(rows))
        (output / f"{split}.json").write_text(json.dumps({"data": [rows[i] for i in order]}, indent=1) + "\n",
                                              encoding="utf-8")
    return {split: len(rows) for split, rows in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--clips-per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", choices=sorted(SETS), default="words")
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output} exists; choose another -o")
    print(make_speech_words(args.output, args.clips_per_class, seed=args.seed, kind=args.set))


if __name__ == "__main__":
    main()
