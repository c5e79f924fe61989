"""tune: the search against hand-made cases whose answer is known (fake scorer, cost and timings), the held-out
figures on clips the search never saw, the chosen schedule taken by export and info, resuming, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.audio.features import load_batch
from fastast_deploy.audio.synthetic import make_classes, render_clip
from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.evaluation import tune_run
from fastast_deploy.evaluation.tune import Budget, Candidate, Search, Target, choose, split_clips, to_time
from fastast_deploy.evaluation.tune_measure import TorchScorer
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.flops import flop_ratio
from fastast_deploy.model.schedule import clip_schedule, token_counts

# ---- the search on a hand-made case -------------------------------------------------------------------------------

TOKENS, DEPTH = 200, 4


def fake_cost(schedule: tuple[int, ...]) -> float:
    """Tokens entering and leaving each block without merging over those with it: more merging, more speed."""
    return sum(token_counts(TOKENS, (0,) * DEPTH)) / sum(token_counts(TOKENS, schedule))


def fake_score(schedule: tuple[int, ...]) -> float:
    """Only the last block is sensitive: half a point per token merged there."""
    return 90.0 - 0.5 * schedule[-1]


def test_search_finds_the_known_best_schedule_within_the_drop() -> None:
    # Within 1 point the last block may merge 2 tokens; every other block merges all it can: (99, 49, 25, 2).
    search = Search(TOKENS, DEPTH, Target(max_drop=1.0), Budget(candidates=200), fake_cost, fake_score)
    results = search.run()
    best = search.best()
    assert best is not None and best.schedule == (99, 49, 25, 2)
    assert best.drop == pytest.approx(1.0)
    assert len({c.schedule for c in results}) == len(results)  # each schedule scored once
    # No constant r reaches it: the best constant within the drop is r = 2.
    constants = [c for c in results if c.kind == "constant" and c.drop <= 1.0]
    assert max(c.flop_ratio for c in constants) < best.flop_ratio
    assert max(constants, key=lambda c: c.flop_ratio).schedule == (2, 2, 2, 2)


def test_search_for_a_speedup_keeps_the_sensitive_block_free() -> None:
    wanted = fake_cost((99, 49, 25, 0)) - 0.01
    search = Search(TOKENS, DEPTH, Target(speedup=wanted), Budget(candidates=200), fake_cost, fake_score)
    search.run()
    best = search.best()
    assert best is not None and best.schedule[-1] == 0 and best.flop_ratio >= wanted
    assert best.metric == 90.0


def test_choice_is_by_measured_speed_and_never_slower_than_the_best_constant() -> None:
    search = Search(TOKENS, DEPTH, Target(max_drop=1.0), Budget(candidates=200), fake_cost, fake_score)
    results = search.run()
    timed = to_time(results, search, limit=3)
    assert timed[0].kind == "baseline" and any(c.kind == "constant" for c in timed)
    # measured: the highest FLOP ratio runs slower than the runner-up (memory-bound, say)
    by_flops = sorted((c for c in timed if c.kind != "baseline"), key=lambda c: -c.flop_ratio)
    for c in timed:
        c.speedup = 1.0 if c.kind == "baseline" else c.flop_ratio * 0.8
    by_flops[0].speedup = by_flops[1].speedup * 0.9
    chosen, closest = choose(timed, search.target)
    assert chosen is by_flops[1] and closest is None
    best_constant = max((c for c in timed if c.kind == "constant"), key=lambda c: c.speedup or 0)
    assert chosen.speedup >= best_constant.speedup


def test_a_target_nothing_meets_names_the_closest() -> None:
    base = Candidate((0, 0), "baseline", "r=0", metric=80, drop=0, speedup=1.0)
    a = Candidate((4, 4), "constant", "r=4", 1.3, metric=77, drop=3, speedup=1.25)
    b = Candidate((8, 8), "constant", "r=8", 1.6, metric=70, drop=10, speedup=1.5)
    assert choose([base, a, b], Target(max_drop=1)) == (None, a)  # the smallest drop
    assert choose([base, a, b], Target(speedup=2)) == (None, b)  # the fastest


def test_budget_in_candidates_stops_the_search() -> None:
    search = Search(TOKENS, DEPTH, Target(max_drop=1.0), Budget(candidates=5), fake_cost, fake_score)
    assert len(search.run()) == 5 and search.exhausted
    assert Budget.parse("10m") == Budget(candidates=None, minutes=10.0)
    for bad in ("0", "x", "-3m"):
        with pytest.raises(Exception, match="--budget"):
            Budget.parse(bad)


def test_held_out_split_is_disjoint_and_stratified() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 2
    search, held = split_clips(labels, 0.3, seed=1)
    assert not set(search) & set(held) and len(search) + len(held) == len(labels)
    assert [int(np.sum(np.asarray(labels)[held] == k)) for k in range(3)] == [3, 2, 1]


# ---- the command on a tiny model ----------------------------------------------------------------------------------

CLASSES = make_classes(3, seed=5)
TINY = ModelConfig.from_size("tiny", depth=2, input_frames=64, num_mel_bins=64, num_labels=len(CLASSES))
FEATURES = FeatureConfig(num_mel_bins=64, frames=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig())
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                           label_names=[c.name for c in CLASSES], feature_config=FEATURES,
                           extra={"task": "singlelabel"})


def write_clips(folder: Path, per_class: int, seed: int) -> list[Path]:
    paths = []
    for cls in CLASSES:
        (folder / cls.name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            path = folder / cls.name / f"{k}.wav"
            sf.write(path, render_clip([cls], 10240, np.random.default_rng([seed, cls.index, k])), 16000)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    write_clips(root / "search", 6, seed=1)
    write_clips(root / "test", 4, seed=2)
    return root / "search", root / "test"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def fake_timings(rates: dict[str, float] | None = None):
    """time_schedules' stand-in: clips/s = 100 x FLOP ratio (or ``rates`` by label)."""
    def timings(source, schedules, options, model, workdir):
        out = {}
        for label, schedule in schedules.items():
            rate = (rates or {}).get(label, 100.0 * flop_ratio(model.config, schedule))
            out[label] = {"clips_per_s": rate, "latency_ms_p50": 1000 * options.batch / rate}
        return out
    return timings


def test_tune_chooses_reports_held_out_and_export_takes_it(checkpoint: Path, data: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "tune"
    code, text = invoke("tune", str(checkpoint), "--data", str(data[0]), "--test", str(data[1]), "--max-drop", "20",
                        "--backend", "onnxruntime", "--rounds", "2", "--warmup", "0", "--batch", "2", "--timed", "2",
                        "--threads", "1", "-o", str(out))
    assert code == 0, text
    report = json.loads((out / "tune.json").read_text())
    chosen = report["chosen"]
    assert chosen is not None and chosen["drop"] <= 20 and any(chosen["schedule"])
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "candidate" in text and "chosen" in text and "held out (12 clips" in text
    assert report["clips"] == {"search": 18, "held_out": 12}
    # every candidate's figures; r = 0 and the best constant r were timed with the choice
    timed = [c for c in report["candidates"] if c["timed"]]
    assert {c["kind"] for c in timed} >= {"baseline", "constant"}
    best_constant = report["best_constant"]
    assert chosen["speedup"] >= best_constant["speedup"]
    # the held-out figure is the accuracy of that schedule on the --test clips, computed here independently
    paths = sorted(data[1].glob("*/*.wav"))
    truth = [[c.name for c in CLASSES].index(p.parent.name) for p in paths]
    for schedule, figure in ((chosen["schedule"], chosen["held_out"]["metric"]), ([0, 0], None)):
        model = load_model(checkpoint, tome_r=schedule)
        with torch.no_grad():
            top = model(load_batch(paths, model.feature_config)).argmax(dim=1).numpy()
        accuracy = 100 * float(np.mean(top == truth))
        if figure is not None:
            assert figure == pytest.approx(accuracy, abs=1e-4)
        else:
            assert chosen["held_out"]["drop"] == pytest.approx(accuracy - chosen["held_out"]["metric"], abs=1e-4)
    lo, hi = chosen["held_out"]["interval"]
    assert lo <= chosen["held_out"]["drop"] <= hi
    # export and info take the choice unchanged
    onnx = tmp_path / "chosen.onnx"
    code, text = invoke("export", str(checkpoint), "--tome-r", f"@{out / 'tune.json'}", "-o", str(onnx), "--no-check")
    assert code == 0, text
    sidecar = json.loads(Path(f"{onnx}.json").read_text())
    assert json.dumps(chosen["schedule"]) in json.dumps(sidecar)
    assert f"r per block {chosen['schedule']}" in text
    code, text = invoke("info", str(checkpoint), "--tome-r", f"@{out}", "--json")
    assert code == 0, text
    assert json.loads(text)["gflops"]["ratio"] == pytest.approx(chosen["flop_ratio"])
    # and bench compares it beside constant r: its engine built at the chosen schedule, its row named by it
    code, text = invoke("bench", str(checkpoint), "--tome-r", f"0,@{out}", "--rounds", "1", "--warmup", "0",
                        "--batch", "2", "--threads", "1", "-o", str(tmp_path / "bench"))
    assert code == 0, text
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [row["r"] for row in rows] == [0, chosen["schedule"]]
    assert rows[1]["effective_schedule"] == chosen["schedule"]
    assert rows[1]["flop_ratio"] == pytest.approx(chosen["flop_ratio"])
    assert ",".join(map(str, chosen["schedule"])) in text
    assert (tmp_path / "bench" / f"r{'-'.join(map(str, chosen['schedule']))}.onnx").is_file()


def test_held_out_clips_are_never_scored_by_the_search(checkpoint: Path, data: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = tune_run.Windows.__init__

    def spy(self, files, features, progress=None):
        real_init(self, files, features, progress)
        self.files = {str(f) for f in files}

    scored = []
    real_call = TorchScorer.__call__
    monkeypatch.setattr(tune_run.Windows, "__init__", spy)
    monkeypatch.setattr(TorchScorer, "__call__",
                        lambda self, s, w: scored.append((s, w.files)) or real_call(self, s, w))
    monkeypatch.setattr(tune_run, "time_schedules", fake_timings())
    code, text = invoke("tune", str(checkpoint), "--data", str(data[0]), "--max-drop", "5", "--backend", "pytorch",
                        "--budget", "6", "-o", str(tmp_path / "t"))
    assert code in (0, 1), text
    report = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert report["clips"] == {"search": 12, "held_out": 6}
    search_files = {f for s, files in scored if len(files) == 12 for f in files}
    held_files = {f for s, files in scored if len(files) == 6 for f in files}
    assert len(search_files) == 12 and len(held_files) == 6 and not search_files & held_files
    # the held-out clips were scored only after the search, for the schedules reported on
    first_held = next(i for i, (_, files) in enumerate(scored) if files == held_files)
    assert all(files == held_files for _, files in scored[first_held:])
    assert len(scored) - first_held <= 3


def test_interrupted_search_resumes_and_writes_no_tune_json(checkpoint: Path, data: tuple[Path, Path],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "t"
    monkeypatch.setattr(tune_run, "time_schedules", fake_timings())
    real_call = TorchScorer.__call__
    calls = []

    def interrupted(self, schedule, windows):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((tuple(schedule), windows.clips))
        return real_call(self, schedule, windows)

    monkeypatch.setattr(TorchScorer, "__call__", interrupted)
    args = ("tune", str(checkpoint), "--data", str(data[0]), "--max-drop", "5", "--backend", "pytorch", "--budget",
            "6", "-o", str(out))
    code, text = invoke(*args)
    assert code == 130 and "Interrupted" in text
    assert not (out / "tune.json").exists()
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 3
    with (out / "candidates.jsonl").open("a") as f:
        f.write('{"schema": "fastast-deploy/tune-candidate", "key": "cut sh')  # a line cut short
    first, again = list(calls), []
    monkeypatch.setattr(TorchScorer, "__call__",
                        lambda self, s, w: again.append((tuple(s), w.clips)) or real_call(self, s, w))
    code, text = invoke(*args)
    assert code in (0, 1), text
    assert (out / "tune.json").is_file()
    assert again and not set(first) & set(again)  # what was measured before is not measured again
    code, text = invoke(*args, "--restart")
    assert code in (0, 1), text


def test_bad_input_is_one_line(checkpoint: Path, data: tuple[Path, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_run, "time_schedules", fake_timings())
    base = ("tune", str(checkpoint), "--backend", "pytorch", "--budget", "4")
    empty = tmp_path / "empty" / "tone 1-2 Hz"
    empty.mkdir(parents=True)
    unknown = tmp_path / "unknown" / "dog"
    unknown.mkdir(parents=True)
    sf.write(unknown / "a.wav", np.zeros(8000, np.float32), 16000)
    cases = [
        ((*base, "--data", str(empty.parent), "--max-drop", "1", "-o", str(tmp_path / "a")), 1, "no clips"),
        ((*base, "--data", str(unknown.parent), "--max-drop", "1", "-o", str(tmp_path / "b")), 1, "dog"),
        ((*base, "--data", str(data[0]), "--speedup", "50", "-o", str(tmp_path / "c")), 2, "FLOP ratio of the largest"),
        ((*base, "--data", str(data[0]), "-o", str(tmp_path / "d")), 2, "--max-drop"),
        ((*base, "--data", str(data[0]), "--max-drop", "nan", "-o", str(tmp_path / "e")), 2, "finite"),
    ]
    for args, exit_code, fragment in cases:
        code, text = invoke(*args)
        assert code == exit_code and fragment in text, text
        assert "Traceback" not in text
        assert not (Path(args[-1]) / "tune.json").exists()
    # a speed-up no timed schedule reaches: exit 1, the closest named, the candidates kept, and no schedule to take
    monkeypatch.setattr(tune_run, "time_schedules", _flat)
    top = clip_schedule(TINY.num_tokens, (TINY.num_tokens,) * TINY.depth)
    out = tmp_path / "f"
    code, text = invoke(*base, "--data", str(data[0]), "--speedup", f"{flop_ratio(TINY, top) - 0.01:.3f}",
                        "-o", str(out))
    assert code == 1 and "no schedule reached" in text and "closest is" in text, text
    assert json.loads((out / "tune.json").read_text())["chosen"] is None
    code, text = invoke("export", str(checkpoint), "--tome-r", f"@{out}", "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "chose no schedule" in text, text


def _flat(source, schedules, options, model, workdir):
    """Every schedule as fast as r = 0."""
    return {label: {"clips_per_s": 100.0, "latency_ms_p50": 10.0} for label in schedules}


def test_a_schedule_set_in_place_runs_as_a_model_built_with_it() -> None:
    config = ModelConfig.from_size("tiny", depth=3, input_frames=64, num_labels=4)
    torch.manual_seed(0)
    model = build_model(config, TomeConfig((0, 0, 0))).eval()
    built = build_model(config, TomeConfig((20, 9, 4), prop_attn=False)).eval()
    built.load_state_dict(model.state_dict())
    model.set_tome(TomeConfig((20, 9, 4), prop_attn=False))
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(1))
    assert model.schedule == built.schedule == clip_schedule(config.num_tokens, (20, 9, 4))
    with torch.no_grad():
        assert torch.equal(model(x), built(x))
