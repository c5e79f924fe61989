"""Parsers of user files fail with one FastASTError naming the file and what was wrong, never another exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastast_deploy.audio.datasets import read_esc50_csv
from fastast_deploy.audio.labels import read_label_csv
from fastast_deploy.engines.base import EngineError
from fastast_deploy.engines.feeds import read_npz_array
from fastast_deploy.engines.schema import SIDECAR, check_fields
from fastast_deploy.errors import ConfigError, DatasetError, FastASTError, VerifyUsageError
from fastast_deploy.model.config import ModelConfig


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("num_heads", 0, "num_heads must be 1 to"), ("embed_dim", float("inf"), "embed_dim must be an integer"),
    ("depth", True, "depth must be an integer"), ("input_frames", 10**9, "input_frames must be 1 to"),
    ("layer_norm_eps", float("nan"), "layer_norm_eps must be a number in (0, 1)"),
])
def test_model_config_values_are_bounded(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{field: value})


def test_a_geometry_too_large_for_memory_is_refused() -> None:
    with pytest.raises(ConfigError, match="tokens"):
        ModelConfig(input_frames=100_000, num_mel_bins=1024, fstride=4, tstride=4)


@pytest.mark.parametrize(("content", "fragment"), [
    ("index,mid,display_name\n0,/m/0\n", "line 2"),
    ("index,mid,display_name\n0,/m/0,a\x00b\n", "NUL"),
    ("index,mid,display_name\nx,/m/0,a\n", "non-integer index"),
])
def test_label_csv_rows(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=fragment) as err:
        read_label_csv(path)
    assert str(path) in str(err.value)


def test_label_csv_in_another_encoding(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes("index,mid,display_name\n0,/m/0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_label_csv(path)


@pytest.mark.parametrize(("rows", "fragment"), [
    ("a.wav,x,0,dog\n", "fold 'x' is not a whole number"),
    ("a.wav,1\n", "expected a value in each of"),
])
def test_esc50_rows(tmp_path: Path, rows: str, fragment: str) -> None:
    path = tmp_path / "esc50.csv"
    path.write_text("filename,fold,target,category\n" + rows, encoding="utf-8")
    with pytest.raises(DatasetError, match=fragment):
        read_esc50_csv(path)


def test_npz_of_strings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, fbank=np.array(["a", "b"]))
    with pytest.raises(VerifyUsageError, match="dtype"):
        read_npz_array(path, "fbank", VerifyUsageError)


@pytest.mark.parametrize(("patch", "field"), [
    ({"batch": {"min": "1", "opt": 1, "max": None}}, "batch.min"),
    ({"engine": {"file": "x", "sha256": 5}}, "engine.sha256"),
    ({"export": {"inputs": {}, "outputs": {}, "model": [], "tome": {}, "precision": "fp32", "opset": 18}},
     "export.model"),
])
def test_sidecar_fields_of_the_wrong_type(patch: dict, field: str) -> None:
    good = {"engine": {"file": "e", "sha256": "0"}, "source": {"sha256": "0"}, "batch": {"min": 1, "opt": 1, "max": 8},
            "inputs": {"fbank": {"shape": ["batch", 8, 4], "dtype": "float32"}},
            "outputs": {"logits": {"shape": ["batch", 2], "dtype": "float32"}}, "precision": "fp32",
            "versions": {"onnxruntime": "1"},
            "export": {"inputs": {}, "outputs": {}, "model": {"input_frames": 8, "num_mel_bins": 4, "num_labels": 2,
                                                             "depth": 1, "embed_dim": 8},
                       "tome": {"effective_schedule": [0], "token_counts": [4, 4], "schedule": [0]},
                       "precision": "fp32", "opset": 18}}
    assert check_fields(good, SIDECAR, "sidecar s.json", "rebuild") is good
    with pytest.raises(EngineError, match=field.replace(".", r"\.")) as err:
        check_fields({**good, **patch}, SIDECAR, "sidecar s.json", "rebuild")
    assert isinstance(err.value, FastASTError) and "s.json" in str(err.value)
