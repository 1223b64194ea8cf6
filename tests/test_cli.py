"""`splice-tune train` end to end on tiny inputs (random_tiny8 ViT, NOT DINO), and the search summary printer.

Runs `splice_tune.cli.main` in-process, as the console script does, in a fresh working folder.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import splice_model
import splice_model.train
from conftest import make_appearance_image, make_structure_image
from splice_tune.cli import _print_summary, main

TINY = ["--vit", "random_tiny8", "--max-side", "48", "--vit-size", "48", "--device", "cpu"]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_structure_image((48, 40)).save(tmp_path / "s.png")
    make_appearance_image((40, 40)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["splice-tune", *args])
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, _ANSI.sub("", out), _ANSI.sub("", err)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_train_writes_image_and_checkpoint_scores_from_the_final_eval(work, monkeypatch, capsys):
    calls = []
    real_evaluate = splice_model.train.SpliceTrainer.evaluate
    monkeypatch.setattr(splice_model.train.SpliceTrainer, "evaluate",
                        lambda self: calls.append(self.step) or real_evaluate(self))
    code, _, err = run_cli(["train", "s.png", "a.png", *TINY, "--steps", "4", "--eval-every", "2", "--out", "o.png"],
                           capsys, monkeypatch)
    assert code == 0, err
    assert calls == [2, 4]  # the loop's evals only: the final one is not repeated after the loop
    assert (work / "o.png").is_file() and (work / "o.pt").is_file()
    _, config, metadata = splice_model.load_checkpoint(work / "o.pt")
    assert config.vit == "random_tiny8" and config.steps == 4
    [final] = [line for line in err.splitlines() if line.startswith("wrote o.png and o.pt")]
    assert metadata["step"] == 4 and f"splice_score {metadata['scores']['splice_score']:.4f}" in final
    assert "NOT DINO (random-weight ViT random_tiny8)" in final
    assert "Traceback" not in err


def test_train_diverging_is_one_line_exit_1_nothing_written(work, capsys, monkeypatch):
    before = sorted(path.name for path in work.iterdir())
    code, out, err = run_cli(["train", "s.png", "a.png", *TINY, "--steps", "20", "--lr", "1e9"], capsys, monkeypatch)
    assert code == 1
    assert "Traceback" not in out + err
    [line] = error_lines(err)
    assert re.search(r"training diverged at step \d+ \(non-finite loss\); lower --lr", line), line
    assert sorted(path.name for path in work.iterdir()) == before


def test_train_writes_the_image_before_the_checkpoint(work, capsys, monkeypatch):
    def disk_full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(splice_model, "save_checkpoint", disk_full)
    code, _, err = run_cli(["train", "s.png", "a.png", *TINY, "--steps", "2", "--out", "o.png"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    assert "cannot write o.pt: No space left on device" in line and "o.png was written" in line
    assert (work / "o.png").is_file() and not (work / "o.pt").exists()


class _Validated(Exception):
    pass


@pytest.mark.parametrize("flags, vit_size, vit_max_side", [
    (["--vit-size", "500"], 500, 500),  # above the default cap (480): the cap follows
    (["--vit-size", "112"], 112, 480),  # below it: the cap stays
])
def test_train_vit_size_raises_the_long_side_cap(work, capsys, monkeypatch, flags, vit_size, vit_max_side):
    seen = {}

    def record(self, structure, appearance, config=None, features=None):
        seen["config"] = config
        raise _Validated

    monkeypatch.setattr(splice_model.train.SpliceTrainer, "__init__", record)
    monkeypatch.setattr(sys, "argv", ["splice-tune", "train", "s.png", "a.png", "--vit", "random_tiny8", *flags])
    with pytest.raises(_Validated):
        main()
    assert (seen["config"].vit_size, seen["config"].vit_max_side) == (vit_size, vit_max_side)
    assert "error" not in capsys.readouterr().err


def _summary(metric: str, **extra) -> SimpleNamespace:
    pair = SimpleNamespace(pair="cows", score=0.5, counts={"finished": 2, "stopped early": 1, "failed": 0},
                           params={"alpha": "0.123456"}, run_id="abc123")
    return SimpleNamespace(name="demo", experiment_id="1", tracking_uri="sqlite:///x.db", metric=metric,
                           pairs=[pair], **extra)


def test_summary_names_the_metric_in_the_best_hint_and_warns_about_random_vits(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    _print_summary(_summary("structure_score", vit="random_tiny8"))
    out = _ANSI.sub("", capsys.readouterr().out)
    assert "splice-tune best --pair cows --search demo --by structure" in out
    assert "NOT DINO (random-weight ViT random_tiny8)" in out

    _print_summary(_summary("splice_score", vit="dino_vitb8"))
    out = _ANSI.sub("", capsys.readouterr().out)
    assert "splice-tune best --pair cows --search demo\n" in out and "NOT DINO" not in out

    _print_summary(_summary("splice_score"))  # a summary without a vit field (older driver)
    assert "NOT DINO" not in capsys.readouterr().out
