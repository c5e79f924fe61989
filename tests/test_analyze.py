"""`analyze`: detections of a long recording assembled from the built-in model's classes at known times, in the
formats other tools open (Raven selection tables checked against their documented layout, Audacity label tracks,
CSV); a 200-file run killed with SIGKILL at random points and rerun equals an uninterrupted run; bad inputs end
in one line and keep what was done."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from fastast_deploy.audio.synthetic import SAMPLE_RATE, make_classes, render_clip
from fastast_deploy.cli.main import cli
from fastast_deploy.serving.detections import combined_text, detections

HOP = 0.64  # s, half the built-in model's 1.28 s window
# Clips and silences a whole number of hops long: every window holds all, half or none of an event.
CLIP = int(1.28 * SAMPLE_RATE)
SILENCE = np.zeros(int(2.56 * SAMPLE_RATE), np.float32)
EVENT_CLASSES = (3, 6, 9)  # three classes of the built-in model (its dataset: 10 classes, seed 0)
# Raven Pro's selection table columns (tab-separated), then this tool's own, as BirdNET-Analyzer writes them.
RAVEN_STANDARD = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]
FAST = ["--threads", "1", "--workers", "0"]


def run(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float, str]]]:
    """A 22 s recording: silence, then three clips (3.84 s) of each of three classes with silence between; the
    known segments (start, end, label)."""
    classes = make_classes(10, 0)
    parts, truth, t = [], [], 0.0
    for index in EVENT_CLASSES:
        parts.append(SILENCE)
        t += len(SILENCE) / SAMPLE_RATE
        parts += [render_clip([classes[index]], CLIP, np.random.default_rng([7, index, k])) for k in range(3)]
        truth.append((t, t + 3 * CLIP / SAMPLE_RATE, classes[index].name))
        t += 3 * CLIP / SAMPLE_RATE
    parts.append(SILENCE)
    path = tmp_path_factory.mktemp("recording") / "field" / "long.wav"
    path.parent.mkdir()
    sf.write(path, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return path, truth


def assert_matches(found: list[tuple[float, float, str]], truth: list[tuple[float, float, str]]) -> None:
    """One detection per known segment, same label, start and end within one hop."""
    assert [f[2] for f in found] == [t[2] for t in truth], found
    for (start, end, _), (t0, t1, _) in zip(found, truth, strict=True):
        assert abs(start - t0) <= HOP + 1e-6 and abs(end - t1) <= HOP + 1e-6, (found, truth)


def test_long_recording_in_csv_raven_and_audacity(recording, tmp_path: Path) -> None:
    path, truth = recording
    settings = ["--hop", HOP, "--min-score", "0.6", "--top-k", "1", "--merge-events", *FAST]
    for fmt in ("csv", "raven", "audacity"):
        code, out, err = run("analyze", "default", path.parent, "-o", tmp_path / fmt, "--format", fmt, *settings)
        assert code == 0, err
        assert "1 files done, 0 skipped, 0 failed" in out and "audio hours per hour" in out
    with (tmp_path / "csv" / "long.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "start", "end", "label", "score"]
    assert all(r["file"] == "long.wav" and 0.6 <= float(r["score"]) <= 1 for r in rows)
    assert_matches([(float(r["start"]), float(r["end"]), r["label"]) for r in rows], truth)

    lines = (tmp_path / "raven" / "long.selections.txt").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:7] == RAVEN_STANDARD and header[7:] == ["Label", "Confidence", "Begin File"]
    table = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert [int(r["Selection"]) for r in table] == list(range(1, len(table) + 1))
    assert {(r["View"], r["Channel"], float(r["Low Freq (Hz)"]), float(r["High Freq (Hz)"])) for r in table} == {
        ("Spectrogram 1", "1", 0.0, SAMPLE_RATE / 2)}  # the band up to the model's Nyquist frequency
    assert all(float(r["Begin Time (s)"]) < float(r["End Time (s)"]) and 0 <= float(r["Confidence"]) <= 1
               and r["Begin File"] == "long.wav" for r in table)
    assert_matches([(float(r["Begin Time (s)"]), float(r["End Time (s)"]), r["Label"]) for r in table], truth)

    labels = [line.split("\t") for line in (tmp_path / "audacity" / "long.labels.txt").read_text().splitlines()]
    assert all(len(fields) == 3 for fields in labels)
    assert_matches([(float(a), float(b), name) for a, b, name in labels], truth)


def test_windows_without_merging_and_the_combined_table(recording, tmp_path: Path) -> None:
    """Unmerged (the hop given as an overlap), every detection is one window of 1.28 s starting on a hop, inside a
    known segment of its label give or take a hop; the combined table holds every recording's rows under one
    header."""
    path, truth = recording
    code, out, err = run("analyze", "default", path, path.parent, "-o", tmp_path / "o", "--hop", HOP,
                         "--min-score", "0.6", "--top-k", "1", "--format", "raven", "--combined", *FAST)
    assert code == 2 and "would both be written" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run("analyze", "default", path, "-o", tmp_path / "o", "--overlap", 1.28 - HOP,
                         "--min-score", "0.6", "--top-k", "1", "--format", "raven", "--combined", *FAST)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "o" / "long.selections.txt").open(newline=""), delimiter="\t"))
    assert len(rows) > len(truth)
    for r in rows:
        start, end = float(r["Begin Time (s)"]), float(r["End Time (s)"])
        assert end - start == pytest.approx(1.28) and start / HOP == pytest.approx(round(start / HOP))
        assert any(r["Label"] == name and t0 - HOP <= start and end <= t1 + HOP for t0, t1, name in truth), r
    combined = (tmp_path / "o" / "combined-detections.selections.txt").read_text()
    assert combined == (tmp_path / "o" / "long.selections.txt").read_text()


def test_detections_by_hand() -> None:
    """Hits (window, label, score) at a 0.5 s hop of 1 s windows in a 3.2 s recording, merged or not."""
    hits = [(0, 1, 0.9), (1, 1, 0.7), (2, 1, 0.95), (4, 1, 0.6), (4, 0, 0.8), (5, 0, 0.5)]
    merged = detections(hits, ["a", "b"], hop_s=0.5, window_s=1.0, duration_s=3.2, merge=True)
    assert [(d.start, d.end, d.label, d.score) for d in merged] == [
        (0.0, 2.0, "b", 0.95), (2.0, 3.2, "a", 0.8), (2.0, 3.0, "b", 0.6)]
    plain = detections(hits, ["a", "b"], hop_s=0.5, window_s=1.0, duration_s=3.2)
    assert [(d.start, d.end) for d in plain] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (2.0, 3.0), (2.0, 3.0),
                                                 (2.5, 3.2)]
    one = "Selection\tView\tX\n1\tSpectrogram 1\ta\n2\tSpectrogram 1\tb\n"
    two = "Selection\tView\tX\n1\tSpectrogram 1\tc\n"
    assert combined_text([one, two], "raven").splitlines()[1:] == [
        "1\tSpectrogram 1\ta", "2\tSpectrogram 1\tb", "3\tSpectrogram 1\tc"]


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 recordings of 1 s in ten folders, one class each."""
    root = tmp_path_factory.mktemp("many") / "in"
    classes = make_classes(10, 0)
    for i in range(200):
        folder = root / f"site{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        clip = render_clip([classes[i % 10]], SAMPLE_RATE, np.random.default_rng([3, i]))
        sf.write(folder / f"{i:03d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    return root


def _results(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


def _workers(pid: int) -> set[int]:
    """The multiprocessing children (spawned decoding workers) of process ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pids: set[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_killed_runs_resume_to_the_uninterrupted_result(many: Path, tmp_path: Path) -> None:
    """SIGKILL at random points of a 200-file run (once with a decoding worker, which leaves with its parent),
    then a rerun: every result present once, equal byte for byte to an uninterrupted run's, no temp left."""
    settings = ["--hop", "0.5", "--min-score", "0.3", "--batch", "1", "--threads", "1"]
    code, out, err = run("analyze", "default", many, "-o", tmp_path / "whole", "--workers", "0", *settings)
    assert code == 0 and "200 files done" in out, err
    reference = _results(tmp_path / "whole")
    assert len(reference) == 200 and all(r.startswith(b"file,start,end,label,score\n") for r in reference.values())

    out_dir = tmp_path / "killed"
    command = [sys.executable, "-c", "from fastast_deploy.cli.main import main; main()", "analyze", "default",
               str(many), "-o", str(out_dir), *map(str, settings)]
    rng = random.Random(26)
    # kill points early enough that a run cannot finish between two looks at the folder (>= 70 files left)
    for target, workers in zip(sorted(rng.sample(range(10, 130), 3)), ("0", "1", "0"), strict=True):
        log = tmp_path / f"killed-{target}.log"
        with log.open("wb") as err_file:
            process = subprocess.Popen([*command, "--workers", workers], stdout=subprocess.DEVNULL, stderr=err_file,
                                       cwd=tmp_path)  # outside the source tree: the installed package
        workers_seen: set[int] = set()
        deadline = time.monotonic() + 120
        while len(list(out_dir.rglob("*.csv"))) < target and process.poll() is None:
            if workers == "1":
                workers_seen |= _workers(process.pid)
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert process.poll() is None, (f"analyze ended (exit {process.returncode}) before {target} results: "
                                        f"{log.read_text()[-2000:]}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        partial = _results(out_dir)
        assert target <= len(partial) < 200 and all(reference[name] == data for name, data in partial.items())
        assert bool(workers_seen) == (workers == "1")
        deadline = time.monotonic() + 30
        while _alive(workers_seen):
            assert time.monotonic() < deadline, "a decoding worker outlived its killed parent"
            time.sleep(0.1)
    done = subprocess.run([*command, "--workers", "0"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{200 - len(partial)} files done, {len(partial)} skipped, 0 failed" in done.stdout
    assert _results(out_dir) == reference
    assert not [p for p in out_dir.rglob("*") if p.name.endswith(".tmp")]


def test_bad_inputs_one_line_each(many: Path, tmp_path: Path, snapshot) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for site, name in (("site0", "000.wav"), ("site1", "001.wav")):
        (mixed / name).write_bytes((many / site / name).read_bytes())
    (mixed / "broken.wav").write_text("not audio")
    clip = sf.read(mixed / "000.wav", dtype="float32")[0]
    sf.write(mixed / "cut.wav", np.tile(clip, 3), SAMPLE_RATE, subtype="PCM_16")
    data = (mixed / "cut.wav").read_bytes()
    (mixed / "cut.wav").write_bytes(data[: len(data) - 12345])  # the file stops mid-window
    out = tmp_path / "out"
    code, stdout, err = run("analyze", "default", mixed, "-o", out, *FAST)
    assert code == 1 and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {mixed}/broken.wav"), err
    assert "3 files done, 0 skipped, 1 failed" in stdout
    assert sorted(p.name for p in out.glob("*.csv")) == ["000.csv", "001.csv", "cut.csv"]

    code, stdout, err = run("analyze", "default", mixed, "-o", out, *FAST)  # a rerun keeps what was done
    assert code == 1 and "0 files done, 3 skipped, 1 failed" in stdout
    code, stdout, err_workers = run("analyze", "default", mixed, "-o", tmp_path / "by_workers", "--threads", "1",
                                    "--workers", "2")  # the same, decoded in two worker processes
    assert code == 1 and err_workers == err and "3 files done, 0 skipped, 1 failed" in stdout
    assert _results(tmp_path / "by_workers") == _results(out)

    before = snapshot(tmp_path)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no audio here")
    cases = [
        (["analyze", "default", empty, "-o", tmp_path / "o2"], 2, "no audio files"),
        (["analyze", "default", mixed, "-o", mixed / "results"], 1, "lies inside"),
        (["analyze", "default", mixed, "-o", out, "--hop", "0.32"], 2, "other settings (hop_s differ)"),
        (["analyze", "default", mixed, "-o", out, "--format", "audacity", "--combined"], 2, "combined table"),
        (["analyze", "default", tmp_path / "missing.wav", "-o", out], 2, "does not exist"),
        (["analyze", "default", mixed, "-o", out, "--overlap", "1.28"], 2, "shorter than the model's window"),
        (["analyze", "default", mixed, "-o", out, "--overlap", "0.5", "--hop", "0.5"], 2, "not both"),
    ]
    for args, want, fragment in cases:
        code, stdout, err = run(*args, *FAST)
        assert code == want and fragment in err and len(err.strip().splitlines()) == 1, (args, code, err)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("empty")} == before

    pcm = (np.tile(clip, 2)[: int(2.0 * SAMPLE_RATE)] * 32767).astype("<i2").tobytes()  # stops mid-window
    result = CliRunner().invoke(cli, ["analyze", "default", "-", *FAST[:2]], input=pcm)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["start"] for line in result.stdout.splitlines()] == [0.0]
    notes = [line for line in result.stderr.splitlines() if line.startswith(("error", "warning"))]
    assert len(notes) == 1 and "0.720 s into a window" in notes[0], result.stderr  # 2 s - 1.28 s
    record = json.loads((out / ".fastast-analyze.json").read_text())
    assert record["hop_s"] == 1.28 and record["format"] == "csv"
