"""The command line: help without optional packages, info, export and its errors (one line, no file left)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from fastast_deploy import __version__
from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=3, input_frames=128, num_labels=5)
LABELS = ("dog", "rain", "siren", "speech", "wind")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", label_names=LABELS)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def assert_one_line_failure(code: int, output: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_help_works_without_optional_packages(tmp_path: Path) -> None:
    # Every command's --help with onnxruntime, tensorrt and transformers blocked from import.
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnxruntime", "tensorrt", "transformers", "polygraphy"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from click.testing import CliRunner
from fastast_deploy.cli.main import cli
runner = CliRunner()
names = [[]] + [[name] for name in cli.commands]
for args in names:
    result = runner.invoke(cli, args + ["--help"])
    assert result.exit_code == 0, (args, result.output, result.exception)
    assert "Usage:" in result.output
print(len(names))
"""
    # cwd outside the source tree: `python -c` puts cwd first on sys.path, where it would shadow the install.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 4  # the group and at least info, export, lint


def test_version() -> None:
    code, out = run("--version")
    assert code == 0 and __version__ in out


def test_info_on_a_checkpoint(checkpoint: Path) -> None:
    code, out = run("info", str(checkpoint), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["token_counts"] == [146, 138, 130, 122]  # the checkpoint's own r = 8
    assert report["labels"] == list(LABELS)
    assert report["gflops"]["ratio"] > 1
    code, out = run("info", str(checkpoint), "--tome-r", "0")
    assert code == 0 and "146 -> 146 -> 146 -> 146" in out and "1.00x fewer" in out


def test_info_reports_clipping() -> None:
    code, out = run("info", "tiny", "--frames", "128", "--tome-r", "100")
    assert code == 0 and "clipped" in out and "-> 3" in out


def test_export_uses_the_checkpoint_schedule_and_labels(checkpoint: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "new" / "dir" / "model.onnx"  # missing directories are created
    code, out = run("export", str(checkpoint), "-o", str(out_path), "--debug-merges")
    assert code == 0, out
    sidecar = json.loads(Path(f"{out_path}.json").read_text())
    assert sidecar["tome"]["effective_schedule"] == [8, 8, 8]
    assert sidecar["labels"] == list(LABELS)
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and sidecar["parity"]["merge_agreement"] == 1.0
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"fbank": np.zeros((2, 128, 128), np.float32)})
    assert outputs[0].shape == (2, 5) and len(outputs) == 7


def test_export_reports_clipped_r(checkpoint: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--tome-r", "60",
                                      "--no-check"])
    assert result.exit_code == 0, result.output
    assert "r clipped" in result.output and "block 1: 60 -> 42; block 2: 60 -> 21" in result.output
    counts = json.loads((tmp_path / "m.onnx.json").read_text())["tome"]["token_counts"]
    assert counts == [146, 86, 44, 23]  # (86 - 2) // 2 = 42, (44 - 2) // 2 = 21


def bad_output_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_dir").mkdir()
    return {
        "directory": (str(tmp_path / "a_dir"), "is a directory"),
        "under a file": (str(a_file / "m.onnx"), "which is a file"),
    }


@pytest.mark.parametrize("case", ["directory", "under a file"])
def test_export_bad_output_paths(checkpoint: Path, tmp_path: Path, case: str) -> None:
    target, fragment = bad_output_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert_one_line_failure(*run("export", str(checkpoint), "-o", target), fragment)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_export_unwritable_output(checkpoint: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        target = Path("/sys/fastast-model.onnx")
        if os.access("/sys", os.W_OK) and not Path("/sys").is_mount():
            pytest.skip("no read-only location to write to")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "m.onnx"
    code, out = run("export", str(checkpoint), "-o", str(target), "--no-check")
    assert_one_line_failure(code, out, str(target.parent))
    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--tome-r", "-3"], "r must be >= 0"),
        (["--tome-r", "4,x"], "comma-separated list of ints"),
        (["--frames", "8"], "smaller than one 16x16 patch"),
        (["--tome-r", "4", "--tome-schedule", "4,4"], "either --tome-r or --tome-schedule"),
    ],
)
def test_export_bad_settings(checkpoint: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_failure(*run("export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_export_unknown_source(tmp_path: Path) -> None:
    code, out = run("export", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "m.onnx"))
    assert_one_line_failure(code, out, "nope.pth")
    assert not (tmp_path / "m.onnx").exists()


def test_installed_console_script_exits_cleanly_on_bad_input(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "fastast-deploy"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(exe), "info", str(tmp_path / "missing.pth")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
