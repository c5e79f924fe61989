"""Issue 23, the export / engine / verify / inspect / triton cases: each bad input ends in one line with the right
exit code (2 usage, 1 failure, 130 Ctrl-C), no traceback, no input changed and no file left; option values are
bounded where they are parsed, so huge values fail before anything is allocated (peak memory measured)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.contract import MAX_BATCH, MAX_THREADS
from fastast_deploy.metrics import fbank_like
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=3)
LABELS = ("dog", "rain", "siren")


def invoke(args: list[str]) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output, result.exception




def _save_tiny(path: Path, num_labels: int = 3) -> Path:
    torch.manual_seed(0)
    config = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=num_labels)
    model = build_model(config, TomeConfig(make_schedule(4, config.depth)))
    return save_checkpoint(model, path, label_names=LABELS if num_labels == 3 else None)


def _sidecar_variant(engine: Path, name: str, change) -> Path:
    """A copy of ``engine`` whose sidecar is edited by ``change(data)``."""
    copy = engine.with_name(name)
    shutil.copy(engine, copy)
    data = json.loads(Path(f"{engine}.json").read_text())
    data["engine"]["file"] = copy.name
    change(data)
    Path(f"{copy}.json").write_text(json.dumps(data))
    return copy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines-world")
    ckpt = _save_tiny(root / "tiny.safetensors")
    onnx_path, engine = root / "tiny.onnx", root / "tiny.ort.onnx"
    five = _save_tiny(root / "five.safetensors", num_labels=5)
    r0 = ["--tome-r", "0", "--no-check"]  # item 11: r = 0 baselines, right and wrong
    for args in (["export", ckpt, "-o", onnx_path], ["build-engine", onnx_path, "-o", engine, "--backend",
                                                      "onnxruntime"], ["export", five, "-o", root / "five.onnx"],
                 ["export", ckpt, "-o", root / "r0.onnx", *r0], ["export", five, "-o", root / "five-r0.onnx", *r0],
                 ["export", ckpt, "-o", root / "r0-fp16.onnx", "--precision", "fp16", *r0],
                 ["build-engine", root / "r0.onnx", "-o", root / "r0.ort.onnx", "--backend", "onnxruntime"]):
        code, output, _ = invoke(args)
        assert code == 0, output
    # (batch, 5) logits under the metadata of a 3-label export
    wrong = onnx.load(str(root / "five.onnx"))
    del wrong.metadata_props[:]
    wrong.metadata_props.extend(onnx.load(str(onnx_path), load_external_data=False).metadata_props)
    onnx.save(wrong, str(root / "wrong.onnx"))
    for name in ("five.onnx", "five.onnx.json", "five.safetensors"):
        (root / name).unlink()

    def as_trt(data: dict) -> None:
        data.pop("onnxruntime")
        data.update(backend="tensorrt", tensorrt={"version": "10.13.0", "gpu": {"name": "X", "compute_capability":
                                                                                 "9.0"}})

    plan = _sidecar_variant(engine, "untyped.plan", as_trt)
    r0_plan = _sidecar_variant(root / "r0.ort.onnx", "r0.plan", as_trt)
    bad_batch = _sidecar_variant(engine, "badbatch.ort.onnx", lambda d: d.update(batch={"min": 8, "opt": 1,
                                                                                          "max": 4}))
    # a checkpoint whose feature settings disagree with its model
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    header = json.loads(meta["fastast_deploy"])
    header["features"]["num_mel_bins"] = 64
    save_file(load_file(ckpt), root / "melbad.safetensors", metadata={**meta, "fastast_deploy": json.dumps(header)})
    # damaged Polygraphy files
    (root / "notrr.json").write_text('{"lst": 5}')
    (root / "pickled.json").write_text('[{"fbank": {"array": "garbage", "polygraphy_class": "ndarray"}}]')
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult

    mixed = RunResults()
    mixed.append(("x", [IterationResult({"logits": np.zeros(s, np.float32)}, runner_name="x")
                        for s in ((2, 3), (2, 4))]))
    mixed.save(str(root / "mixed.json"))
    clips = root / "clips"
    clips.mkdir()
    for i in range(2):
        sf.write(clips / f"ok{i}.wav", (0.1 * np.random.default_rng(i).standard_normal(16000)).astype(np.float32),
                 16000)
    for name in ("bad1.wav", "bad2.wav", "bad3.wav", "bad4.wav"):
        (clips / name).write_text("not audio")
    one_bad = root / "one-bad"  # item 19: one unreadable clip among readable ones
    one_bad.mkdir()
    shutil.copy(clips / "ok0.wav", one_bad / "ok.wav")
    (one_bad / "bad.wav").write_text("not audio")
    np.savez(root / "calib.npz", fbank=fbank_like(8, 64, 128, 1))
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path, "engine": engine, "wrong": root / "wrong.onnx",
            "plan": plan, "bad_batch": bad_batch, "melbad": root / "melbad.safetensors", "notrr": root / "notrr.json",
            "pickled": root / "pickled.json", "mixed": root / "mixed.json", "clips": clips, "one_bad": one_bad,
            "calib": root / "calib.npz", "r0": root / "r0.onnx", "r0_ort": root / "r0.ort.onnx",
            "r0_fp16": root / "r0-fp16.onnx", "five_r0": root / "five-r0.onnx", "r0_plan": r0_plan}


VERIFY = ["verify", "{engine}", "--reference", "{ckpt}"]
# (id, argv, exit code, fragment): issue 23's item number first
BAD = [
    ("1 export --batch huge", ["export", "{ckpt}", "-o", "{root}/big.onnx", "--batch", "100000"], 2, str(MAX_BATCH)),
    ("1 verify --batch huge", [*VERIFY, "--batch", "100000", "--no-speed"], 2, "--batch"),
    ("1 verify --speed-batches huge", [*VERIFY, "--speed-batches", "1,100000", "--baseline", "none"], 2,
     "--speed-batches takes values from 1 to"),
    ("4 build-engine --threads huge", ["build-engine", "{onnx}", "-o", "{root}/t.ort.onnx", "--backend",
                                       "onnxruntime", "--threads", "100000"], 2, str(MAX_THREADS)),
    ("4 predict --threads huge", ["predict", "{engine}", "{clips}", "--threads", "100000"], 2, str(MAX_THREADS)),
    ("4 evaluate --threads huge", ["evaluate", "{ckpt}", "--data", "{root}", "--threads", "100000"], 2,
     str(MAX_THREADS)),
    ("4 build-engine --max-batch huge", ["build-engine", "{onnx}", "-o", "{root}/t.ort.onnx", "--backend",
                                         "onnxruntime", "--max-batch", "100000"], 2, "--max-batch"),
    ("8 verify --atol nan", [*VERIFY, "--atol", "nan", "--no-speed"], 2, "--atol"),
    ("8 verify --min-cosine nan", [*VERIFY, "--min-cosine", "nan", "--no-speed"], 2, "--min-cosine"),
    ("8 verify --rtol inf", [*VERIFY, "--rtol", "inf", "--no-speed"], 2, "--rtol"),
    ("11 verify --baseline at r = 4", [*VERIFY, "--baseline", "{onnx}", "--speed-batches", "1"], 2,
     "its r per block is [4, 4], a baseline's is 0 in every block"),
    ("11 verify --baseline of another precision", [*VERIFY, "--baseline", "{r0_fp16}", "--speed-batches", "1"], 2,
     "its precision is fp16, the engine's fp32"),
    ("11 verify --baseline of another model", [*VERIFY, "--baseline", "{five_r0}", "--speed-batches", "1"], 2,
     "its model num_labels is 5, the engine's 3"),
    ("11 verify --baseline of another backend", [*VERIFY, "--baseline", "{r0_plan}", "--speed-batches", "1"], 2,
     "its backend is tensorrt, the engine's onnxruntime"),
    ("11 verify --baseline missing", [*VERIFY, "--baseline", "{root}/none.onnx", "--speed-batches", "1"], 2,
     "--baseline auto"),
    ("11 verify --baseline not an engine", [*VERIFY, "--baseline", "{clips}/ok0.wav", "--speed-batches", "1"], 2,
     "--baseline"),
    ("12 build-engine of a wrong output", ["build-engine", "{wrong}", "-o", "{root}/w.ort.onnx", "--backend",
                                           "onnxruntime"], 1, "metadata's 3 labels"),
    ("12 inspect of a wrong output", ["inspect", "{wrong}"], 1, "output 'logits' is (batch, 5)"),
    ("12 triton of a wrong output", ["triton", "{wrong}", "-o", "{root}/repo"], 1, "output 'logits' is (batch, 5)"),
    ("13 verify of a RunResults of mixed shapes", ["verify", "{engine}", "--reference", "{mixed}", "--no-speed"], 2,
     "do not share one (batch, ...) shape"),
    ("13 verify of a JSON that is no RunResults", ["verify", "{engine}", "--reference", "{notrr}", "--no-speed"], 2,
     "is not a Polygraphy RunResults file"),
    ("14 corrupt Polygraphy inputs", [*VERIFY, "--inputs", "{pickled}", "--no-speed"], 2,
     "pickled data is never loaded"),
    ("16 triton --site-packages of the platform backend", ["triton", "{engine}", "-o", "{root}/repo",
                                                           "--site-packages", "/nonexistent"], 2,
     "--backend python only"),
    ("16 triton --site-packages missing", ["triton", "{engine}", "-o", "{root}/repo", "--backend", "python",
                                           "--site-packages", "/nonexistent"], 2, "/nonexistent: no such folder"),
    ("16 verify --no-speed with --baseline", [*VERIFY, "--no-speed", "--baseline", "{r0}"], 2,
     "--baseline sets the speed section, which --no-speed skips"),
    ("16 verify --no-speed with speed options", [*VERIFY, "--no-speed", "--speed-batches", "4", "--iterations", "3"],
     2, "--speed-batches, --iterations set the speed section"),
    ("19 verify of an unreadable input", [*VERIFY, "--inputs", "{one_bad}", "--no-speed"], 1,
     "1 of 2 clips could not be read (first: "),
    ("16 verify --save-inputs x.txt", [*VERIFY, "--save-inputs", "{root}/x.txt", "--no-speed"], 2,
     "name an .npz or a .json"),
    ("16 verify --save-outputs without suffix", [*VERIFY, "--save-outputs", "{root}/x", "--no-speed"], 2,
     "name an .npz or a .json"),
    ("18 predict of an invalid batch range", ["predict", "{bad_batch}", "{clips}/ok0.wav"], 1, "min <= opt <= max"),
    ("18 inspect of an invalid batch range", ["inspect", "{bad_batch}"], 1, "min <= opt <= max"),
    ("18 export of inconsistent feature settings", ["export", "{melbad}", "-o", "{root}/m.onnx"], 1,
     "feature settings give 64 mel bins, its model takes 128"),
    ("20 build-engine without TensorRT", ["build-engine", "{onnx}", "-o", "{root}/t.plan"], 1,
     "--backend onnxruntime"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_fails_cleanly(world: dict[str, Path], case: tuple, snapshot) -> None:
    _, argv, want, fragment = case
    if "without TensorRT" in case[0]:  # the row needs a machine without tensorrt
        try:
            import tensorrt  # noqa: F401
            pytest.skip("TensorRT is installed here")
        except (ImportError, OSError):
            pass
    names = {k: str(v) for k, v in world.items()}
    before = snapshot(world["root"])
    code, output, exception = invoke([a.format(**names) for a in argv])
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == want, output
    assert 1 <= len(lines) <= 3 and "Traceback" not in output, output
    assert fragment in output, output
    assert snapshot(world["root"]) == before  # no input changed, no file or temp left


HUGE = [  # item 1: refused where parsed, before anything is allocated
    ("export --batch", ["export", "{ckpt}", "-o", "{root}/big.onnx", "--batch", "100000"]),
    ("verify --num", [*VERIFY, "--num", "100000", "--no-speed"]),
    ("verify --num 1e8", [*VERIFY, "--num", "100000000", "--no-speed"]),
    ("verify --speed-batches", [*VERIFY, "--speed-batches", "100000", "--baseline", "none"]),
]


@pytest.mark.parametrize("case", HUGE, ids=[c[0] for c in HUGE])
def test_huge_values_fail_before_allocating(world: dict[str, Path], run_measured, case: tuple, snapshot) -> None:
    names = {k: str(v) for k, v in world.items()}
    before = snapshot(world["root"])
    outcome = run_measured([a.format(**names) for a in case[1]], timeout=120)
    outcome.assert_clean_failure(2)
    assert outcome.peak_mib < 1024, outcome.peak_mib
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("baseline", ["r0", "r0_ort"])
def test_verify_times_against_a_matching_baseline(world: dict[str, Path], baseline: str, snapshot) -> None:
    from fastast_deploy.model.flops import model_flops  # item 11: the ratio from the baseline's own schedule

    before = snapshot(world["root"])
    code, output, _ = invoke(["verify", world["engine"], "--reference", world["ckpt"], "--baseline", world[baseline],
                              "--speed-batches", "1", "--warmup", "0", "--iterations", "2"])
    assert code == 0, output
    ratio = model_flops(TINY, [0, 0]) / model_flops(TINY, [4, 4])
    assert f"FLOP ratio {ratio:.2f}x; baseline: {world[baseline]})" in output, output
    assert snapshot(world["root"]) == before


def test_inspect_of_a_plan_sidecar_without_typing_fields(world: dict[str, Path]) -> None:  # item 13
    code, output, exception = invoke(["inspect", world["plan"]])
    assert code == 0 and exception is None, output
    assert "typing not recorded, tf32 not recorded" in output


def test_verify_names_the_skipped_inputs(world: dict[str, Path], snapshot) -> None:  # items 14 and 19
    before = snapshot(world["root"])
    code, output, _ = invoke([*[a.format(**{k: str(v) for k, v in world.items()}) for a in VERIFY], "--inputs",
                              world["clips"], "--no-speed", "--skip-unreadable"])
    assert code == 0, output
    assert sum(line.startswith("warning: ") and "cannot read audio" in line for line in output.splitlines()) == 4
    line = next(line for line in output.splitlines() if line.startswith("skipped"))
    assert "bad1.wav" in line and "bad3.wav" in line and "and 1 more" in line and "cannot read audio" in line
    assert snapshot(world["root"]) == before


def test_verify_ctrl_c_exits_130_in_one_line(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, snapshot) -> None:
    import fastast_deploy.evaluation.verify as verify_module  # item 19

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "verify", interrupted)
    before = snapshot(world["root"])
    code, output, _ = invoke(["verify", world["engine"], "--reference", world["ckpt"], "--report",
                              world["root"] / "r.json"])
    assert code == 130, output
    assert len(output.strip().splitlines()) == 1 and "Interrupted" in output and "Traceback" not in output
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("where", ["run", "write"])
def test_verify_io_error_is_exit_1_and_says_so(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                              where: str, snapshot) -> None:  # item 19
    import fastast_deploy.engines.feeds as feeds
    import fastast_deploy.evaluation.verify as verify_module

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(world["root"] / "x"))

    monkeypatch.setattr(*((verify_module, "verify") if where == "run" else (feeds, "write_npz")), full_disk)
    before = snapshot(world["root"])
    code, output, _ = invoke(["verify", world["engine"], "--reference", world["ckpt"], "--no-speed", "--save-inputs",
                              world["root"] / "saved.npz"])
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in output and "Traceback" not in output, output
    assert ("I/O error" if where == "run" else "cannot write") in output
    assert snapshot(world["root"]) == before  # the temp of the failed write is gone


def test_int8_holds_out_clips_and_verify_says_to_use_real_clips(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "i8.onnx"  # item 20: --calib-clips beyond the 8 clips given
    code, output, _ = invoke(["export", world["ckpt"], "-o", out, "--precision", "int8", "--calib", world["calib"],
                              "--calib-clips", "64"])
    assert code == 0, output
    assert "2 held-out clips (the data has 8 clips" in output, output
    code, output, _ = invoke(["verify", out, "--reference", world["ckpt"], "--no-speed", "--atol", "0"])
    assert code == 1, output
    assert "verify int8 with --inputs DIR" in output
