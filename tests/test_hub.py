"""Hub ids as SOURCE, against a real huggingface_hub cache laid out offline as the library documents it
(models--ORG--NAME/refs/<ref> holds a commit, snapshots/<commit>/<file> are relative links into blobs/<sha256>),
read with HF_HUB_OFFLINE=1: the commands run in their own process, where huggingface_hub reads its settings."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastast_deploy.checkpoints.hub import parse_hub_id
from fastast_deploy.cli.main import cli

transformers = pytest.importorskip("transformers")

REPO = "acme/tiny-ast"
MAIN = "a" * 40
PINNED = "b" * 40
PINNED_LABELS = ("yes", "no", "up", "down", "left")
SPEECH = {"mean": -6.845978, "std": 5.5654526}  # the Speech Commands fine-tune's preprocessor statistics


def lay_out(cache: Path, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put every file of ``folder`` into ``cache`` as revision ``commit`` of model ``repo`` (named by ``refs``)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def hf_folder(path: Path, model, **features: object) -> Path:
    """save_pretrained of ``model`` and of an ASTFeatureExtractor for its input size (``features`` override)."""
    model.save_pretrained(path)
    cfg = model.config
    settings = {"num_mel_bins": cfg.num_mel_bins, "max_length": cfg.max_length, **features}
    transformers.ASTFeatureExtractor(**settings).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, make_hf_model) -> dict:
    """HF_HOME with ``acme/tiny-ast``: main (conftest's labels, Speech Commands statistics) and a commit tagged
    v1 (other weights and labels, AudioSet statistics); plus the two models for reference."""
    home = tmp_path_factory.mktemp("hf_home")
    work = tmp_path_factory.mktemp("hf_saved")
    main = make_hf_model()
    pinned = make_hf_model(id2label=dict(enumerate(PINNED_LABELS)),
                           label2id={n: i for i, n in enumerate(PINNED_LABELS)})
    lay_out(home / "hub", REPO, hf_folder(work / "main", main, **SPEECH), MAIN)
    lay_out(home / "hub", REPO, hf_folder(work / "pinned", pinned), PINNED, refs=("v1",))
    return {"home": home, "main": main, "pinned": pinned, "work": work}


def offline_env(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def use_cache(monkeypatch: pytest.MonkeyPatch):
    """``use_cache(home)``: this process reads Hub ids offline from ``home``/hub (huggingface_hub read its
    settings when it first loaded, so its cache constant is set too)."""
    from huggingface_hub import constants

    def use(home: Path) -> None:
        for name, value in offline_env(home).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))

    return use


def info_json(run_measured, hub: dict, source: str, cwd: Path | None = None) -> dict:
    done = run_measured(["info", source, "--json"], cwd=cwd, env=offline_env(hub["home"]))
    assert done.code == 0, done.output
    return json.loads(done.output)


def test_hub_ids_and_paths_are_told_apart() -> None:
    assert parse_hub_id("MIT/ast-finetuned-audioset-10-10-0.4593") == ("MIT/ast-finetuned-audioset-10-10-0.4593",
                                                                       None)
    assert parse_hub_id("acme/tiny-ast@v1") == ("acme/tiny-ast", "v1")
    assert parse_hub_id(f"acme/tiny-ast@{PINNED}") == ("acme/tiny-ast", PINNED)
    for path in ("default", "tiny", "model.pth", "runs/best.safetensors", "/abs/acme/x", "./acme/x", "a/b/c",
                 "../x", "acme/x.onnx"):
        assert parse_hub_id(path) is None, path
    assert parse_hub_id(Path("acme/tiny-ast")) is None  # a Path object is always a path


def test_the_cache_is_one_huggingface_hub_reads(hub: dict) -> None:
    from huggingface_hub import scan_cache_dir

    repos = {r.repo_id: r for r in scan_cache_dir(hub["home"] / "hub").repos}
    assert {r.commit_hash for r in repos[REPO].revisions} == {MAIN, PINNED}
    assert {ref for r in repos[REPO].revisions for ref in r.refs} == {"main", "v1"}


def test_info_of_a_hub_id(run_measured, hub: dict) -> None:
    report = info_json(run_measured, hub, REPO)
    cfg = hub["main"].config
    assert report["labels"] == [cfg.id2label[i] for i in range(cfg.num_labels)]
    assert (report["config"]["embed_dim"], report["config"]["depth"]) == (cfg.hidden_size, cfg.num_hidden_layers)
    assert report["features"] == {"sample_rate": 16000, "num_mel_bins": cfg.num_mel_bins, "frames": cfg.max_length,
                                  **SPEECH}
    assert f"models--acme--tiny-ast/snapshots/{MAIN}" in report["source"]["path"]


def test_revision_pinning_by_tag_and_commit(run_measured, hub: dict, use_cache) -> None:
    from fastast_deploy.checkpoints.native import load_model

    report = info_json(run_measured, hub, f"{REPO}@v1")
    assert report["labels"] == list(PINNED_LABELS)
    assert PINNED in report["source"]["path"]
    assert report["features"]["mean"] == pytest.approx(-4.2677393)  # this revision's extractor: AudioSet's
    use_cache(hub["home"])
    model = load_model(f"{REPO}@{PINNED}")
    assert model.label_names == PINNED_LABELS and PINNED in model.source_info["path"]
    want = hub["pinned"].classifier.dense.weight.detach()
    assert torch.equal(model.head.weight.detach(), want)  # that revision's weights, not main's


def test_export_of_a_hub_id_matches_transformers(run_measured, hub: dict, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from fastast_deploy.contract import METADATA_KEY

    out = tmp_path / "x.onnx"
    done = run_measured(["export", REPO, "-o", out, "--no-check"], env=offline_env(hub["home"]))
    assert done.code == 0, done.output
    # the reference: transformers' own from_pretrained of the same cache, offline
    reference = transformers.ASTForAudioClassification.from_pretrained(
        REPO, cache_dir=hub["home"] / "hub", local_files_only=True, attn_implementation="eager").eval()
    cfg = reference.config
    fbank = np.random.default_rng(0).standard_normal((2, cfg.max_length, cfg.num_mel_bins)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(fbank)).logits.numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"fbank": fbank})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    meta = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}[METADATA_KEY])
    assert meta["features"]["mean"] == pytest.approx(SPEECH["mean"])
    assert meta["features"]["std"] == pytest.approx(SPEECH["std"])
    assert meta["features"]["frames"] == cfg.max_length


def test_predict_takes_a_hub_id(hub: dict, use_cache, tmp_path: Path) -> None:
    import soundfile as sf

    use_cache(hub["home"])
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(2).uniform(-0.3, 0.3, 16000).astype(np.float32), 16000)
    result = CliRunner().invoke(cli, ["predict", f"{REPO}@v1", str(clip), "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert set(PINNED_LABELS) <= set(result.output.split()), result.output


def test_a_local_folder_shadows_the_hub_id(run_measured, hub: dict, tmp_path: Path) -> None:
    shutil.copytree(hub["work"] / "pinned", tmp_path / REPO)  # ./acme/tiny-ast, with the v1 labels
    report = info_json(run_measured, hub, REPO, cwd=tmp_path)
    assert report["labels"] == list(PINNED_LABELS)
    assert report["source"]["path"] == REPO


def test_an_uncached_id_offline_fails_in_one_line(run_measured, hub: dict, tmp_path: Path, snapshot) -> None:
    env = {"HF_HOME": str(hub["home"]), "HF_HUB_CACHE": str(hub["home"] / "hub"), "HF_HUB_OFFLINE": ""}
    before = snapshot(tmp_path), snapshot(hub["home"])
    done = run_measured(["--offline", "export", "acme/not-cached", "-o", tmp_path / "x.onnx"], cwd=tmp_path, env=env)
    done.assert_clean_failure(1, "not cached while offline")
    assert "acme/not-cached" in done.output
    assert (snapshot(tmp_path), snapshot(hub["home"])) == before


def test_an_uncached_revision_offline_is_refused(hub: dict, use_cache) -> None:
    from fastast_deploy.checkpoints.native import read_checkpoint
    from fastast_deploy.errors import CheckpointError

    use_cache(hub["home"])
    with pytest.raises(CheckpointError, match=r"acme/tiny-ast@v2 is not cached while offline") as err:
        read_checkpoint(f"{REPO}@v2")
    assert "\n" not in str(err.value)


def test_a_non_ast_repo_is_refused_naming_its_model_type(use_cache, tmp_path: Path, snapshot) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    home = tmp_path / "home"
    lay_out(home / "hub", "acme/bert-tiny", folder, MAIN)  # config only: refused before any weights are looked for
    use_cache(home)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, ["export", "acme/bert-tiny", "-o", str(tmp_path / "x.onnx")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "acme/bert-tiny" in lines[0] and "model_type 'bert'" in lines[0]
    assert snapshot(tmp_path) == before


def test_config_and_weights_that_disagree_are_one_line(run_measured, hub: dict, tmp_path: Path, snapshot) -> None:
    home, folder = tmp_path / "home", tmp_path / "saved"
    shutil.copytree(hub["work"] / "main", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * 2}))
    lay_out(home / "hub", "acme/broken", folder, MAIN)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    done = run_measured(["export", "acme/broken", "-o", out / "x.onnx"], env=offline_env(home))
    done.assert_clean_failure(1, "does not match the model")
    assert snapshot(tmp_path) == before
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(out / "x.onnx")])  # the folder itself
    assert result.exit_code == 1 and "does not match the model" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_preprocessor_config_that_the_model_cannot_take_is_refused(hub: dict, tmp_path: Path) -> None:
    from fastast_deploy.checkpoints.native import read_checkpoint
    from fastast_deploy.errors import CheckpointError

    folder = tmp_path / "m"
    shutil.copytree(hub["work"] / "main", folder)
    cfg = hub["main"].config
    for key, value in (("max_length", cfg.max_length * 2), ("num_mel_bins", cfg.num_mel_bins * 2)):
        transformers.ASTFeatureExtractor(**{"num_mel_bins": cfg.num_mel_bins, "max_length": cfg.max_length,
                                            key: value}).save_pretrained(folder)
        with pytest.raises(CheckpointError, match=f"gives {key} {value}, but the model") as err:
            read_checkpoint(folder)
        assert "\n" not in str(err.value)
    pre = {"num_mel_bins": cfg.num_mel_bins, "max_length": cfg.max_length}
    for fields, fragment in (({"feature_extractor_type": "WhisperFeatureExtractor"}, "'WhisperFeatureExtractor'"),
                             ({"do_normalize": "yes"}, "do_normalize must be true or false"),
                             ({"std": 0.0}, "std must be a positive finite number")):
        (folder / "preprocessor_config.json").write_text(json.dumps({**pre, **fields}))
        with pytest.raises(CheckpointError, match=fragment):
            read_checkpoint(folder)


def test_do_normalize_false_means_the_raw_fbank(hub: dict, tmp_path: Path) -> None:
    from fastast_deploy.audio.features import normalize
    from fastast_deploy.checkpoints.native import read_checkpoint

    folder = tmp_path / "m"
    shutil.copytree(hub["work"] / "main", folder)
    cfg = hub["main"].config
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length,
                                                 do_normalize=False)
    extractor.save_pretrained(folder)
    features = read_checkpoint(folder).features
    wave = np.random.default_rng(1).uniform(-0.5, 0.5, 16000).astype(np.float32)
    raw = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]  # HF: no normalisation
    np.testing.assert_array_equal(normalize(torch.from_numpy(raw), features.mean, features.std).numpy(), raw)


# ---- online: a fake Hub on localhost (huggingface_hub's own client talks to it) ------------------------------------


class _FakeHub(BaseHTTPRequestHandler):
    """The few Hub endpoints snapshot_download uses: repo info, tree listing, file resolve. ``repos``: repo id ->
    {"refs": {name: commit}, "commits": {commit: {file: bytes}}, "gated": bool}."""

    repos: dict = {}
    requests: list = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def send(self, code: int, body: bytes, headers: dict, head: bool) -> None:
        self.send_response(code)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def answer(self, head: bool) -> None:
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        self.requests.append(parts)
        api = parts[:2] == ["api", "models"]
        repo_id = "/".join(parts[2:4] if api else parts[:2])
        rest = parts[4:] if api else parts[2:]
        repo = self.repos.get(repo_id)
        is_file = not api and rest[:1] == ["resolve"]
        revision = rest[1] if (is_file or rest[:1] in (["revision"], ["tree"])) else "main"
        commit = None if repo is None else repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        error = ("RepoNotFound" if repo is None else "GatedRepo" if is_file and repo.get("gated") else
                 "RevisionNotFound" if commit is None else None)
        if error:
            return self.send(401 if error == "GatedRepo" else 404, b"{}", {"X-Error-Code": error}, head)
        files = repo["commits"][commit]
        if is_file:
            data = files["/".join(rest[2:])]
            return self.send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, head)
        body = ([{"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": f} for f, d in
                 files.items()] if rest[:1] == ["tree"] else
                {"id": repo_id, "sha": commit, "private": False, "siblings": [{"rfilename": f} for f in files]})
        self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Hub at http://127.0.0.1:PORT, and a cache of this test's own, online, for this process."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(_FakeHub, "repos", {})
    monkeypatch.setattr(_FakeHub, "requests", [])
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield _FakeHub
    server.shutdown()
    server.server_close()


def test_online_fetches_only_what_the_model_needs(fake_hub, hub: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fastast_deploy.checkpoints.native import load_model

    files = {p.name: p.read_bytes() for p in (hub["work"] / "main").iterdir()}
    fake_hub.repos[REPO] = {"refs": {"main": MAIN}, "commits": {MAIN: {**files, "pytorch_model.bin": b"unused",
                                                                        "README.md": b"# card"}}}
    model = load_model(REPO)
    assert torch.equal(model.head.weight.detach(), hub["main"].classifier.dense.weight.detach())
    fetched = {p[-1] for p in fake_hub.requests if p[2:3] == ["resolve"]}
    assert fetched == {"config.json", "preprocessor_config.json", "model.safetensors"}
    assert (tmp_path / "cache" / "models--acme--tiny-ast" / "refs" / "main").read_text() == MAIN
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # then offline, from the cache alone
    asked = len(fake_hub.requests)
    assert load_model(REPO).label_names == model.label_names and len(fake_hub.requests) == asked


def test_online_bin_weights_go_through_the_safe_loader(fake_hub, hub: dict, tmp_path: Path) -> None:
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.errors import CheckpointError

    configs = {name: (hub["work"] / "main" / name).read_bytes() for name in ("config.json", "preprocessor_config.json")}
    torch.save(hub["main"].state_dict(), tmp_path / "good.bin")
    torch.save({"x": _Evil()}, tmp_path / "evil.bin")
    for name in ("good", "evil"):
        weights = {"pytorch_model.bin": (tmp_path / f"{name}.bin").read_bytes()}
        fake_hub.repos[f"acme/{name}"] = {"refs": {"main": MAIN}, "commits": {MAIN: {**configs, **weights}}}
    model = load_model("acme/good")
    assert torch.equal(model.head.weight.detach(), hub["main"].classifier.dense.weight.detach())
    with pytest.raises(CheckpointError, match="could run code"):
        load_model("acme/evil")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize(("source", "fragment"), [
    ("acme/missing", "the Hub has no model repository acme/missing (it does not exist, or it is private"),
    ("acme/gated", "Hub model acme/gated is gated: accept its conditions"),
    (f"{REPO}@v9", "Hub model acme/tiny-ast has no revision 'v9'"),
])
def test_online_errors_say_which(fake_hub, hub: dict, source: str, fragment: str) -> None:
    from fastast_deploy.checkpoints.native import read_checkpoint
    from fastast_deploy.errors import CheckpointError

    files = {p.name: p.read_bytes() for p in (hub["work"] / "main").iterdir()}
    for repo, gated in ((REPO, False), ("acme/gated", True)):
        fake_hub.repos[repo] = {"refs": {"main": MAIN}, "commits": {MAIN: files}, "gated": gated}
    with pytest.raises(CheckpointError, match=re.escape(fragment)) as err:
        read_checkpoint(source)
    assert "\n" not in str(err.value)
