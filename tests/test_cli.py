"""`splice-tune train` end to end on tiny inputs (random_tiny8 ViT, NOT DINO), and the search summary printer.

Runs `splice_tune.cli.main` in-process, as the console script does, in a fresh working folder.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_appearance_image, make_structure_image

import splice_model
import splice_model.train
from splice_model.presets import VIT_PRESETS
from splice_tune.cli import _print_summary, main
from splice_tune.formatting import number

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
    monkeypatch.setattr(
        splice_model.train.SpliceTrainer, "evaluate", lambda self: calls.append(self.step) or real_evaluate(self)
    )
    code, _, err = run_cli(
        ["train", "s.png", "a.png", *TINY, "--steps", "4", "--eval-every", "2", "--out", "o.png"], capsys, monkeypatch
    )
    assert code == 0, err
    assert calls == [2, 4]  # the loop's evals only: the final one is not repeated after the loop
    assert (work / "o.png").is_file() and (work / "o.pt").is_file()
    _, config, metadata = splice_model.load_checkpoint(work / "o.pt")
    assert config.vit == "random_tiny8" and config.steps == 4
    [final] = [line for line in err.splitlines() if line.startswith("wrote o.png and o.pt")]
    assert metadata["step"] == 4 and f"splice_score {number(metadata['scores']['splice_score'])}" in final
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


def test_train_saves_the_checkpoint_before_rendering(work, capsys, monkeypatch):
    """A render that fails (a device that cannot hold the full-resolution output) loses no training."""

    def render_fails(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(splice_model, "render", render_fails)
    code, _, err = run_cli(["train", "s.png", "a.png", *TINY, "--steps", "2", "--out", "o.png"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    assert "cannot write o.png: CUDA error: an illegal memory access" in line and "saved in o.pt" in line
    assert (work / "o.pt").is_file() and not (work / "o.png").exists()
    assert splice_model.load_checkpoint(work / "o.pt")[2]["step"] == 2


def test_train_with_a_full_disk_writes_nothing(work, capsys, monkeypatch):
    def disk_full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(splice_model, "save_checkpoint", disk_full)
    code, _, err = run_cli(["train", "s.png", "a.png", *TINY, "--steps", "2", "--out", "o.png"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    assert "cannot write o.pt: No space left on device; nothing written" in line
    assert not (work / "o.png").exists() and not (work / "o.pt").exists()


class _Validated(Exception):
    pass


@pytest.mark.parametrize(
    "flags, vit_size, vit_max_side",
    [
        (["--vit-size", "500"], 500, 500),  # above the default cap (480): the cap follows
        (["--vit-size", "112"], 112, 480),  # below it: the cap stays
    ],
)
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
    pair = SimpleNamespace(
        pair="cows",
        score=0.5,
        counts={"finished": 2, "stopped early": 1, "failed": 0},
        params={"alpha": "0.123456"},
        run_id="abc123",
    )
    return SimpleNamespace(
        name="demo", experiment_id="1", tracking_uri="sqlite:///x.db", metric=metric, pairs=[pair], **extra
    )


def test_summary_names_the_metric_in_the_best_hint_and_warns_about_random_vits(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    _print_summary(_summary("structure_score", vit="random_tiny8"))
    out = _ANSI.sub("", capsys.readouterr().out)
    assert "splice-tune best --pair cows --search demo --by structure" in out
    assert re.search(r"│ cows\s+│ 0\.5\s+│.*alpha=0\.1235 ", out), out  # 4 significant digits
    assert "NOT DINO (random-weight ViT random_tiny8)" in out

    _print_summary(_summary("splice_score", vit="dino_vitb8"))
    out = _ANSI.sub("", capsys.readouterr().out)
    assert "splice-tune best --pair cows --search demo\n" in out and "NOT DINO" not in out

    _print_summary(_summary("splice_score"))  # a summary without a vit field (older driver)
    assert "NOT DINO" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ CLI habits

SCRIPT = Path(sys.executable).with_name("splice-tune")


def script(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """The installed console script, as a shell or a user runs it."""
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
    )


def test_version_prints_the_installed_version():
    done = script(["--version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"splice-tune {importlib.metadata.version('splice-tune')}\n"


@pytest.mark.parametrize(
    "words, expected",
    [
        ("splice-tune se", ["search"]),
        ("splice-tune best --by s", ["splice", "structure"]),
        ("splice-tune search pairs.csv --space ", ["cpu_real", "default", "paper", "quick"]),
        ("splice-tune train s.png a.png --vit random", ["random_tiny8", "random_tiny16"]),
        ("splice-tune best --by judge", ["judge", "judge_structure", "judge_appearance"]),
    ],
)
def test_shell_completion_completes_commands_and_choices(words, expected):
    done = script(
        [], _SPLICE_TUNE_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected
    shown = script(["--show-completion", "bash"])
    assert shown.returncode == 0 and "_SPLICE_TUNE_COMPLETE=complete_bash" in shown.stdout


def help_rows(command: list[str]) -> dict[str, str]:
    """--help's option rows: option name -> the rest of its first line (type column and help)."""
    done = script([*command, "--help"])
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        match = re.match(r"│ (--[a-z-]+)(?:\s+-[a-z])?\s+(.*?)\s*│$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_help_shows_flags_as_flags_and_lists_choices():
    root = help_rows([])
    assert {"--version", "--install-completion", "--show-completion", "--help"} <= set(root)
    search = help_rows(["search"])
    best = help_rows(["best"])
    train = help_rows(["train"])
    ls = help_rows(["ls"])
    for flag in (
        root["--version"],
        search["--resume"],
        search["--quiet"],
        best["--all"],
        best["--json"],
        ls["--json"],
        train["--help"],
    ):
        assert not flag.startswith("<"), f"a flag takes no value, yet --help gives it a type: {flag}"
    assert best["--by"].startswith("<splice|structure|appearance|judge|judge_structure|judge_appearance>")
    assert search["--space"].startswith("<cpu_real|default|paper|quick|FILE.yaml>")
    assert train["--vit"].startswith("<preset>  ViT preset: dino_vits16, dino_vits8, dino_vitb16,")
    listed = script(["train", "--help"]).stdout  # the help text wraps between preset names, never inside one
    assert all(re.search(rf"\b{name}\b", listed) for name in VIT_PRESETS)


def test_spaces_lists_the_shipped_spaces_with_their_descriptions(capsys, monkeypatch):
    from splice_tune.spaces import load_space

    code, out, err = run_cli(["spaces"], capsys, monkeypatch)
    assert code == 0, err
    for name in ("quick", "default", "paper"):
        row = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert load_space(name).description in row


def test_tracking_uri_option_reads_mlflow_tracking_uri():
    """Every command that takes --tracking-uri falls back on MLflow's own variable (and says so in --help);
    the store it names is really used: tests/test_best_report.py runs ls/best/report against one."""
    for command in ("search", "best", "report", "ls"):
        done = script([command, "--help"], COLUMNS="300")
        row = next(line for line in done.stdout.splitlines() if "--tracking-uri" in line)
        assert "[env var: MLFLOW_TRACKING_URI]" in row, done.stdout


@pytest.mark.parametrize(
    "value, shown",
    [
        (0.123456, "0.1235"),
        (2.5e-06, "2.5e-06"),
        (123456.7, "123500"),
        (9999.7, "10000"),
        (1.0, "1"),
        (0.0, "0"),
        (float("inf"), "inf"),
        (None, "-"),
        (60, "60"),
        ("2000", "2000"),
        ("0.00123456", "0.001235"),
        ("random_tiny8", "random_tiny8"),
        ("None", "None"),
        ("[0.95, 1.0]", "[0.95, 1.0]"),
    ],
)
def test_numbers_for_people_have_4_significant_digits(value, shown):
    assert number(value) == shown


def test_live_view_on_a_terminal_shows_elapsed_time_and_eta():
    from rich.console import Console

    from splice_tune.console import LiveView

    terminal = Console(file=io.StringIO(), force_terminal=True, width=200)
    with LiveView(["cows", "fruits"], budget=2, metric="splice_score", console=terminal, evals_per_trial=4) as view:
        assert re.search(r"elapsed 0:00:0\d, ETA -", view.timing())  # nothing done yet: no pace to go by
        view.started -= 60  # one minute in: one trial finished and a second half way (2 of 4 evals)
        view.pairs["cows"].finished = 1
        view.pairs["fruits"].running.add("t1")
        view.pairs["fruits"].reported["t1"] = 2
        view.refresh()
    shown = _ANSI.sub("", terminal.file.getvalue())
    # 1.5 trials in 60 s: the other 2.5 take 100 s more.
    assert "splice-tune search: elapsed 0:01:00, ETA 0:01:40" in shown
    assert re.search(r"cows\s+│\s+1/2", shown)


def test_without_a_terminal_progress_lines_replace_the_live_table():
    from rich.console import Console

    from splice_tune.console import LiveView

    log = Console(file=io.StringIO(), force_terminal=False, width=80)
    with LiveView(["cows"], budget=3, metric="splice_score", console=log, progress_every=0.05) as view:
        view.pairs["cows"].finished, view.pairs["cows"].best = 1, 0.87654321
        view.pairs["cows"].running.add("t1")
        deadline = time.monotonic() + 60  # a generous bound against a hang, not a timing
        while view.progress_line().split("] ", 1)[1] not in log.file.getvalue():
            assert time.monotonic() < deadline, log.file.getvalue()
            time.sleep(0.05)
    lines = [line for line in log.file.getvalue().splitlines() if "search progress" in line]
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\] search progress: 1/3 trials done, 1 running, 0 stopped early, 0 failed; 0/1 "
        r"pairs complete, elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d \| cows 1/3 best 0\.8765",
        lines[-1],
    ), lines[-1]
    assert "\x1b[" not in log.file.getvalue()  # a log gets no cursor movements


def test_the_progress_line_of_a_thousand_pairs_names_a_few_and_stays_short():
    from rich.console import Console

    from splice_tune.console import LiveView

    pairs = [f"pair-{index:04d}" for index in range(1000)]
    view = LiveView(pairs, budget=2, metric="splice_score", console=Console(file=io.StringIO()), quiet=True)
    for pair in pairs[:700]:
        view.pairs[pair].finished = 2
    view.pairs["pair-0003"].failed, view.pairs["pair-0003"].finished = 2, 0
    view.pairs["pair-0950"].running.add("t1")
    view.touch("pair-0950")
    view.touch("pair-0699")
    line = view.progress_line()
    assert len(line) <= LiveView.LINE_CHARS, line
    assert "1400/2000 trials done, 1 running, 0 stopped early, 2 failed; 700/1000 pairs complete" in line
    assert "failing: pair-0003 2/2, 2 failed |" in line
    assert "just changed: pair-0699 2/2, pair-0950 0/2 |" in line
    assert "lagging: pair-0700 0/2, pair-0701 0/2" in line and line.endswith(" more")  # 300 pairs: a few, a count
    # What changed is named once: the next line has nothing new to name.
    assert "just changed" not in view.progress_line()


def test_the_live_table_fits_the_terminal_and_shows_the_pairs_worth_seeing():
    from rich.console import Console

    from splice_tune.console import LiveView

    terminal = Console(file=io.StringIO(), force_terminal=True, width=120, height=24)
    pairs = [f"pair-{index:04d}" for index in range(1000)]
    view = LiveView(pairs, budget=2, metric="splice_score", console=terminal, quiet=True)
    view.pairs["pair-0500"].running.add("t1")
    view.pairs["pair-0777"].failed = 1
    view.touch("pair-0123")
    terminal.print(view.table())
    shown = _ANSI.sub("", terminal.file.getvalue())
    assert len(shown.splitlines()) <= 24, shown
    assert all(pair in shown for pair in ("pair-0500", "pair-0777", "pair-0123")), shown
    assert "1/2000 trials done, 1 running" in shown and "more pairs not shown (all of them: splice-tune ls)" in shown


def test_notes_of_one_kind_are_two_examples_and_a_count():
    from splice_tune.console import grouped_notes

    downscaled = [
        f"pairs.csv:{row}: {column} 'p{row}_{column}.png': 192x128 will be downscaled to max side 96"
        for row in range(2, 258)
        for column in ("structure", "appearance")
    ]
    notes = ["space: an unusual note", *downscaled, "warm start: from search old"]
    assert grouped_notes(notes) == [
        "space: an unusual note",
        downscaled[0],
        downscaled[1],
        "... and 510 more notes like these",
        "warm start: from search old",
    ]


def test_the_summary_of_a_thousand_pairs_fits_one_screen(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a log's width: no column folds a row into several lines
    pairs = [
        SimpleNamespace(
            pair=f"pair-{index:04d}",
            score=index / 1000 if index % 100 else None,
            counts={"finished": 2 if index % 100 else 0, "stopped early": 0, "failed": 0 if index % 100 else 2},
            params={"alpha": "0.1"} if index % 100 else {},
            run_id=f"run{index}" if index % 100 else None,
        )
        for index in range(1000)
    ]
    summary = SimpleNamespace(
        name="big", experiment_id="1", tracking_uri="sqlite:///x.db", metric="splice_score", pairs=pairs
    )
    _print_summary(summary, Path("runs"))
    out = _ANSI.sub("", capsys.readouterr().out)
    assert len(out.splitlines()) <= 30, out
    assert "the best and worst 6 of 1000 pairs'" in out
    assert "pair-0001" in out and "pair-0999" in out and "... 978 more" in out  # 990 with a winner - 12 shown
    assert "1000 pairs, 990 with a winner; trials: 1980 finished, 0 stopped early, 20 failed" in out
    assert "splice-tune best --all --search big --root runs" in out and "best --pair" not in out
    assert "every pair: splice-tune ls --root runs" in out
