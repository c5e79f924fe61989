"""Issue 23, leftovers of items 14 and 20: a label CSV without `mid`, a damaged engine sidecar or commit journal,
build-engine onto a full disk, and a Hugging Face model named only by LABEL_0.. placeholders. Each ends in one
line that says what is wrong and what to do, with the right exit code, no traceback, no input changed and no file
left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.errors import FastASTError
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.pairs import JOURNAL, read_pair_sidecar, recover_commit

LABELS = ("dog", "rain", "siren")


def invoke(args: list) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output, result.exception


def assert_clean(code: int, output: str, want_code: int, *fragments: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == want_code, output
    assert len(lines) == 1 and "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(FastASTError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _wav(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny FastAST and its export, an AST data JSON naming labels by mid, and a folder per class."""
    root = tmp_path_factory.mktemp("misc-world")
    torch.manual_seed(0)
    config = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=3)
    ckpt = save_checkpoint(build_model(config, TomeConfig(make_schedule(4, config.depth))),
                           root / "tiny.safetensors", label_names=LABELS)
    code, output, _ = invoke(["export", ckpt, "-o", root / "tiny.onnx", "--no-check"])
    assert code == 0, output
    for i, name in enumerate(LABELS):
        _wav(root / "folder" / name / f"{i}.wav")
    (root / "data.json").write_text(json.dumps({"data": [
        {"wav": str(root / "folder" / n / f"{i}.wav"), "labels": f"/m/{n}"} for i, n in enumerate(LABELS)]}))
    return {"root": root, "ckpt": ckpt, "onnx": root / "tiny.onnx"}


# ---- item 14: a label CSV without a mid column, for data that names labels by mid ----------------------------

def test_label_csv_without_mid_says_so(world: dict[str, Path], tmp_path: Path, snapshot) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("index,display_name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(LABELS)))
    before = snapshot(tmp_path)
    code, output, _ = invoke(["evaluate", world["ckpt"], "--data", world["root"] / "data.json",
                              "--labels", labels])
    assert_clean(code, output, 1, "no mid column", "columns index, display_name", "index,mid,display_name")
    assert snapshot(tmp_path) == before


# ---- item 14: a damaged sidecar or commit journal says what to do ---------------------------------------------

def test_damaged_sidecar_says_what_to_do(world: dict[str, Path], tmp_path: Path, snapshot) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(world["onnx"].read_bytes())
    Path(f"{model}.json").write_text('{"format_version": 1, "backend":')
    before = snapshot(tmp_path)
    one_line_error(lambda: read_pair_sidecar(model), "model.onnx.json", "not valid JSON", "delete",
                   "write model.onnx again")
    code, output, _ = invoke(["inspect", model])
    assert_clean(code, output, 1, "delete", "model.onnx.json")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("journal", ['{"last": ".last.1.staged"', '["last"]', '{"../outside": ".last.1.staged"}',
                                     '{"last": "../../elsewhere"}', '{"last": 3}'])
def test_damaged_commit_journal_says_what_to_do(tmp_path: Path, journal: str, snapshot) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / JOURNAL).write_text(journal)
    (run / ".last.1.staged").write_bytes(b"staged")
    before = snapshot(tmp_path)
    one_line_error(lambda: recover_commit(run), str(run / JOURNAL), "delete", "resume again")
    assert snapshot(tmp_path) == before  # nothing moved, in the run or outside it


# ---- item 14: build-engine onto a full disk names the write, not the input ------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_build_engine_onto_full_disk_names_the_output(world: dict[str, Path], tmp_path: Path, snapshot,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import fastast_deploy.engines.ort_engine as ort_engine

    real = ort_engine._open_session

    def onto_full_disk(path, options, chain):  # ONNX Runtime writes the optimised model where the disk is full
        if options.optimized_model_filepath:
            options.optimized_model_filepath = "/dev/full"
        return real(path, options, chain)

    monkeypatch.setattr(ort_engine, "_open_session", onto_full_disk)
    source = tmp_path / "in" / "tiny.onnx"
    source.parent.mkdir()
    for suffix in ("", ".json"):
        Path(f"{source}{suffix}").write_bytes(Path(f"{world['onnx']}{suffix}").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    code, output, _ = invoke(["build-engine", source, "-o", out / "tiny.ort.onnx", "--backend", "onnxruntime"])
    assert_clean(code, output, 1, f"cannot write the optimised model {out / 'tiny.ort.onnx'}", "full disk")
    assert "INVALID_PROTOBUF" not in output and "cannot open" not in output
    assert snapshot(tmp_path) == before


# ---- item 20: a Hugging Face model named only by LABEL_0.. placeholders -----------------------------------------

@pytest.fixture(scope="module")
def placeholder_model(make_hf_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf-placeholders") / "model"
    names = {i: f"LABEL_{i}" for i in range(len(LABELS))}
    make_hf_model(id2label=names, label2id={n: i for i, n in names.items()}).save_pretrained(folder)
    return folder


def test_placeholder_labels_say_how_to_name_them(world: dict[str, Path], placeholder_model: Path, snapshot) -> None:
    before = snapshot(world["root"] / "folder")
    code, output, _ = invoke(["evaluate", placeholder_model, "--data", world["root"] / "folder"])
    assert_clean(code, output, 1, "LABEL_0..LABEL_2", "placeholders", "--labels", "the data must name the same")
    assert "trained with" not in output
    assert snapshot(world["root"] / "folder") == before


def test_placeholder_labels_with_a_label_csv_match_by_index(world: dict[str, Path], placeholder_model: Path,
                                                            tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{n},{n}\n" for i, n in enumerate(LABELS)))
    code, output, _ = invoke(["evaluate", placeholder_model, "--data", world["root"] / "folder", "--labels", labels,
                              "--json"])
    assert code == 0, output
    report = json.loads(output)
    assert report["clips"] == 3 and [c["label"] for c in report["per_class"]] == list(LABELS)
    short = tmp_path / "two.csv"
    short.write_text("index,mid,display_name\n0,/m/dog,dog\n1,/m/rain,rain\n")
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"data": [{"wav": str(world["root"] / "folder" / n / f"{i}.wav"), "labels": f"/m/{n}"}
                                        for i, n in enumerate(LABELS[:2])]}))
    code, output, _ = invoke(["evaluate", placeholder_model, "--data", two, "--labels", short])
    assert code == 1 and "the label CSV has 2 labels" in output, output
