"""Checkpoint loading and saving. Golden logits come from Hugging Face transformers' ASTForAudioClassification."""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastast_deploy.checkpoints.native import (
    adapt_pos_embed,
    load_model,
    read_checkpoint_metadata,
    save_checkpoint,
)
from fastast_deploy.errors import CheckpointError, ConfigError, FastASTError
from fastast_deploy.model.config import ESC50, SPEECHCOMMANDS, FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model

TOL = 1e-5


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_one_line_error(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, FastASTError)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def hf(make_hf_model) -> torch.nn.Module:
    return make_hf_model()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, hf: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("hf") / "ast-tiny"
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def x_hf() -> torch.Tensor:
    return torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(1))  # (B, T, F)


# ---- Hugging Face directories ----------------------------------------------------------------------------------


def test_hf_directory_matches_transformers(hf: torch.nn.Module, hf_dir: Path, x_hf: torch.Tensor) -> None:
    model = load_model(hf_dir)
    assert not model.training
    assert max_diff(model(x_hf), hf_logits(hf, x_hf)) < TOL
    assert model.label_names == tuple(hf.config.id2label[i] for i in range(7))
    assert model.config.layer_norm_eps == model.config.head_norm_eps == 1e-12
    assert (model.config.fstride, model.config.tstride, model.config.input_frames) == (10, 16, 64)
    assert model.feature_config == FeatureConfig(num_mel_bins=32, frames=64)  # AudioSet stats without preprocessor
    assert model.schedule == (0, 0)
    info = model.source_info
    assert info["format"] == "huggingface"
    weights = hf_dir / "model.safetensors"
    assert info["sha256"][str(weights)] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_hf_directory_without_qkv_bias_matches_transformers(make_hf_model, tmp_path: Path, x_hf: torch.Tensor) -> None:
    hf = make_hf_model(qkv_bias=False)
    hf.save_pretrained(tmp_path / "no-bias")
    model = load_model(tmp_path / "no-bias")
    assert not model.config.qkv_bias
    assert max_diff(model(x_hf), hf_logits(hf, x_hf)) < TOL


@pytest.mark.parametrize("layout", ["hub", "in-memory"])
def test_hf_pytorch_model_bin(
    hf: torch.nn.Module, hf_dir: Path, x_hf: torch.Tensor, tmp_path: Path, layout: str
) -> None:
    # Hub .bin files carry transformers-4 names (as save_pretrained writes); state_dict() has transformers-5 names.
    state = load_file(hf_dir / "model.safetensors") if layout == "hub" else hf.state_dict()
    shutil.copy(hf_dir / "config.json", tmp_path / "config.json")
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = load_model(tmp_path)
    assert max_diff(model(x_hf), hf_logits(hf, x_hf)) < TOL


def test_hf_preprocessor_config_gives_feature_stats(hf_dir: Path, tmp_path: Path) -> None:
    from transformers import ASTFeatureExtractor

    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_dir / name, tmp_path / name)
    ASTFeatureExtractor(num_mel_bins=32, max_length=64, mean=ESC50.mean, std=ESC50.std).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.feature_config == FeatureConfig(num_mel_bins=32, frames=64, mean=ESC50.mean, std=ESC50.std)
    assert str(tmp_path / "preprocessor_config.json") in model.source_info["sha256"]


# ---- original AST .pth -----------------------------------------------------------------------------------------

_TO_ORIGINAL = (  # transformers-4 key fragment -> original AST key fragment, longest matches first
    ("audio_spectrogram_transformer.embeddings.distillation_token", "v.dist_token"),
    ("audio_spectrogram_transformer.embeddings.cls_token", "v.cls_token"),
    ("audio_spectrogram_transformer.embeddings.position_embeddings", "v.pos_embed"),
    ("audio_spectrogram_transformer.embeddings.patch_embeddings.projection", "v.patch_embed.proj"),
    ("audio_spectrogram_transformer.encoder.layer.", "v.blocks."),
    ("audio_spectrogram_transformer.layernorm.", "v.norm."),
    ("attention.output.dense", "attn.proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("layernorm_before", "norm1"),
    ("layernorm_after", "norm2"),
    ("classifier.layernorm", "mlp_head.0"),
    ("classifier.dense", "mlp_head.1"),
)


def hf_to_original(hf_state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF hub keys -> the original AST DataParallel layout: fused qkv = cat(q, k, v) rows, unused DeiT heads."""
    out = {}
    for key, value in hf_state.items():
        for old, new in _TO_ORIGINAL:
            key = key.replace(old, new)
        out[key] = value
    for i in range(len({k.split(".")[2] for k in out if k.startswith("v.blocks.")})):
        for param in ("weight", "bias"):
            parts = [out.pop(f"v.blocks.{i}.attention.attention.{n}.{param}") for n in ("query", "key", "value")]
            out[f"v.blocks.{i}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
    dim = out["v.cls_token"].shape[-1]
    for head in ("head", "head_dist"):
        out[f"v.{head}.weight"], out[f"v.{head}.bias"] = torch.randn(1000, dim), torch.randn(1000)
    return {prefix + k: v for k, v in out.items()}


ORIGINAL_CASES = {
    # file name, strides, frames, label count, key prefix, expected feature stats
    "speechcommands": ("ast.pth", 10, 128, 35, "module.", SPEECHCOMMANDS),
    "esc50-16-16": ("esc50_16_16_0.9575.pth", 16, 64, 50, "", ESC50),
}


def original_reference(
    make_hf_model, tmp_path: Path, stride: int, frames: int, labels: int
) -> tuple[torch.nn.Module, dict]:
    """An HF AST computing what original AST computes, and its weights in the original layout (no prefix).

    DeiT geometry (64-dim heads, 128 mel bins), as original files imply. Original AST uses LayerNorm eps 1e-6 in
    the blocks and 1e-5 in mlp_head; HF has one eps, so the reference gets 1e-6 and its head LayerNorm is set to
    1e-5: the same computation as the original, not an approximation of it.
    """
    hf = make_hf_model(
        hidden_size=128,
        num_attention_heads=2,
        intermediate_size=256,
        num_mel_bins=128,
        max_length=frames,
        frequency_stride=stride,
        time_stride=stride,
        id2label={i: str(i) for i in range(labels)},
        label2id={str(i): i for i in range(labels)},
        layer_norm_eps=1e-6,
    )
    hf.classifier.layernorm.eps = 1e-5
    hf.save_pretrained(tmp_path / "hf")
    return hf, hf_to_original(load_file(tmp_path / "hf" / "model.safetensors"), "")


@pytest.mark.parametrize("case", list(ORIGINAL_CASES))
def test_original_pth_matches_transformers(make_hf_model, tmp_path: Path, case: str) -> None:
    name, stride, frames, labels, prefix, stats = ORIGINAL_CASES[case]
    hf, state = original_reference(make_hf_model, tmp_path, stride, frames, labels)
    path = tmp_path / name
    torch.save({prefix + k: v for k, v in state.items()}, path)

    model = load_model(path)
    x = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(2))
    assert max_diff(model(x), hf_logits(hf, x)) < TOL
    config = model.config
    assert (config.embed_dim, config.depth, config.num_heads, config.mlp_dim) == (128, 2, 2, 256)
    assert (config.fstride, config.tstride, config.input_frames, config.num_labels) == (stride, stride, frames, labels)
    assert (config.layer_norm_eps, config.head_norm_eps) == (1e-6, 1e-5)
    assert model.feature_config == FeatureConfig(frames=frames, mean=stats.mean, std=stats.std)
    assert model.label_names is None
    assert model.source_info["format"] == "ast-original"


def test_original_pth_input_frames_prefers_recipe_lengths(tmp_path: Path) -> None:
    # pos_embed of 12 x 50 patches at stride 10: 512 frames (ESC-50) rather than the shortest length, 506.
    config = ModelConfig(embed_dim=64, depth=1, num_heads=1, mlp_dim=64, input_frames=512, num_labels=3)
    state = {"module.v." + k: v for k, v in build_model(config).state_dict().items() if not k.startswith("head")}
    state |= {
        "module.mlp_head.1.weight": torch.zeros(3, 64),
        "module.mlp_head.1.bias": torch.zeros(3),
        "module.mlp_head.0.weight": torch.ones(64),
        "module.mlp_head.0.bias": torch.zeros(64),
    }
    torch.save(state, tmp_path / "odd.pth")
    model = load_model(tmp_path / "odd.pth")
    assert model.config.input_frames == 512
    assert "AudioSet" in model.source_info["note"]


# ---- own format ------------------------------------------------------------------------------------------------


def small_model(schedule: tuple[int, ...] = (8, 4), prop_attn: bool = False) -> torch.nn.Module:
    torch.manual_seed(3)
    config = ModelConfig(
        embed_dim=64, depth=2, num_heads=4, mlp_dim=128, input_frames=128, num_mel_bins=32, num_labels=3
    )
    return build_model(config, TomeConfig(schedule=schedule, prop_attn=prop_attn))


def test_own_format_round_trip(tmp_path: Path) -> None:
    model = small_model()
    features = FeatureConfig(num_mel_bins=32, frames=128, mean=-6.0, std=5.0)
    path = save_checkpoint(
        model,
        tmp_path / "deep" / "dir" / "m.safetensors",
        label_names=["a", "b", "c"],
        feature_config=features,
        extra={"dataset": "toy"},
    )
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    loaded = load_model(path)
    x = torch.randn(2, 128, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded(x), model(x))
    assert loaded.schedule == model.schedule == (8, 4)
    assert loaded.tome.prop_attn is False
    assert loaded.label_names == ("a", "b", "c")
    assert loaded.feature_config == features
    assert loaded.source_info["extra"] == {"dataset": "toy"}
    meta = read_checkpoint_metadata(path)
    assert meta["format_version"] == 1 and meta["tome"]["schedule"] == [8, 4] and meta["labels"] == ["a", "b", "c"]
    # A second save takes labels and features from the loaded model's attributes.
    again = read_checkpoint_metadata(save_checkpoint(loaded, tmp_path / "again.safetensors"))
    assert again["labels"] == ["a", "b", "c"] and again["features"] == features.to_dict()


def test_own_format_tome_overrides(tmp_path: Path) -> None:
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    assert load_model(path, tome_r=3).schedule == (3, 3)
    assert load_model(path, tome_r=[5, 0]).schedule == (5, 0)
    with pytest.raises(ConfigError, match="one value per block"):
        load_model(path, tome_r=[5])
    assert load_model(path, tome_r=4, tome_inflection=-1.0).schedule == (8, 0)
    assert load_model(path, tome_r=0).schedule == (0, 0)
    assert load_model(path, prop_attn=True).tome.prop_attn is True
    assert load_model(path, merge_impl="scatter").tome.merge_impl == "scatter"


def test_hf_at_r0_unchanged_and_merging_changes_logits(hf: torch.nn.Module, hf_dir: Path, x_hf: torch.Tensor) -> None:
    reference = hf_logits(hf, x_hf)
    assert max_diff(load_model(hf_dir, tome_r=0)(x_hf), reference) < TOL
    merged = load_model(hf_dir, tome_r=2)
    assert merged.token_counts == (10, 8, 6)
    assert max_diff(merged(x_hf), reference) > 1e-3


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastast_deploy.checkpoints.metadata as checkpoints  # the one checkpoint writer

    def failing_save(tensors: dict, filename: str | Path, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", failing_save)
    with pytest.raises(FastASTError, match="No space left on device"):
        save_checkpoint(small_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(ConfigError):
        save_checkpoint(small_model(), tmp_path / "m.safetensors", extra={"bad": object()})
    with pytest.raises(ConfigError, match="2 label names"):
        save_checkpoint(small_model(), tmp_path / "m.safetensors", label_names=["a", "b"])
    assert list(tmp_path.iterdir()) == []


# ---- positional-embedding adaptation ---------------------------------------------------------------------------


def grid_embed(f: int, t: int) -> torch.Tensor:
    """(1, 2 + f*t, 2): prefix entries -1 and -2; patch (i, j) holds 10*i + j in channel 0 and its negative in 1."""
    values = torch.tensor([10.0 * i + j for i in range(f) for j in range(t)])
    patches = torch.stack([values, -values], dim=-1)
    prefix = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    return torch.cat([prefix, patches])[None]


def test_adapt_pos_embed_crops_the_centre() -> None:
    out = adapt_pos_embed(grid_embed(4, 6), (4, 6), (2, 3))
    # rows start at 4 // 2 - 2 // 2 = 1, columns at 6 // 2 - 3 // 2 = 2
    assert out[0, 2:, 0].tolist() == [12.0, 13.0, 14.0, 22.0, 23.0, 24.0]
    assert out[0, 2:, 1].tolist() == [-12.0, -13.0, -14.0, -22.0, -23.0, -24.0]
    assert torch.equal(out[:, :2], grid_embed(4, 6)[:, :2])
    assert adapt_pos_embed(grid_embed(1, 101), (1, 101), (1, 50))[0, 2:, 0].tolist() == list(range(25, 75))


def test_adapt_pos_embed_same_grid_is_identity() -> None:
    embed = grid_embed(3, 5)
    assert torch.equal(adapt_pos_embed(embed, (3, 5), (3, 5)), embed)


def test_adapt_pos_embed_interpolates_a_larger_grid() -> None:
    out = adapt_pos_embed(grid_embed(1, 2), (1, 2), (2, 4))
    assert out.shape == (1, 2 + 8, 2)
    assert torch.equal(out[:, :2], grid_embed(1, 2)[:, :2])
    # [0, 1] stretched to 4 samples with align_corners=False: sample points -0.25, 0.25, 0.75, 1.25 (clamped)
    assert out[0, 2:, 0].tolist() == [0.0, 0.25, 0.75, 1.0] * 2
    with pytest.raises(ConfigError, match="expected 2 \\+ 2x2"):
        adapt_pos_embed(grid_embed(1, 2), (2, 2), (2, 4))


def test_load_model_at_another_input_length(hf: torch.nn.Module, hf_dir: Path) -> None:
    hf_pos = hf.audio_spectrogram_transformer.embeddings.position_embeddings.detach()  # (1, 2 + 2*4, 64)
    longer = load_model(hf_dir, input_frames=96)  # time grid 4 -> 6
    assert longer.config.grid == (2, 6) and longer.feature_config.frames == 96
    assert longer(torch.randn(2, 96, 32)).shape == (2, 7)
    assert torch.equal(longer.pos_embed[:, :2], hf_pos[:, :2])
    shorter = load_model(hf_dir, input_frames=40)  # time grid 4 -> 2: columns 1 and 2 of each frequency row
    expected = hf_pos[:, 2:].reshape(1, 2, 4, 64)[:, :, 1:3].reshape(1, 4, 64)
    assert torch.equal(shorter.pos_embed[:, 2:], expected)
    assert shorter(torch.randn(1, 40, 32)).shape == (1, 7)
    with pytest.raises(ConfigError, match="smaller than one"):
        load_model(hf_dir, input_frames=8)


# ---- bad input -------------------------------------------------------------------------------------------------


def test_missing_and_unrecognised_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "nope.pth")
    assert_one_line_error(err, "nope.pth", "does not exist", "Hugging Face AST directory", "save_checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert_one_line_error(err, str(tmp_path), "no config.json")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as err:
        load_model(junk)
    assert_one_line_error(err, "junk.bin", "original AST .pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as err:
        load_model(text)
    assert_one_line_error(err, "notes.txt")


def test_truncated_safetensors(tmp_path: Path) -> None:
    data = save_checkpoint(small_model(), tmp_path / "m.safetensors").read_bytes()
    for size in (len(data) // 2, 20, 4):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as err:
            load_model(cut)
        assert_one_line_error(err, cut.name)


def test_damaged_cnn_checkpoint_is_reported_as_one(tmp_path: Path) -> None:
    from fastast_deploy.checkpoints.cnn import load_cnn, save_cnn
    from fastast_deploy.checkpoints.loading import load_any
    from fastast_deploy.checkpoints.metadata import CNN_METADATA_KEY
    from fastast_deploy.model.cnn import CNNClassifier, CNNConfig

    path = save_cnn(CNNClassifier(CNNConfig(3, 48, 32, "compact", 4)), tmp_path / "cnn.safetensors",
                    label_names=["a", "b", "c"])
    data = path.read_bytes()
    key_end = data.index(f'"{CNN_METADATA_KEY}"'.encode()) + len(CNN_METADATA_KEY) + 2
    meta = load_file(path)
    header = json.dumps(json.loads(safe_metadata(path)[CNN_METADATA_KEY]))
    cases = {
        "tensors cut": (lambda p: p.write_bytes(data[: len(data) - 100]), "its tensors are cut short"),
        "header cut": (lambda p: p.write_bytes(data[: key_end + 20]), "its safetensors header is cut or corrupt"),
        "metadata JSON cut": (lambda p: save_file(meta, p, metadata={CNN_METADATA_KEY: header[:-10]}),
                              "its metadata is not valid JSON"),
    }
    for name, (damage, why) in cases.items():
        damaged = tmp_path / f"{name.replace(' ', '-')}.safetensors"
        damage(damaged)
        for load in (load_any, load_cnn):
            with pytest.raises(CheckpointError) as err:
                load(damaged)
            assert_one_line_error(err, f"{damaged} is a damaged CNN checkpoint", why)
            assert "without fastast-deploy metadata" not in str(err.value)


def safe_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_foreign_safetensors_and_bin_point_to_the_directory(hf_dir: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_model(hf_dir / "model.safetensors")
    assert_one_line_error(err, "holds Hugging Face AST weights", f"pass the directory {hf_dir}")
    bin_path = hf_dir.parent / "pytorch_model.bin"
    torch.save(load_file(hf_dir / "model.safetensors"), bin_path)
    with pytest.raises(CheckpointError) as err:
        load_model(bin_path)
    assert_one_line_error(err, "Hugging Face AST weights", "config.json")


def test_key_and_shape_mismatches_are_counted(tmp_path: Path) -> None:
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    tensors = load_file(path)
    del tensors["blocks.0.attn.qkv.weight"], tensors["norm.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    tensors["head.weight"] = torch.zeros(10, 64)
    meta = {"fastast_deploy": json.dumps(read_checkpoint_metadata(path))}
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "bad.safetensors")
    assert_one_line_error(
        err,
        "does not match the model",
        "2 missing keys (blocks.0.attn.qkv.weight, norm.bias)",
        "1 unexpected key (extra.weight)",
        "1 shape mismatch (head.weight: checkpoint (10, 64) vs model (3, 64))",
    )


def test_original_pth_missing_key(make_hf_model, tmp_path: Path) -> None:
    _, state = original_reference(make_hf_model, tmp_path, stride=10, frames=128, labels=35)
    del state["v.blocks.1.norm1.bias"]
    torch.save(state, tmp_path / "ast.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "ast.pth")
    assert_one_line_error(err, "1 missing key (blocks.1.norm1.bias)")


class RunsCode:
    """Unpickling this object would create a file: what an unsafe checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle below
def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"module.v.cls_token": RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "evil.pth")
    assert_one_line_error(err, "refusing to load", "evil.pth")
    with (tmp_path / "evil.pkl").open("wb") as f:
        pickle.dump({"module.v.cls_token": RunsCode(marker)}, f)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_label_csv(hf_dir: Path, tmp_path: Path) -> None:
    rows = [f'{i},/m/{i:04d},"name, {i}"' for i in range(7)]
    good = tmp_path / "labels.csv"
    good.write_text("index,mid,display_name\n" + "\n".join(rows) + "\n")
    model = load_model(hf_dir, labels=good)
    assert model.label_names == tuple(f"name, {i}" for i in range(7))
    assert str(good) in model.source_info["sha256"]
    short = tmp_path / "short.csv"
    short.write_text("index,mid,display_name\n" + "\n".join(rows[:5]) + "\n")
    with pytest.raises(CheckpointError) as err:
        load_model(hf_dir, labels=short)
    assert_one_line_error(err, "5 label names", "7 outputs")
    with pytest.raises(CheckpointError) as err:
        load_model(hf_dir, labels=tmp_path / "absent.csv")
    assert_one_line_error(err, "absent.csv", "index,mid,display_name")


def test_bad_tome_settings(hf_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(hf_dir, tome_r=-1)
    assert_one_line_error(err, "r must be >= 0")
    with pytest.raises(ConfigError):
        load_model(hf_dir, tome_r=[1, 1, 1])  # 3 values for 2 blocks
    with pytest.raises(ConfigError):
        load_model(hf_dir, merge_impl="magic")


def test_a_training_run_directory_reads_as_its_best_checkpoint(tmp_path: Path) -> None:
    """Every reader of SOURCE (load_model as export, info, bench and tune use it) takes a run for its best."""
    config = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_labels=3)
    torch.manual_seed(0)
    model = build_model(config, TomeConfig((4, 4))).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(model, run / "best", label_names=("a", "b", "c"))
    loaded = load_model(run)
    assert loaded.schedule == model.schedule and loaded.label_names == ("a", "b", "c")
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
