"""A real Triton Inference Server (the `nvidia-pytriton` wheel's tritonserver) serving the repository that
`fastast-deploy triton --backend python` writes for a waveform-in export: concurrent requests over HTTP and gRPC,
every answer compared with the engine run directly, batch sizes read from the statistics endpoint; and the same
server as a remote engine (``grpc://HOST:PORT/NAME``, ``http://...``) for predict, evaluate and verify, from four
clients at once, with its one-line errors.

How the Python backend's stub finds numpy, onnxruntime and fastast_deploy here: its embedded interpreter is
isolated from PYTHONPATH, and derives its environment from the first ``python3`` on PATH (what PyTriton does
too), so the server starts with this virtual environment's bin first on PATH; model.py's ``site.addsitedir`` of
the recorded site-packages adds the rest (an editable install's ``.pth``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.contract import WAVEFORM_NAME
from fastast_deploy.engines.triton_remote import METADATA_PARAM
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.serving.local_triton import (
    LocalTriton,
    LocalTritonUnavailable,
    free_port,
    local_triton,
    pytriton_root,
)

pytestmark = pytest.mark.triton

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_mel_bins=128, num_labels=5)
NAME = "fastast_wave"
# Served beside NAME: no fastast-deploy record; other input dims than its record says; another record (fp16)
FOREIGN, RESHAPED, OTHER = "foreign", "reshaped", "other"
CLIENTS = 6  # threads per protocol
REQUESTS = 8  # per thread


def _pytriton_dir() -> Path:
    try:
        return pytriton_root()
    except LocalTritonUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def waveform_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(repository written by `triton --backend python`, the exported model) for a tiny waveform-in FastAST."""
    from click.testing import CliRunner

    from fastast_deploy.cli.main import cli

    _pytriton_dir()
    work = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    onnx_path = export_onnx(model, work / "wave.onnx", ExportOptions(input=WAVEFORM_NAME), check=False).path
    save_checkpoint(model, work / "wave.safetensors")
    repo = work / "repo"
    result = CliRunner().invoke(cli, ["triton", str(onnx_path), "-o", str(repo), "--backend", "python",
                                      "--name", NAME, "--max-batch", "16", "--max-queue-delay-us", "20000"])
    assert result.exit_code == 0, result.output
    # Served models a remote engine must refuse: one without the fastast-deploy record (a repository from another
    # tool), one whose input dims differ from what its record says, one with another record than NAME's.
    config = (repo / NAME / "config.pbtxt").read_text()
    record = re.compile(r'parameters \{\n  key: "' + re.escape(METADATA_PARAM) + r'"\n.*?\n\}\n', re.S)
    assert record.search(config)
    other = config.replace('\\"precision\\":\\"fp32\\"', '\\"precision\\":\\"fp16\\"')
    assert other != config
    variants = {FOREIGN: record.sub("", config), RESHAPED: config.replace("dims: [ -1 ]", "dims: [ 777 ]"),
                OTHER: other}
    for name, text in variants.items():
        shutil.copytree(repo / NAME, repo / name)
        (repo / name / "config.pbtxt").write_text(text.replace(f'name: "{NAME}"', f'name: "{name}"'))
    return repo, onnx_path


@pytest.fixture(scope="module")
def triton_server(waveform_repo: tuple[Path, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """tritonserver on free loopback ports with the Python backend and this interpreter's stub; stopped by PID."""
    try:
        server = local_triton(waveform_repo[0], tmp_path_factory.mktemp("server"), timeout_s=120)
        running = server.__enter__()
    except LocalTritonUnavailable as err:
        pytest.skip(str(err))
    try:
        yield running
    finally:
        server.__exit__(None, None, None)


def test_written_repository_serves_raw_audio_through_the_python_backend(waveform_repo) -> None:
    repo, _ = waveform_repo
    config = (repo / NAME / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "dynamic_batching {" in config
    assert 'name: "waveform"' in config and "dims: [ -1 ]" in config
    assert (repo / NAME / "1" / "model.py").is_file() and (repo / NAME / "1" / "model.onnx").is_file()
    assert "site.addsitedir" in (repo / NAME / "README.md").read_text()


def test_concurrent_http_and_grpc_requests_match_the_engine(triton_server: LocalTriton, waveform_repo) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from fastast_deploy.engines import load_engine

    _, onnx_path = waveform_repo
    engine = load_engine(onnx_path)
    samples = int(engine.input_specs[WAVEFORM_NAME][0][1])
    rng = np.random.default_rng(0)
    # Raw audio of several lengths: shorter than the window (padded with NaN by model.py), exact, longer (cut).
    lengths = [samples // 3, samples, samples + 999]
    jobs = []
    for protocol in ("http", "grpc"):
        for client in range(CLIENTS):
            for i in range(REQUESTS):
                rows = 1 + (client + i) % 2
                length = lengths[(client + i) % len(lengths)]
                jobs.append((protocol, (0.1 * rng.standard_normal((rows, length))).astype(np.float32)))

    def send(job: tuple[str, np.ndarray]) -> np.ndarray:
        protocol, x = job
        module = httpclient if protocol == "http" else grpcclient
        url = triton_server.http if protocol == "http" else triton_server.grpc
        client = module.InferenceServerClient(url)
        tensor = module.InferInput(WAVEFORM_NAME, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(NAME, [tensor], outputs=[module.InferRequestedOutput("logits")]).as_numpy("logits")

    with ThreadPoolExecutor(max_workers=2 * CLIENTS) as pool:
        answers = list(pool.map(send, jobs))

    worst = 0.0
    for (_, x), got in zip(jobs, answers, strict=True):
        padded = np.full((len(x), samples), np.nan, np.float32)
        padded[:, : min(samples, x.shape[1])] = x[:, :samples]
        want = engine.infer({WAVEFORM_NAME: padded})["logits"]
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    engine.close()
    assert worst <= 1e-5

    stats = settled_stats(triton_server)
    seen = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    rows = sum(len(x) for _, x in jobs)
    assert sum(size * count for size, count in seen.items()) == rows  # every row ran, once
    assert int(stats["inference_count"]) == rows
    print(f"\ntriton: {len(jobs)} requests ({rows} clips) over HTTP and gRPC, max |diff| {worst:.2g}; batch sizes "
          f"seen (size: executions) {dict(sorted(seen.items()))}")


# --- remote engines: grpc://HOST:PORT/MODEL and http://HOST:PORT/MODEL through the same server -------------------


def cli_run(*args: object) -> tuple[int, str]:
    from click.testing import CliRunner

    from fastast_deploy.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def assert_one_line_failure(code: int, output: str, *fragments: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), output
    for fragment in fragments:
        assert fragment in lines[0], output


def settled_stats(server: LocalTriton, quiet: float = 1.0, limit: float = 20.0) -> dict:
    """The model's statistics once its inference count has not changed for ``quiet`` seconds: the server may count a
    request after its response has gone out, so a read right after the last answer can miss the last requests."""
    stats = server.statistics(NAME)["model_stats"][0]
    deadline, since = time.monotonic() + limit, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        again = server.statistics(NAME)["model_stats"][0]
        if again["inference_count"] != stats["inference_count"]:
            since = time.monotonic()
        stats = again
    return stats


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 labelled clips of 1 s (two windows of the tiny model each) in 5 classes: data.json and labels.csv."""
    from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic

    root = tmp_path_factory.mktemp("clips") / "data"
    make_synthetic(root, SyntheticConfig(classes=5, clips_per_class=2, seconds=1.0, val_fraction=0.5,
                                         absolute_paths=True))
    rows = [row for split in ("train", "val") for row in json.loads((root / f"{split}.json").read_text())["data"]]
    (root / "data.json").write_text(json.dumps({"data": rows}))
    return root


def test_predict_and_evaluate_through_the_server_match_the_local_engine(triton_server: LocalTriton, waveform_repo,
                                                                       clips: Path) -> None:
    from fastast_deploy.evaluation.evaluate import evaluate
    from fastast_deploy.inference.runner import open_runner
    from fastast_deploy.serving.predict import PredictOptions, predict_files

    _, onnx_path = waveform_repo
    grpc_url, http_url = f"grpc://{triton_server.grpc}/{NAME}", f"http://{triton_server.http}/{NAME}"
    data, labels = clips / "data.json", clips / "labels.csv"
    files = [r["wav"] for r in json.loads(data.read_text())["data"]]

    def scores(target: str) -> np.ndarray:
        with open_runner(target) as runner:
            return np.stack([r.scores for r in predict_files(runner, files, PredictOptions())])

    def report(target: str) -> dict:
        return evaluate(target, data, str(labels))

    before = int(settled_stats(triton_server)["inference_count"])
    want, want_report = scores(str(onnx_path)), report(str(onnx_path))
    # Four clients at once: over gRPC, over HTTP, over both (requests spread round-robin), and evaluate.
    jobs = [(scores, grpc_url), (scores, http_url), (scores, f"{grpc_url},{http_url}"), (report, grpc_url)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: job[0](job[1]), jobs))
    worst = max(float(np.abs(got - want).max()) for got in answers[:3])
    assert worst <= 1e-5
    got_report = answers[3]
    assert got_report["backend"] == "triton" and got_report["model"] == grpc_url
    for key in ("metric", "clips", "correct", "per_class", "windows"):
        assert got_report[key] == want_report[key]
    assert abs(got_report["value"] - want_report["value"]) <= 1e-12
    # every window went to the server: 3 predicting clients and one evaluating, 2 windows per clip
    served = int(settled_stats(triton_server)["inference_count"]) - before
    assert served == 4 * 2 * len(files)

    code, out = cli_run("predict", grpc_url, *files, "--json", "--all-scores")
    assert code == 0, out
    answer = json.loads(out)
    assert answer["backend"] == "triton"
    assert np.abs(np.array([f["scores"] for f in answer["files"]]) - want).max() <= 1e-5
    code, out = cli_run("evaluate", http_url, "--data", data, "--labels", labels, "--json")
    assert code == 0, out
    assert json.loads(out)["per_class"] == want_report["per_class"]
    # analyze through the server writes the detections the local engine gives, and takes it as its model
    tables = {}
    for name, target in (("local", str(onnx_path)), ("remote", grpc_url)):
        out_dir = clips.parent / f"analyze-{name}"
        code, out = cli_run("analyze", target, *files, "-o", out_dir, "--format", "jsonl", "--min-score", "0",
                            "--workers", "0", "--batch", "1")
        assert code == 0, out
        tables[name] = sorted(p.relative_to(out_dir).as_posix() + "\n" + p.read_text()
                              for p in out_dir.rglob("*.jsonl"))
    assert len(tables["local"]) == len(files)
    for local, remote in zip(tables["local"], tables["remote"], strict=True):
        rows = [[json.loads(line) for line in text.splitlines()[1:]] for text in (local, remote)]
        assert local.splitlines()[0] == remote.splitlines()[0]
        assert [(d["start"], d["end"], d["label"]) for d in rows[0]] == [(d["start"], d["end"], d["label"])
                                                                          for d in rows[1]]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(*rows, strict=True)) <= 1e-5
    print(f"\nremote engine: {len(jobs)} concurrent clients, {len(files)} clips each, max |diff| {worst:.2g} "
          "against the local engine")


def test_verify_through_the_server(triton_server: LocalTriton, waveform_repo) -> None:
    repo, _ = waveform_repo
    url = f"grpc://{triton_server.grpc}/{NAME}"
    checkpoint = repo.parent / "wave.safetensors"
    code, out = cli_run("verify", url, "--reference", checkpoint, "--num", "6", "--batch", "4", "--no-speed")
    assert code == 0, out
    assert url in out
    code, out = cli_run("verify", url, "--reference", checkpoint, "--num", "6", "--baseline", "none",
                        "--speed-batches", "1,4", "--warmup", "1", "--iterations", "2")
    assert code == 0 and "(triton, fp32, r per block [8, 8])" in out, out
    code, out = cli_run("verify", url, "--reference", checkpoint, "--num", "6")
    assert code == 2 and "--baseline none or --no-speed" in out, out


def test_remote_engine_errors_are_one_line(triton_server: LocalTriton, clips: Path) -> None:
    wav = json.loads((clips / "data.json").read_text())["data"][0]["wav"]
    port = free_port()
    for scheme in ("grpc", "http"):  # nothing listens there
        code, out = cli_run("predict", f"{scheme}://127.0.0.1:{port}/{NAME}", wav)
        assert_one_line_failure(code, out, f"cannot reach a Triton server at {scheme}://127.0.0.1:{port}/{NAME}",
                                "connection refused")
    grpc = f"grpc://{triton_server.grpc}"
    code, out = cli_run("predict", f"{grpc}/nope", wav)
    assert_one_line_failure(code, out, "serves no model 'nope'", f"'{NAME}'", f"'{FOREIGN}'")
    code, out = cli_run("evaluate", f"http://{triton_server.http}/{FOREIGN}", "--data", clips / "data.json",
                        "--labels", clips / "labels.csv")
    assert_one_line_failure(code, out, "not a fastast-deploy model", METADATA_PARAM)
    code, out = cli_run("predict", f"{grpc}/{RESHAPED}", wav)
    # 64 frames of 25 ms every 10 ms at 16 kHz: 400 + 63 * 160 = 10480 samples
    assert_one_line_failure(code, out, "takes input 'waveform' of shape (batch, 777)", "records (batch, 10480)")
    code, out = cli_run("predict", f"{grpc}/{NAME},{grpc}/{FOREIGN}", wav)  # several servers: one model only
    assert_one_line_failure(code, out, "not a fastast-deploy model")
    code, out = cli_run("predict", f"{grpc}/{NAME},{grpc}/{OTHER}", wav)
    assert_one_line_failure(code, out, f"{grpc}/{OTHER} serves another model than {grpc}/{NAME}")
    code, out = cli_run("predict", f"{grpc}/{NAME}/7", wav)
    assert_one_line_failure(code, out, f"model '{NAME}' is not ready in version 7")
    code, out = cli_run("predict", f"{grpc}/{NAME}", wav, "--provider", "cuda")
    assert_one_line_failure(code, out, "--provider applies to a local engine")
    code, out = cli_run("predict", "grpc://127.0.0.1/model", wav)
    assert_one_line_failure(code, out, "not a remote engine URL")


def test_a_missing_tritonclient_names_the_extra(monkeypatch: pytest.MonkeyPatch, clips: Path) -> None:
    wav = json.loads((clips / "data.json").read_text())["data"][0]["wav"]
    for scheme in ("grpc", "http"):
        monkeypatch.setitem(sys.modules, f"tritonclient.{scheme}", None)  # as if not installed
        code, out = cli_run("predict", f"{scheme}://127.0.0.1:8001/{NAME}", wav)
        assert_one_line_failure(code, out, f"needs tritonclient[{scheme}]", "pip install 'fastast-deploy[triton]'")
