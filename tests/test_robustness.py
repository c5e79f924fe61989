"""Careless and hostile input over every command: a clear one-line error and a non-zero exit, never a traceback;
no input (or earlier output) changed; no new file left. Then faults: a writer killed at each commit step, and two
writers to one output, never leave an engine or model beside a sidecar from another write."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.contract import sidecar_path
from fastast_deploy.engines import load_engine
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.pairs import SHA_KEY, pending_path

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=3)
LABELS = ("dog", "rain", "siren")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint, its export, an ONNX Runtime engine, audio, a label CSV and a Triton repository."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(4, TINY.depth)))
    ckpt = save_checkpoint(model, root / "tiny.safetensors", label_names=LABELS)
    onnx = root / "tiny.onnx"
    engine = root / "tiny.ort.onnx"
    for args in (("export", str(ckpt), "-o", str(onnx)), ("build-engine", str(onnx), "-o", str(engine),
                                                          "--backend", "onnxruntime")):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
    wav = root / "tone.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000)
    nan_wav = root / "nan.wav"
    data = np.zeros(8000, np.float32)
    data[100] = np.nan
    sf.write(nan_wav, data, 16000, subtype="FLOAT")
    labels = root / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/m/0,dog\n1,/m/1,rain\n2,/m/2,siren\n")
    latin = root / "latin1.csv"
    latin.write_bytes("index,mid,display_name\n0,/m/0,caf\xe9\n1,/m/1,rain\n2,/m/2,siren\n".encode("latin-1"))
    nameless = root / "nameless.csv"
    nameless.write_text("index,mid,display_name\n0,/m/0\n1,/m/1,rain\n2,/m/2,siren\n")
    tensors = load_file(ckpt)
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    nan_ckpt = root / "nan.safetensors"
    save_file(tensors, nan_ckpt, metadata=meta)
    evil = root / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": _Payload(str(root / "pwned"))}, evil)
    return {"root": root, "evil": evil, "ckpt": ckpt, "onnx": onnx, "engine": engine, "wav": wav, "nan_wav": nan_wav,
            "labels": labels, "latin": latin, "nameless": nameless, "nan_ckpt": nan_ckpt}


class _Payload:
    """A pickle that would run a command when unpickled as code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))




def invoke(args: list[str]) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output, result.exception


# (id, argv with {names} from the world, fragment of the one-line error)
BAD = [
    ("export onto its checkpoint", ["export", "{ckpt}", "-o", "{ckpt}"], "would destroy an input"),
    ("export onto its label csv", ["export", "{ckpt}", "-o", "{labels}", "--labels", "{labels}"], "would destroy"),
    ("a pickle that runs code", ["export", "{evil}", "-o", "{root}/evil.onnx"], "could run code"),
    ("export of NaN weights", ["export", "{nan_ckpt}", "-o", "{root}/nan.onnx"], "NaN or inf"),
    ("export with absurd frames", ["export", "{ckpt}", "-o", "{root}/big.onnx", "--frames", "1000000000"],
     "frames"),
    ("build-engine onto its model", ["build-engine", "{onnx}", "-o", "{onnx}", "--backend", "onnxruntime"],
     "would destroy an input"),
    ("build-engine onto the model's sidecar", ["build-engine", "{onnx}", "-o", "{root}/tiny.onnx.json",
                                               "--backend", "onnxruntime"], "would destroy an input"),
    ("verify report onto the engine", ["verify", "{engine}", "--reference", "{ckpt}", "--report", "{engine}",
                                       "--no-speed"], "would destroy an input"),
    ("verify report onto the engine sidecar", ["verify", "{engine}", "--reference", "{ckpt}", "--report",
                                               "{engine}.json", "--no-speed"], "would destroy an input"),
    ("verify two outputs to one file", ["verify", "{engine}", "--reference", "{ckpt}", "--report",
                                        "{root}/r.json", "--save-outputs", "{root}/r.json", "--no-speed"],
     "name the same file"),
    ("triton repo replacing the engine", ["triton", "{engine}", "-o", "{root}/..", "--name", "{root_name}",
                                          "--force"], "lies inside"),
    ("bench with missing data", ["bench", "{ckpt}", "--tome-r", "0,4", "--data", "{root}/absent",
                                 "-o", "{root}/bench"], "--data"),
    ("quickstart on an absent backend", ["quickstart", "-o", "{root}/qs", "--backend", "tensorrt"], "TensorRT"),
    ("a latin-1 label csv", ["export", "{ckpt}", "-o", "{root}/l1.onnx", "--labels", "{latin}"],
     "UTF-8"),
    ("label row without a name", ["export", "{ckpt}", "-o", "{root}/nl.onnx", "--labels", "{nameless}"],
     "display_name"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_fails_cleanly_and_changes_nothing(world: dict[str, Path], case: tuple, snapshot) -> None:
    _, argv, fragment = case
    names = {k: str(v) for k, v in world.items()}
    names.update(root_name=world["root"].name)
    args = [a.format(**names) for a in argv]
    before = snapshot(world["root"])
    code, output, exception = invoke(args)
    assert exception is None or isinstance(exception, SystemExit), repr(exception)  # no traceback
    assert code != 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and "Traceback" not in output, output
    assert fragment in output, output
    assert snapshot(world["root"]) == before  # no input changed, no file left
    assert not (world["root"] / "pwned").exists()  # and no pickle payload ran


def test_predict_json_stays_valid_with_nan_audio(world: dict[str, Path], snapshot) -> None:
    before = snapshot(world["root"])
    code, output, exception = invoke(["predict", str(world["engine"]), str(world["nan_wav"]), str(world["wav"]),
                                      "--json"])
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    assert code == 1  # one file failed
    report = json.loads(output[output.index("{"):])  # strict JSON: NaN would not parse as a number here
    json.dumps(report, allow_nan=False)
    by_path = {f["path"]: f for f in report["files"]}
    assert "NaN or inf" in by_path[str(world["nan_wav"])]["error"]
    assert by_path[str(world["wav"])]["top_k"]
    assert snapshot(world["root"]) == before


# ---- faults while committing a pair ---------------------------------------------------------------------------

KILLER = """
import os, sys
import fastast_deploy.pairs as pairs
step = sys.argv[1]
def hook(name):
    if name == step:
        os._exit(9)
pairs._after_step = hook
from fastast_deploy.cli.main import main
sys.argv = ["fastast-deploy", *sys.argv[2:]]
main()
"""


def run_killed(step: str, args: list[str], cwd: Path) -> int:
    return subprocess.run([sys.executable, "-c", KILLER, step, *args], cwd=cwd, capture_output=True,
                          timeout=300).returncode


def usable(path: Path, opener: Callable[[Path], object]) -> str:
    """The file's sha256 when it and its sidecar agree and it opens; fails otherwise."""
    opener(path)
    side = json.loads(sidecar_path(path).read_text())
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    assert side[SHA_KEY] == found
    return found


@pytest.mark.parametrize("step", ["pending", "file", "sidecar"])
def test_build_engine_killed_at_each_commit_step_leaves_a_usable_pair(world: dict[str, Path], tmp_path: Path,
                                                                      step: str) -> None:
    out = tmp_path / "e.ort.onnx"
    base = ["build-engine", str(world["onnx"]), "-o", str(out), "--backend", "onnxruntime"]
    assert invoke(base)[0] == 0
    old = usable(out, load_engine)
    code = run_killed(step, [*base, "--optimization", "basic"], tmp_path)
    assert code == 9
    with load_engine(out) as engine:  # reading finishes a commit cut between the file and its sidecar
        assert engine.infer({"fbank": np.zeros((1, 64, 128), np.float32)})["logits"].shape == (1, 3)
    now = usable(out, load_engine)
    assert (now == old) == (step == "pending")  # before the file moved: old pair; after: the new one
    assert not pending_path(out).exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    invoke(base)  # the next write of that output cleans what the killed writer left
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name in leftovers]


@pytest.mark.parametrize("step", ["pending", "file"])
def test_export_killed_mid_commit_leaves_a_usable_pair(world: dict[str, Path], tmp_path: Path, step: str) -> None:
    out = tmp_path / "m.onnx"
    assert invoke(["export", str(world["ckpt"]), "-o", str(out), "--no-check"])[0] == 0
    old = usable(out, load_engine)
    assert run_killed(step, ["export", str(world["ckpt"]), "-o", str(out), "--no-check", "--tome-r", "0"],
                      tmp_path) == 9
    load_engine(out).close()
    from fastast_deploy.pairs import read_pair_sidecar

    side = read_pair_sidecar(out)
    assert side is not None and side[SHA_KEY] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (side[SHA_KEY] == old) == (step == "pending")


def test_two_writers_to_one_output_never_leave_a_mismatched_pair(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "race.ort.onnx"
    exe = Path(sys.executable).with_name("fastast-deploy")
    command = [str(exe), "build-engine", str(world["onnx"]), "-o", str(out), "--backend", "onnxruntime"]
    for round_ in range(3):
        writers = [subprocess.Popen([*command, "--optimization", level], cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for level in ("basic", "extended")]
        assert [w.wait(timeout=300) for w in writers] == [0, 0], round_
        usable(out, load_engine)
        assert json.loads(sidecar_path(out).read_text())["onnxruntime"]["optimization_level"] in ("basic",
                                                                                                  "extended")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, sidecar_path(out).name]
