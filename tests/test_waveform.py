"""Waveform-in graphs: the Kaldi fbank computed inside the ONNX graph against the project's features and HF's
feature extractor, whole exports against PyTorch (logits and merge decisions), TensorRT lint, engines and
predict on waveform-in models."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from fastast_deploy.audio.features import read_audio, resample, waveform_to_input
from fastast_deploy.audio.frames import waveform_samples
from fastast_deploy.contract import WAVEFORM_NAME
from fastast_deploy.exporters.fbank_graph import WaveformFbank, graph_features, reference_fbank
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.exporters.parity import torch_outputs
from fastast_deploy.metrics import waveform_like
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.schedule import make_schedule

RATE = 16000
FEATURES = FeatureConfig(frames=128)  # AudioSet statistics, 1.28 s windows
TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_mel_bins=128, num_labels=5)


def speech_clip() -> np.ndarray | None:
    """A spoken sentence from espeak-ng, at 16 kHz; None where espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with __import__("tempfile").TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-w", str(path), "The quick brown fox jumps over the lazy dog"], check=True,
                       capture_output=True)
        wave, rate = read_audio(path)
    return resample(wave, rate, RATE).numpy()


def make_clips(samples: int) -> dict[str, np.ndarray]:
    """Tone, chirp, noise (and speech where espeak-ng is installed), each as long as the graph input."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / RATE
    clips = {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (100 * t + (7000 - 100) * t**2 / (2 * t[-1]))),
        "noise": 0.1 * rng.standard_normal(samples),
    }
    speech = speech_clip()
    if speech is not None:
        clips["speech"] = np.resize(speech, samples)  # repeated to fill the window
    return {k: v.astype(np.float32) for k, v in clips.items()}


@pytest.fixture(scope="module")
def feature_session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    """The feature module alone, exported the way `export --input waveform` exports it."""
    path = tmp_path_factory.mktemp("fbank") / "fbank.onnx"
    module = WaveformFbank(FEATURES).eval()
    example = torch.zeros(2, waveform_samples(FEATURES))
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[WAVEFORM_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                                    opset_version=18, external_data=False, optimize=True, verbose=False)
    onnx.save_model(program.model_proto, str(path))
    ops = {n.op_type for n in program.model_proto.graph.node}
    assert not ops & {"DFT", "STFT", "If", "Loop", "MelWeightMatrix"}
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_in_graph_fbank_matches_the_project_features(feature_session: ort.InferenceSession) -> None:
    samples = waveform_samples(FEATURES)
    clips = make_clips(samples)
    x = np.stack(list(clips.values()))
    got = feature_session.run(None, {WAVEFORM_NAME: x})[0]  # (N, T, F) normalised
    scale = 2 * FEATURES.std  # normalised -> log-mel units
    for (name, clip), g in zip(clips.items(), got, strict=True):
        want = waveform_to_input(torch.from_numpy(clip), RATE, FEATURES).numpy()
        assert np.isfinite(g).all()
        assert np.abs(g - want).max() <= 1e-3, name  # the model's input
        raw = np.abs(g - want) * scale  # log-mel
        # The float64 reference resolves leakage some 100 dB below a frame's loudest bin, where a plain float32
        # product (or a float32 FFT) loses it; the split product keeps every bin, quiet or loud.
        assert raw.max() <= 1e-3, name
        plain = plain_float32_logmel(clip)  # the unsplit product, to show the test can tell them apart
        if name == "chirp":
            assert np.abs(plain - (want * scale + FEATURES.mean)).max() > 1e-3


def plain_float32_logmel(clip: np.ndarray) -> np.ndarray:
    """Log-mel (T, F) of one clip with the folded frame matrix as one float32 product (no split)."""
    from fastast_deploy.audio.features import LOG_FLOOR, _fbank_weights, pad_or_cut
    from fastast_deploy.audio.frames import frame_sizes
    from fastast_deploy.exporters.fbank_graph import frame_matrix

    win, shift, n_fft = frame_sizes(RATE)
    _, filters = _fbank_weights(RATE, n_fft, FEATURES.num_mel_bins, win)
    x = torch.from_numpy(clip - clip.mean())
    frames = x.unfold(0, win, shift)
    y = frames @ torch.from_numpy(frame_matrix(RATE)).float()
    mel = (y * y) @ torch.cat([filters, filters]).float()
    return pad_or_cut(mel.clamp(min=LOG_FLOOR).log(), FEATURES.frames).numpy()


def test_short_and_long_clips_pad_and_cut_like_the_project(feature_session: ort.InferenceSession) -> None:
    samples = waveform_samples(FEATURES)
    rng = np.random.default_rng(1)
    short = (0.1 * rng.standard_normal(samples // 3) + 0.3).astype(np.float32)  # a DC offset too
    long = (0.1 * rng.standard_normal(samples * 2)).astype(np.float32)
    x = np.full((2, samples), np.nan, np.float32)
    x[0, : len(short)] = short
    x[1] = long[:samples]
    got = feature_session.run(None, {WAVEFORM_NAME: x})[0]
    for g, clip in zip(got, (short, long), strict=True):
        want = waveform_to_input(torch.from_numpy(clip), RATE, FEATURES).numpy()
        assert np.abs(g - want).max() <= 1e-3
    frames = 1 + (len(short) - 400) // 160
    np.testing.assert_array_equal(got[0, frames:], (0 - FEATURES.mean) / (2 * FEATURES.std))  # pad_or_cut zeros


def test_in_graph_fbank_matches_hf_feature_extractor(feature_session: ort.InferenceSession) -> None:
    transformers = pytest.importorskip("transformers")
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=128, max_length=FEATURES.frames, do_normalize=True)
    samples = waveform_samples(FEATURES)
    x = np.stack(list(make_clips(samples).values()))
    got = feature_session.run(None, {WAVEFORM_NAME: x})[0]
    want = extractor(list(x), sampling_rate=RATE, return_tensors="np")["input_values"]
    assert np.abs(got - want).max() <= 1e-3


def tiny(r: int) -> FastAST:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(r, TINY.depth)))
    model.feature_config = FeatureConfig(frames=TINY.input_frames, mean=-5.0, std=4.0)
    return model.eval()


@pytest.fixture(scope="module")
def waveform_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[FastAST, Path]:
    """(the model, `fastast-deploy export CKPT -o wave.onnx --input waveform --tome-r 8 --debug-merges`)."""
    from click.testing import CliRunner

    from fastast_deploy.checkpoints.native import save_checkpoint
    from fastast_deploy.cli.main import cli

    model = tiny(8)
    work = tmp_path_factory.mktemp("wave")
    save_checkpoint(model, work / "tiny.safetensors")
    out = work / "wave.onnx"
    result = CliRunner().invoke(cli, ["export", str(work / "tiny.safetensors"), "-o", str(out), "--input",
                                      WAVEFORM_NAME, "--tome-r", "8", "--debug-merges"])
    assert result.exit_code == 0, result.output
    assert "parity vs PyTorch" in result.output and "merge_agreement 1" in result.output
    return model, out


def test_waveform_export_matches_pytorch_on_the_project_fbank_with_identical_merges(waveform_export,
                                                                                   assert_same_merges) -> None:
    model, path = waveform_export
    config = model.feature_config
    graph = onnx.load(str(path)).graph
    assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input] == \
        [(WAVEFORM_NAME, ["batch", 400 + 160 * (TINY.input_frames - 1)])]
    x = waveform_like(6, waveform_samples(config), seed=3)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {WAVEFORM_NAME: x})
    want, merges = torch_outputs(model, reference_fbank(x, config))
    assert np.abs(got[0] - want).max() <= 1e-4
    assert len(got) - 1 == len(merges) > 0
    assert_same_merges(got[1:], merges)  # identical merges


def test_inspect_says_the_features_are_inside_the_graph(waveform_export, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fastast_deploy.cli.main import cli

    model, path = waveform_export
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    line = next(x for x in text.splitlines() if x.startswith("features"))
    assert "inside the graph (float32), from the waveform" in line and "128 mel bins" in line, line
    fbank = export_onnx(model, tmp_path / "fbank.onnx", ExportOptions(), check=False).path
    line = next(x for x in CliRunner().invoke(cli, ["inspect", str(fbank)]).output.splitlines()
                if x.startswith("features"))
    assert "fed in" in line, line


def test_waveform_export_at_r0_matches_hf_ast(make_hf_model, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from fastast_deploy.checkpoints.native import load_model

    hf = make_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    out = export_onnx(load_model(tmp_path / "hf"), tmp_path / "hf.onnx", ExportOptions(input=WAVEFORM_NAME)).path
    cfg = hf.config
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length)
    samples = 400 + 160 * (cfg.max_length - 1)
    clips = list(make_clips(samples).values())
    clips.append(clips[2][: samples // 2])  # a short clip: HF pads its fbank with zeros
    x = np.stack([np.pad(c, (0, samples - len(c)), constant_values=np.nan) for c in clips]).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {WAVEFORM_NAME: x})[0]
    inputs = extractor(clips, sampling_rate=RATE, return_tensors="pt")["input_values"]
    with torch.no_grad():
        want = hf(inputs).logits.numpy()
    assert np.abs(got - want).max() <= 1e-3


@pytest.mark.parametrize("tensorrt", [10, 11])
def test_waveform_export_passes_tensorrt_lint(waveform_export, tensorrt: int) -> None:
    from fastast_deploy.exporters.lint import format_report, lint_model

    report = lint_model(waveform_export[1], tensorrt=tensorrt)
    assert not report.failed, format_report(report)


def test_fp16_waveform_export_keeps_the_features_in_float32_and_passes_lint(tmp_path: Path) -> None:
    from fastast_deploy.exporters.lint import format_report, lint_model

    model = tiny(8)
    out = export_onnx(model, tmp_path / "h.onnx", ExportOptions(input=WAVEFORM_NAME, precision="fp16")).path
    for tensorrt in (10, 11):
        report = lint_model(out, tensorrt=tensorrt)
        assert not report.failed, format_report(report)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    features = [n for n in proto.graph.node
                if any(p.key == "fastast_deploy.part" and p.value == "features" for p in n.metadata_props)]
    assert {"Gather", "MatMul", "Log"} <= {n.op_type for n in features}
    half = [o for n in features for o in n.output if types.get(o) == onnx.TensorProto.FLOAT16]
    assert not half
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)  # the model is fp16


def test_int8_waveform_export_quantises_the_model_and_keeps_the_features_float(tmp_path: Path) -> None:
    from fastast_deploy.contract import TOLERANCES, Tolerance
    from fastast_deploy.exporters.lint import format_report, lint_model
    from fastast_deploy.exporters.quantize import QuantizeOptions
    from fastast_deploy.metrics import fbank_like

    model = tiny(8)
    calibration = fbank_like(8, TINY.input_frames, TINY.num_mel_bins, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TOLERANCES["export"], "int8", Tolerance(min_top1=0.0))  # a random tiny model has near-tied logits
        result = export_onnx(model, tmp_path / "q.onnx", ExportOptions(input=WAVEFORM_NAME, precision="int8"),
                             calibration=calibration, quantize=QuantizeOptions(clips=8))
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == [WAVEFORM_NAME]
    for tensorrt in (10, 11):
        report = lint_model(result.path, tensorrt=tensorrt)
        assert not report.failed, format_report(report)
    producer = {o: n for n in proto.graph.node for o in n.output}
    features = [n for n in proto.graph.node
                if any(p.key == "fastast_deploy.part" and p.value == "features" for p in n.metadata_props)]
    assert {"Gather", "MatMul", "Log"} <= {n.op_type for n in features}
    # No feature MatMul reads a dequantised tensor; the model's layers do.
    fed_by_dq = [n for n in proto.graph.node if n.op_type == "MatMul"
                 and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert fed_by_dq and not set(map(id, fed_by_dq)) & set(map(id, features))
    # On waveforms, the joined graph gives what the fbank-in int8 export of the same model and calibration gives on
    # the project's fbank of them.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TOLERANCES["export"], "int8", Tolerance(min_top1=0.0))
        fbank_in = export_onnx(model, tmp_path / "qf.onnx", ExportOptions(precision="int8"),
                               calibration=calibration, quantize=QuantizeOptions(clips=8)).path
    config = graph_features(model)
    waves = waveform_like(4, waveform_samples(config), seed=5)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (result.path, fbank_in)]
    got = run[0].run(None, {WAVEFORM_NAME: waves})[0]
    want = run[1].run(None, {"fbank": reference_fbank(waves, config)})[0]
    assert np.isfinite(got).all() and np.abs(got - want).max() <= 1e-3
    assert result.parity["waveform"]["top1_agreement"] == 1.0


def test_engine_reads_a_waveform_graph(waveform_export) -> None:
    from fastast_deploy.engines import load_engine
    from fastast_deploy.engines.onnx_model import read_onnx_model

    info = read_onnx_model(waveform_export[1])
    assert info.input_name == WAVEFORM_NAME and info.input_shape == ("batch", 400 + 160 * (TINY.input_frames - 1))
    with load_engine(waveform_export[1]) as engine:
        (name, (shape, _)), = engine.input_specs.items()
        assert name == WAVEFORM_NAME and shape[1] == 400 + 160 * (TINY.input_frames - 1)
        x = waveform_like(3, shape[1], seed=4)
        assert engine.infer({WAVEFORM_NAME: x})["logits"].shape == (3, TINY.num_labels)


def test_predict_gives_the_same_scores_from_waveform_and_fbank_exports(waveform_export, tmp_path: Path) -> None:
    from fastast_deploy.inference.runner import open_runner
    from fastast_deploy.serving.predict import PredictOptions, predict_files

    model, wave_path = waveform_export
    fbank_path = export_onnx(model, tmp_path / "fbank.onnx", ExportOptions(), check=False).path
    rng = np.random.default_rng(5)
    files = []
    for seconds, rate in ((2.3, 16000), (0.3, 22050), (1.0, 44100)):  # several windows; shorter than one; resampled
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.2 * np.sin(2 * np.pi * 700 * t) + 0.05 * rng.standard_normal(len(t))
        files.append(tmp_path / f"clip{len(files)}.wav")
        sf.write(files[-1], wave.astype(np.float32), rate)
    options = PredictOptions(hop_s=0.25)
    results = {}
    for path in (wave_path, fbank_path):
        with open_runner(path) as runner:
            results[path] = list(predict_files(runner, files, options))
            if path == wave_path:
                assert runner.input_name == WAVEFORM_NAME
    for a, b in zip(results[wave_path], results[fbank_path], strict=True):
        assert a.error is None and b.error is None and a.windows == b.windows
        assert np.abs(a.scores - b.scores).max() <= 1e-4
    # 2.3 s: 1 + (36800 - 400) // 160 = 228 frames, windows of 64 every 25: 1 + ceil((228 - 64) / 25) = 8;
    # 1.0 s: 98 frames: 1 + ceil((98 - 64) / 25) = 3
    assert [r.windows for r in results[wave_path]] == [8, 1, 3]


def test_verify_compares_a_waveform_engine_with_pytorch_on_the_project_fbank(waveform_export, tmp_path: Path) -> None:
    from fastast_deploy.evaluation.verify import SpeedOptions, verify

    model, path = waveform_export
    source = str(path.parent / "tiny.safetensors")
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i, seconds in enumerate((0.4, 0.64, 2.0)):  # shorter than, about, and longer than the window
        sf.write(folder / f"c{i}.wav", (0.1 * rng.standard_normal(int(seconds * 22050))).astype(np.float32), 22050)
    report, inputs, _, _ = verify(path, source, inputs_spec=str(folder), num=3, batch=2)
    assert report["passed"], report["checks"]
    assert report["engine"]["input"]["name"] == WAVEFORM_NAME and inputs.waveform.shape[0] == 3
    # the reference's inputs are the project's features of the same audio
    want = waveform_to_input(*read_audio(folder / "c0.wav"), model.feature_config).numpy()
    np.testing.assert_allclose(inputs.fbank[0], want, atol=1e-6)
    report, _, _, _ = verify(path, source, num=4, batch=2,
                             speed=SpeedOptions(batches=(2,), warmup=1, iterations=2))
    assert report["passed"] and report["parity"]["merge_agreement"]
    assert report["speed"]["baseline"] and report["speed"]["batches"]["2"]["engine"]["clips_per_s"] > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["pytorch", "onnx"])
def test_nan_or_inf_logits_fail_the_waveform_export_check(waveform_export, monkeypatch: pytest.MonkeyPatch,
                                                          spoil_onnx_runtime, bad: float, side: str) -> None:
    """The waveform-in check is the one parity check: a NaN or inf logit on either side fails it (a NaN difference
    used to pass a `>` comparison)."""
    from fastast_deploy.errors import FastASTError
    from fastast_deploy.exporters import parity
    from fastast_deploy.exporters.fbank_graph import check_waveform_parity
    from fastast_deploy.exporters.onnx_export import ExportOptions as Options

    model, path = waveform_export
    if side == "pytorch":
        real = parity.torch_outputs

        def spoiled_torch(*args: object) -> tuple[np.ndarray, list[np.ndarray]]:
            logits, merges = real(*args)
            logits[1, 0] = bad
            return logits, merges

        monkeypatch.setattr(parity, "torch_outputs", spoiled_torch)
    else:
        spoil_onnx_runtime(bad, 1, 0)
    with pytest.raises(FastASTError, match="NaN or inf") as err:
        check_waveform_parity(model, path.read_bytes(), Options(input=WAVEFORM_NAME, debug_merges=True))
    assert "\n" not in str(err.value)
