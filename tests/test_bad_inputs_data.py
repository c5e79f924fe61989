"""Issue 23, memory / audio input / output folder cases (items 1, 9, 10, 17, 19), each a command run in its own
process (`run_measured`): the exit code, at most 3 lines and no traceback where it fails, inputs unchanged and no
file or temp left, and for the long / low-rate / huge-batch cases a peak resident memory under 1 GiB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=3)
LABELS = ("dog", "rain", "siren")
GIB_MIB = 1024


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _long_wav(path: Path, minutes: float, rate: int = 16000) -> Path:
    """A long int16 wav written in one-minute blocks (never whole in memory)."""
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        block = _tone(60.0, rate)
        for _ in range(int(minutes)):
            f.write(block)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint and its ONNX Runtime engine (outside the data folder), a label CSV, a folder per class
    with a short clip each, a 10-minute wav and a 40 KB wav at 1 Hz (5.5 hours at 16 kHz)."""
    models = tmp_path_factory.mktemp("models")
    root = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(4, TINY.depth)))
    ckpt = save_checkpoint(model, models / "tiny.safetensors", label_names=LABELS,
                           feature_config=FeatureConfig(frames=64), extra={"task": "singlelabel"})
    onnx, engine = models / "tiny.onnx", models / "tiny.ort.onnx"
    for args in (["export", str(ckpt), "-o", str(onnx)],
                 ["build-engine", str(onnx), "-o", str(engine), "--backend", "onnxruntime"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    (root / "labels.csv").write_text("index,mid,display_name\n" + "".join(
        f"{i},/m/{i},{n}\n" for i, n in enumerate(LABELS)))
    classes = root / "classes"
    for i, name in enumerate(LABELS):
        (classes / name).mkdir(parents=True)
        sf.write(classes / name / "a.wav", _tone(1.0, freq=300 + 400 * i), 16000)
    long = _long_wav(root / "long.wav", 10)  # the whole-file fbank of it peaks at 1.27 GB (3.4 GB at 30 minutes)
    slow = root / "slow"
    slow.mkdir()
    sf.write(slow / "1hz.wav", (0.3 * np.sin(np.arange(20000) / 3)).astype(np.float32), 1, subtype="PCM_16")
    return {"models": models, "root": root, "ckpt": ckpt, "engine": engine, "labels": root / "labels.csv",
            "classes": classes, "long": long, "slow": slow}


def _data_json(path: Path, rows: list[tuple[Path, str]]) -> Path:
    import json

    path.write_text(json.dumps({"data": [{"wav": str(w), "labels": label} for w, label in rows]}))
    return path


# ---- item 1: memory bounded by a window, not by the file -------------------------------------------------------

def test_evaluate_of_a_10_minute_wav_stays_under_1_gib(world: dict, run_measured, snapshot, tmp_path: Path) -> None:
    data = _data_json(tmp_path / "long.json", [(world["long"], "/m/0")])
    before = snapshot(world["root"])
    out = run_measured(["evaluate", world["engine"], "--data", data, "--labels", world["labels"]], timeout=120)
    assert out.code == 0, out.output
    assert out.peak_mib < GIB_MIB, out.peak_mib
    assert snapshot(world["root"]) == before


def test_int8_calibration_on_a_1_hz_wav_reads_one_window(world: dict, run_measured, snapshot,
                                                         tmp_path: Path) -> None:
    before = snapshot(world["root"])
    out = run_measured(["export", world["ckpt"], "-o", tmp_path / "int8.onnx", "--precision", "int8", "--calib",
                        world["slow"]], timeout=120)
    assert out.code == 0, out.output
    assert out.peak_mib < GIB_MIB, out.peak_mib
    assert snapshot(world["root"]) == before


def test_verify_inputs_of_a_1_hz_wav_read_one_window(world: dict, run_measured, snapshot) -> None:
    before = snapshot(world["root"])
    out = run_measured(["verify", world["engine"], "--reference", world["ckpt"], "--inputs", world["slow"],
                        "--no-speed"], timeout=120)
    assert out.code in (0, 1) and "Traceback" not in out.output, out.output  # a verdict, not a crash
    assert out.peak_mib < GIB_MIB, out.peak_mib
    assert snapshot(world["root"]) == before


def test_training_features_of_a_1_hz_wav_read_one_window(world: dict, tmp_path: Path) -> None:
    """Training's fbank cache (`datasets.fbank_cache`) takes the first window of each clip, streamed: measured
    in a process of its own."""
    code = ("import resource, sys\nfrom pathlib import Path\nfrom fastast_deploy.audio.datasets import fbank_cache\n"
            "from fastast_deploy.model.config import FeatureConfig\n"
            "x = fbank_cache([Path(sys.argv[1])], FeatureConfig(frames=1024))\n"
            "assert x.shape == (1, 1024, 128) and bool(x.isfinite().all())\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code, str(world["slow"] / "1hz.wav")], capture_output=True,
                          text=True, timeout=120, cwd=world["slow"])  # outside the source tree: the install
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < GIB_MIB


def test_bench_batch_is_bounded_where_it_is_parsed(world: dict, run_measured, tmp_path: Path) -> None:
    out = run_measured(["bench", world["ckpt"], "--batch", "100000", "-o", tmp_path / "b"], timeout=60)
    out.assert_clean_failure(2, "--batch")
    assert out.peak_mib < GIB_MIB
    assert not (tmp_path / "b").exists()


# ---- item 9: no file replaced that the command did not write --------------------------------------------------

@pytest.mark.parametrize(("command", "name"), [("bench", "r0.onnx"), ("bench", "bench.json"),
                                               ("quickstart", "verify.json"), ("quickstart", "clips/x/00.wav")])
def test_outputs_refuse_to_replace_a_users_file(world: dict, run_measured, snapshot, tmp_path: Path,
                                                command: str, name: str) -> None:
    out_dir = tmp_path / "out"
    (out_dir / name).parent.mkdir(parents=True)
    (out_dir / name).write_bytes(b"the user's own file")
    args = (["bench", world["ckpt"], "--tome-r", "0,4"] if command == "bench" else
            ["quickstart", "--source", world["ckpt"], "--backend", "onnxruntime"])
    before = snapshot(tmp_path)
    out = run_measured([*args, "-o", out_dir], timeout=60)
    out.assert_clean_failure(1, "--force")
    assert name in out.output
    assert snapshot(tmp_path) == before


def test_a_command_may_replace_what_it_wrote_but_not_an_edit_of_it(tmp_path: Path) -> None:
    from fastast_deploy.errors import FastASTError
    from fastast_deploy.files import check_replaceable, record_written

    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(FastASTError, match="pass --force"):
        check_replaceable(tmp_path, ["bench.json"], "bench")
    check_replaceable(tmp_path, ["bench.json"], "bench", force=True)
    record_written(tmp_path, ["bench.json"], "bench")
    check_replaceable(tmp_path, ["bench.json", "bench.png"], "bench")  # its own, unchanged: fine
    with pytest.raises(FastASTError, match="quickstart would replace"):
        check_replaceable(tmp_path, ["bench.json"], "quickstart")  # another command's file
    (tmp_path / "bench.json").write_text('{"edited": true}')
    with pytest.raises(FastASTError, match="1 file"):
        check_replaceable(tmp_path, ["bench.json"], "bench")


# ---- item 10: file names that are not UTF-8 -------------------------------------------------------------------

def test_predict_reads_and_prints_a_wav_whose_name_is_not_utf8(world: dict, run_measured, tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    name = os.path.join(folder, b"caf\xe9.wav")  # Latin-1, not UTF-8
    sf.write(name, _tone(1.0), 16000)
    assert os.path.exists(name)
    out = run_measured(["predict", world["engine"], os.fsdecode(name)], timeout=60)
    assert out.code == 0, out.output
    assert "caf\\xe9.wav (2 windows)" in out.output and "Traceback" not in out.output


def test_verify_reads_and_names_wavs_whose_names_are_not_utf8(world: dict, run_measured, tmp_path: Path) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"inputs")
    os.mkdir(folder)
    sf.write(os.path.join(folder, b"caf\xe9.wav"), _tone(0.5), 16000)
    with open(os.path.join(folder, b"na\xefve.wav"), "wb") as f:
        f.write(b"RIFF not really a wav")
    args = ["verify", world["engine"], "--reference", world["ckpt"], "--inputs", os.fsdecode(folder), "--no-speed"]
    failed = run_measured(args, timeout=120)  # item 19: an unreadable input fails verify, as it fails evaluate
    assert failed.code == 1, failed.output
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert len(lines) == 2 and "Traceback" not in failed.output, failed.output
    assert lines[0].startswith("error: ") and "na\\xefve.wav" in lines[0], failed.output
    assert "1 of 2 clips could not be read" in lines[1] and "--skip-unreadable" in lines[1], failed.output
    report = tmp_path / "report.json"
    passed = run_measured([*args, "--skip-unreadable", "--report", report], timeout=120)
    assert passed.code == 0, passed.output
    assert "warning: " in passed.output and "1 clips from" in passed.output and "1 skipped" in passed.output
    assert [Path(s["file"]).name for s in json.loads(report.read_text())["inputs"]["skipped"]] == ["na\\xefve.wav"]


# ---- item 17: no empty or partial -o folder; inputs checked before the slow work --------------------------------

@pytest.mark.parametrize(("case", "extra", "fragment"), [
    ("bad source", ["{root}/absent.safetensors"], "absent.safetensors"),
    ("bad --frames", ["{ckpt}", "--frames", "8"], "frames"),
    ("labels that do not match", ["{ckpt}", "--data", "{data}", "--labels", "{other}"], "labels"),
])
def test_bench_checks_its_inputs_before_making_the_folder(world: dict, run_measured, snapshot, tmp_path: Path,
                                                          case: str, extra: list[str], fragment: str) -> None:
    other = tmp_path / "other.csv"
    other.write_text("index,mid,display_name\n0,/m/0,cat\n1,/m/1,rain\n2,/m/2,siren\n")
    data = _data_json(tmp_path / "data.json", [(world["classes"] / "dog" / "a.wav", "/m/0")])
    names = {"root": str(world["root"]), "ckpt": str(world["ckpt"]), "data": str(data), "other": str(other)}
    before = snapshot(tmp_path)
    started = time.perf_counter()
    out = run_measured(["bench", *[a.format(**names) for a in extra], "--tome-r", "0,4", "-o", tmp_path / "b"],
                       timeout=60)
    assert out.code != 0
    assert 1 <= len(out.lines) <= 3 and "Traceback" not in out.output and fragment in out.output, out.output
    assert time.perf_counter() - started < 20  # before any export
    assert not (tmp_path / "b").exists()
    assert snapshot(tmp_path) == before


def _sigint_as_a_terminal_gives_it() -> None:
    """In the child before exec: SIGINT delivered and at its default, as a shell starts a command, whatever the
    test process (which inherits from the runner) holds blocked or ignored."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_bench_interrupted_leaves_no_folder(world: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "b"
    cli_code = "import sys\nfrom fastast_deploy.cli.main import main\nsys.argv[0] = 'fastast-deploy'\nmain()"
    proc = subprocess.Popen([sys.executable, "-c", cli_code, "bench", str(world["ckpt"]),
                             "--tome-r", "0,4,8", "--rounds", "1000000", "-o", str(out_dir)],  # still running
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,  # the installed package
                            preexec_fn=_sigint_as_a_terminal_gives_it)
    deadline = time.monotonic() + 60
    while not out_dir.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert out_dir.exists(), proc.communicate()[0]
    time.sleep(0.5)  # into the slow part, whatever the machine's load
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    try:  # seconds here; a generous bound for a loaded machine, not a speed check
        output = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:  # a bench that ignored its Ctrl-C would otherwise run its million rounds on
            proc.kill()
            proc.wait()
    # 130 wherever the Ctrl-C lands, inside torch.onnx.export too (which reports it as a failed export)
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert not out_dir.exists()


# ---- item 19: one policy for unreadable files ------------------------------------------------------------------

def test_evaluate_names_each_unreadable_clip_and_fails_unless_skipped(world: dict, run_measured, snapshot,
                                                                      tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    good = world["classes"] / "dog" / "a.wav"
    data = _data_json(tmp_path / "data.json", [(good, "/m/0"), (broken, "/m/1"), (good, "/m/0")])
    before = snapshot(tmp_path)
    args = ["evaluate", world["engine"], "--data", data, "--labels", world["labels"]]
    out = run_measured(args, timeout=60)
    out.assert_clean_failure(1, "--skip-unreadable")
    assert f"error: {broken}: " in out.output and "1 of 3 clips could not be read" in out.output
    skipped = run_measured([*args, "--skip-unreadable", "--json"], timeout=60)
    assert skipped.code == 0, skipped.output
    assert f"warning: {broken}: " in skipped.output and '"clips": 2' in skipped.output
    assert snapshot(tmp_path) == before
