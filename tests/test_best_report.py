"""`splice-tune best / report / ui / ls` against the real finished search of conftest (no mocks).

Commands run in-process through `splice_tune.cli.main` (the console script's entry point, so BadInput
becomes exit code 2 exactly as for a user); one check runs the installed console script itself. Tests that
write to the store (report) or change it (moved inputs, no finished trial) work on a copy of it
(`store_copy`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _artifact_repos_cache as artifact_repos
from PIL import Image

from splice_model import SpliceGenerator, load_image, to_pil
from splice_tune import results
from splice_tune.cli import main
from splice_tune.formatting import number
from splice_tune.report import TrialRow, pareto_figure, pareto_front

SEARCH = "test-search"
SCRIPT = Path(sys.executable).parent / "splice-tune"


# ------------------------------------------------------------------------------------------------ helpers


def run_cli(args: list[str], capsys, monkeypatch, columns: int = 250) -> tuple[int, str, str]:
    """Run `splice-tune ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["splice-tune", *map(str, args)])
    monkeypatch.setenv("COLUMNS", str(columns))  # by default wide enough that table rows stay on one line
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def store_root(finished_search) -> Path:
    return finished_search.folder / "splice-runs"


def experiment_id(tracking_uri: str) -> str:
    return MlflowClient(tracking_uri).get_experiment_by_name(SEARCH).experiment_id


def finished_trials(tracking_uri: str, pair: str) -> list:
    """The pair's FINISHED, not stopped-early child runs, found with plain MLflow queries."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [experiment_id(tracking_uri)],
        max_results=1000,
        filter_string=f"tags.`splice_tune.pair` = '{pair}' and attributes.status = 'FINISHED'",
    )
    return [
        run
        for run in runs
        if "mlflow.parentRunId" in run.data.tags and run.data.tags.get("splice_tune.stopped_early") != "true"
    ]


def lowest(runs: list, metric: str):
    return min(runs, key=lambda run: run.data.metrics[metric])


def generator_output(tracking_uri: str, run_id: str, structure_path: Path, folder: Path) -> np.ndarray:
    """The run's logged generator, loaded by hand, applied to the full structure image (uint8 pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = MlflowClient(tracking_uri).download_artifacts(run_id, "checkpoint/generator.pt", str(folder))
    generator = SpliceGenerator()
    generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["generator"])
    generator.eval()
    with torch.no_grad():
        output = generator(load_image(structure_path)[None])[0]
    return np.asarray(to_pil(output))


@pytest.fixture
def store_copy(finished_search, tmp_path):
    """A private copy of the search's store (database and artifacts, re-pointed): (root, tracking URI)."""
    source = store_root(finished_search).resolve()
    root = tmp_path / "store" / "splice-runs"
    root.mkdir(parents=True)
    shutil.copy(source / "mlflow.db", root / "mlflow.db")
    shutil.copytree(source / "mlartifacts", root / "mlartifacts")
    shutil.copy(source / "optuna.db", root / "optuna.db")
    with store_database(root) as database:
        database.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
            (str(source), str(root.resolve())),
        )
        database.execute(
            "UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (str(source), str(root.resolve()))
        )
    # MLflow caches each run's artifact location per process by run id alone; the copy has the same run ids,
    # so without this its artifacts would be read from (and written to) the original store.
    artifact_repos.clear()
    yield root, f"sqlite:///{(root / 'mlflow.db').resolve()}"
    artifact_repos.clear()


@contextlib.contextmanager
def store_database(root: Path):
    """The store's SQLite database, to stage what MLflow's API cannot (changed params, statuses); commits."""
    connection = sqlite3.connect(root / "mlflow.db")
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def set_param(root: Path, run_id: str, key: str, value: str) -> None:
    """Change a logged param behind MLflow's back (it forbids changing params) to stage a moved file."""
    with store_database(root) as database:
        database.execute("UPDATE params SET value = ? WHERE run_uuid = ? AND key = ?", (value, run_id, key))


def parent_run_id(tracking_uri: str, pair: str) -> str:
    runs = MlflowClient(tracking_uri).search_runs(
        [experiment_id(tracking_uri)],
        filter_string=(f"tags.`splice_tune.kind` = 'pair' and tags.`splice_tune.pair` = '{pair}'"),
    )
    return runs[0].info.run_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------------------------------- best


@pytest.mark.parametrize(
    "by, metric",
    [("splice", "splice_score"), ("structure", "structure_score"), ("judge", "judge_splice_score")],
)
def test_best_renders_the_winning_generator_at_full_resolution(
    by, metric, finished_search, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = ["best", "--pair", "cows", "--root", store_root(finished_search)]
    if by != "splice":
        args += ["--by", by]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err

    winner = lowest(finished_trials(finished_search.tracking_uri, "cows"), metric)
    assert f"winner by {metric}: trial {winner.info.run_name}" in out
    assert "NOT DINO (random-weight ViT random_tiny8)" in out  # the test search's ViT has random weights
    assert f"{metric} {number(winner.data.metrics[metric])}" in out  # 4 significant digits
    # No UI serves this store: the links name the port `splice-tune ui` would use, and how to start it.
    experiment = experiment_id(finished_search.tracking_uri)
    view = "?workflowType=machine_learning"  # MLflow 3's UI would open its GenAI view otherwise
    assert f"MLflow run: http://127.0.0.1:5000/#/experiments/{experiment}/runs/{winner.info.run_id}{view}\n" in out
    assert (
        f"MLflow, every trial: http://127.0.0.1:5000/#/experiments/{experiment}/runs{view}  (start the UI with: "
        f"splice-tune ui --root {store_root(finished_search)})\n"
    ) in out
    structure_path = finished_search.folder / "cows_structure.png"
    written = Image.open(tmp_path / "cows_best.png")
    assert written.size == Image.open(structure_path).size == (192, 128)
    expected = generator_output(finished_search.tracking_uri, winner.info.run_id, structure_path, tmp_path / "check")
    assert np.array_equal(np.asarray(written.convert("RGB")), expected)


def test_best_all_writes_every_pair_into_out_dir(finished_search, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["best", "--all", "--out-dir", "winners", "--max-side", 96, "--tracking-uri", finished_search.tracking_uri],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert sorted(path.name for path in (tmp_path / "winners").iterdir()) == ["cows_best.png", "fruits_best.png"]
    assert Image.open(tmp_path / "winners" / "cows_best.png").size == (96, 64)  # 192x128 capped at 96


def test_best_json_for_scripts(finished_search, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["best", "--all", "--json", "--out-dir", "winners", "--root", store_root(finished_search)], capsys, monkeypatch
    )
    assert code == 0, err
    document = json.loads(out)  # stdout holds the JSON document only; the human description went to stderr
    assert "winner by splice_score" in err
    assert (document["search"], document["by"], document["skipped"]) == (SEARCH, "splice_score", [])
    assert document["tracking_uri"] == finished_search.tracking_uri
    for winner, result in zip(document["winners"], finished_search.summary.pairs):
        run = MlflowClient(finished_search.tracking_uri).get_run(result.run_id)
        assert (winner["pair"], winner["run_id"], winner["state"]) == (result.pair, result.run_id, "finished")
        assert winner["trial"] == run.info.run_name
        assert winner["image"] == str(tmp_path / "winners" / f"{result.pair}_best.png")
        assert Image.open(winner["image"]).size == (winner["width"], winner["height"])
        assert winner["scores"] == {name: run.data.metrics[name] for name in results.SCORES}
        assert winner["sampled"] == {"alpha": float(run.data.params["alpha"]), "lr": float(run.data.params["lr"])}
        assert winner["settings"]["vit"] == "random_tiny8" and winner["settings"]["steps"] == 30
        assert (winner["retrained_steps"], winner["retrained_scores"], winner["checkpoint"]) == (None, None, None)
        assert winner["mlflow_url"].endswith(
            f"/#/experiments/{document['experiment_id']}/runs/{result.run_id}?workflowType=machine_learning"
        )


def test_best_trial_renders_the_picked_trial_not_the_winner(finished_search, tmp_path, monkeypatch, capsys):
    """`best --trial PAIR-tN` renders a trial a person picked from the contact sheet, here the worst one."""
    monkeypatch.chdir(tmp_path)
    winner = lowest(finished_trials(finished_search.tracking_uri, "cows"), "splice_score")
    client = MlflowClient(finished_search.tracking_uri)
    trials = client.search_runs(
        [experiment_id(finished_search.tracking_uri)], filter_string="tags.`splice_tune.pair` = 'cows'"
    )
    picked = max(
        (run for run in trials if run.info.run_name.startswith("cows-t") and "splice_score" in run.data.metrics),
        key=lambda run: run.data.metrics["splice_score"],
    )
    assert picked.info.run_id != winner.info.run_id
    name = picked.info.run_name
    code, out, err = run_cli(["best", "--trial", name, "--root", store_root(finished_search)], capsys, monkeypatch)
    assert code == 0, err
    assert f"cows: picked: trial {name} (" in out and f"run {picked.info.run_id}" in out
    written = Image.open(tmp_path / f"{name}.png")
    structure_path = finished_search.folder / "cows_structure.png"
    expected = generator_output(finished_search.tracking_uri, picked.info.run_id, structure_path, tmp_path / "check")
    assert np.array_equal(np.asarray(written.convert("RGB")), expected)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trial", "cows-t99"], ["--trial cows-t99", "no such trial", "pair cows's trials are cows-t0, cows-t1"]),
        (["--trial", "cowz-t1"], ["--trial cowz-t1", "did you mean cows-t1"]),
        (["--trial", "cows-t0", "--pair", "cows"], ["give exactly one", "--pair and --trial"]),
    ],
    ids=["no such trial", "no such pair", "with --pair"],
)
def test_best_trial_bad_input_exits_2_and_writes_nothing(
    args, expected, finished_search, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["best", *args, "--root", store_root(finished_search)], capsys, monkeypatch)
    assert code == 2
    assert all(text in err for text in expected), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["ls", "best", "report"])
def test_mlflow_tracking_uri_names_the_store(command, store_copy, tmp_path, monkeypatch, capsys):
    root, uri = store_copy
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    nowhere = tmp_path / "nowhere"  # the default store of --root, which must not be used
    args = {"ls": [], "best": ["--pair", "cows"], "report": ["--out-dir", "report"]}[command]
    code, out, err = run_cli([command, *args, "--root", nowhere], capsys, monkeypatch)
    assert code == 0, err
    assert not nowhere.exists()
    if command == "ls":
        assert f"{SEARCH}  created" in out
    else:
        assert (tmp_path / {"best": "cows_best.png", "report": "report/index.html"}[command]).is_file()


@pytest.mark.parametrize("case", ["unknown pair", "unknown search", "no store", "--out with --all"])
def test_best_bad_input_exits_2_and_writes_nothing(case, finished_search, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = store_root(finished_search)
    args, expected = {
        "unknown pair": (["--pair", "cowz", "--root", root], ["cowz", "cows, fruits", "did you mean 'cows'"]),
        "unknown search": (["--pair", "cows", "--search", "nope", "--root", root], ["nope", SEARCH]),
        "no store": (
            ["--pair", "cows", "--root", tmp_path / "nowhere"],
            ["nowhere", "no MLflow store", "splice-tune search"],
        ),
        "--out with --all": (["--all", "--out", "x.png", "--root", root], ["--out", "--out-dir"]),
    }[case]
    code, out, err = run_cli(["best", *args], capsys, monkeypatch)
    assert code == 2
    assert all(text in err for text in expected), err
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "nowhere").exists()  # looking must not create an empty store


def test_console_script_reports_a_missing_store_with_exit_2(tmp_path):
    completed = subprocess.run(
        [SCRIPT, "best", "--pair", "cows"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2
    assert "no MLflow store" in completed.stderr and "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_best_renders_the_logged_input_not_an_edited_file_and_falls_back_to_the_path(
    finished_search, store_copy, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    root, uri = store_copy
    parent = parent_run_id(uri, "cows")
    original = finished_search.folder / "cows_structure.png"
    winner = lowest(finished_trials(uri, "cows"), "splice_score")
    expected = generator_output(uri, winner.info.run_id, original, tmp_path / "check")

    # The file at the logged path was edited since the search (other size, other content): the logged copy,
    # the image the search trained on, is what `best` renders.
    edited = tmp_path / "edited_structure.png"
    Image.open(original).transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((1920, 1080)).save(edited)
    set_param(root, parent, "structure", str(edited))
    code, _, err = run_cli(["best", "--pair", "cows", "--root", root], capsys, monkeypatch)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cows_best.png").convert("RGB")), expected)

    # A run without the logged copy: the file at the logged path (here an HD one) is used instead.
    artifacts = Path(MlflowClient(uri).get_run(parent).info.artifact_uri.removeprefix("file://"))
    (artifacts / "inputs" / "structure.png").unlink()
    code, _, err = run_cli(["best", "--pair", "cows", "--root", root, "--out", "hd.png"], capsys, monkeypatch)
    assert code == 0, err
    assert Image.open(tmp_path / "hd.png").size == (1920, 1080)

    # Neither: one line naming both, exit code 2.
    set_param(root, parent, "structure", str(tmp_path / "moved_away.png"))
    code, _, err = run_cli(["best", "--pair", "cows", "--root", root, "--out", "none.png"], capsys, monkeypatch)
    assert code == 2 and "structure image not found" in err and "moved_away.png" in err, err
    assert not (tmp_path / "none.png").exists()


def test_best_without_a_finished_trial_suggests_and_does_retrain(store_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root, uri = store_copy
    with store_database(root) as database:  # every cows trial stopped early
        for run in finished_trials(uri, "cows"):
            database.execute("UPDATE runs SET status = 'KILLED' WHERE run_uuid = ?", (run.info.run_id,))
            database.execute(
                "INSERT INTO tags (key, value, run_uuid) VALUES ('splice_tune.stopped_early', 'true', ?)",
                (run.info.run_id,),
            )
    code, _, err = run_cli(["best", "--pair", "cows", "--root", root], capsys, monkeypatch)
    assert code == 2 and "no finished trial" in err and "--retrain-steps" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store"]

    code, out, err = run_cli(["best", "--pair", "cows", "--root", root, "--retrain-steps", 2], capsys, monkeypatch)
    assert code == 0, err
    assert "retrained from scratch for 2 steps" in out
    assert Image.open(tmp_path / "cows_best.png").size == (192, 128)
    assert (tmp_path / "cows_best.pt").is_file()


def test_best_retraining_that_diverges_is_one_error_line_exit_1(finished_search, tmp_path, monkeypatch, capsys):
    import splice_tune.best
    from splice_model import NonFiniteLossError

    def diverge(*args, **kwargs):
        raise NonFiniteLossError(1, {"loss/total": float("nan")})

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(splice_tune.best, "train_with_progress", diverge)
    code, out, err = run_cli(
        ["best", "--pair", "cows", "--root", store_root(finished_search), "--retrain-steps", 2], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in out + err, err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "settings diverged (non-finite loss at step 1" in line and "try another --retrain-steps" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_moved_store_renders_and_reports_inside_its_new_root(store_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root, _ = store_copy
    moved = tmp_path / "elsewhere" / "splice-runs"
    moved.parent.mkdir()
    shutil.move(root, moved)  # the runs' recorded artifact locations still name the old root
    artifact_repos.clear()

    code, _, err = run_cli(["best", "--pair", "cows", "--root", moved], capsys, monkeypatch)
    assert code == 0, err
    assert Image.open(tmp_path / "cows_best.png").size == (192, 128)
    code, _, err = run_cli(["report", "--pair", "cows", "--root", moved], capsys, monkeypatch)
    assert code == 0, err
    assert not root.exists(), "nothing is written at the old place"
    assert len(list(moved.glob("mlartifacts/*/artifacts/report/cows_pareto.png"))) == 1

    # Moved without its artifacts: the report would have to write outside --root, so it refuses.
    shutil.rmtree(moved / "mlartifacts")
    artifact_repos.clear()
    code, _, err = run_cli(["report", "--pair", "cows", "--root", moved], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "outside --root" in lines[0] and "Traceback" not in err, err
    assert not root.exists()


# ------------------------------------------------------------------------------------------------- report


def test_pareto_front_keeps_only_non_dominated_points():
    points = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.6), (0.5, 0.1), (0.4, 0.4), (0.1, 0.95)]
    assert pareto_front(points) == [0, 1, 4, 3]


def trial_row(name: str, structure: float, appearance: float, state: str = "finished") -> TrialRow:
    scores = {"structure_score": structure, "appearance_score": appearance, "splice_score": structure + appearance}
    return TrialRow(SimpleNamespace(), name, state, 30, scores)


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def red_pixels(figure, folder: Path) -> int:
    """Pixels of the front's colour (matplotlib's tab:red) in the saved plot."""
    figure.savefig(folder / "pareto.png")
    pixels = np.asarray(Image.open(folder / "pareto.png").convert("RGB")).astype(int)
    return int((np.abs(pixels - [214, 39, 40]).sum(axis=-1) < 30).sum())


def test_pareto_plot_draws_the_front_of_a_trial_that_beats_all_others(tmp_path):
    winner = trial_row("cows-t0", 0.01, 0.1)
    rows = [
        winner,
        trial_row("cows-t1", 0.02, 0.2),
        trial_row("cows-t2", 0.03, 0.15),
        trial_row("cows-t3", 0.04, 0.3, state="stopped early"),
    ]
    figure = pareto_figure(rows, winner, {"structure_base": 0.05, "appearance_base": 0.4}, "one dominates")
    [front] = [line for line in figure.axes[0].get_lines() if line.get_label().startswith("Pareto front")]
    xs, ys = front.get_data()
    right, top = figure.axes[0].get_xlim()[1], figure.axes[0].get_ylim()[1]
    # From the top edge down to the winner, then out to the right edge: the corner of what it dominates.
    assert list(zip(xs, ys)) == [(0.01, top), (0.01, 0.1), (right, 0.1)]
    assert red_pixels(figure, tmp_path) > 300  # drawn, not hidden under the winner's star


def test_pareto_plot_keeps_the_copy_line_in_view_or_says_where_it_is(tmp_path):
    rows = [trial_row("t0", 0.01, 0.1), trial_row("t1", 0.02, 0.05)]
    # Bases large next to every score: the line runs beyond the axes' far corner.
    figure = pareto_figure(rows, rows[1], {"structure_base": 0.5, "appearance_base": 0.6}, "all beat it")
    assert (
        "splice_score = 1 (as good as copying an input): beyond these axes, every trial here beats it"
        in legend_texts(figure)
    )
    assert not any(
        len(line.get_xdata()) for line in figure.axes[0].get_lines() if "splice_score = 1" in line.get_label()
    )
    # Bases within reach: the line is drawn, from (0, appearance_base) to (structure_base, 0).
    figure = pareto_figure(rows, rows[1], {"structure_base": 0.02, "appearance_base": 0.1}, "in view")
    [line] = [line for line in figure.axes[0].get_lines() if line.get_label().startswith("splice_score = 1")]
    assert line.get_label() == "splice_score = 1 (as good as copying an input)"
    assert list(zip(*line.get_data())) == [(0, 0.1), (0.02, 0)]
    right, top = figure.axes[0].get_xlim()[1], figure.axes[0].get_ylim()[1]
    assert right / 0.02 + top / 0.1 > 1  # the axes' far corner lies beyond the line: it crosses the plot


def test_report_writes_and_logs_plots_sheets_and_page(store_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root, uri = store_copy
    code, _, err = run_cli(["report", "--root", root, "--out-dir", tmp_path / "report"], capsys, monkeypatch)
    assert code == 0, err

    client = MlflowClient(uri)
    for pair in ("cows", "fruits"):
        for kind, min_size in (("pareto", (500, 400)), ("sheet", (5 * 200, 250))):  # sheet: 2 inputs + 3 trials
            path = tmp_path / "report" / f"{pair}_{kind}.png"
            image = Image.open(path)
            assert image.width >= min_size[0] and image.height >= min_size[1]
            assert path.stat().st_size > 10_000
            assert len(np.unique(np.asarray(image.convert("L")))) > 50  # real content, not a blank canvas
        logged = {info.path for info in client.list_artifacts(parent_run_id(uri, pair), "report")}
        assert {f"report/{pair}_pareto.png", f"report/{pair}_sheet.png"} <= logged
        analysis = Image.open(tmp_path / "report" / f"{pair}_analysis.png")
        assert analysis.width >= 1200 and len(np.unique(np.asarray(analysis.convert("L")))) > 50
        assert f"report/{pair}_analysis.png" in logged
    assert "report/index.html" in {info.path for info in client.list_artifacts(parent_run_id(uri, "cows"), "report")}

    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "NOT DINO" in page
    # 3 trials per pair are too few for importances: a note says so, and the summary has none.
    assert page.count("parameter importances need at least 4") == 2
    assert "no pair has enough finished trials for importances yet" in page
    summary = page[page.index("<h2>All pairs</h2>") : page.index('<h2 id="cows">')]
    for pair in ("cows", "fruits"):  # each pair's winner params side by side, 4 significant digits
        # The test space has a held-out judge ViT: the report ranks by the judge's splice_score.
        winner = lowest(finished_trials(uri, pair), "judge_splice_score")
        assert f"<td>{number(winner.data.params['alpha'])}</td>" in summary
        assert (
            f"Winner: trial <b>{winner.info.run_name}</b>, judge_splice_score (the held-out judge ViT's) "
            f"{number(winner.data.metrics['judge_splice_score'])}. Render it: <code>splice-tune best --pair "
            f"{pair} --search {SEARCH} --by judge</code>"
        ) in page
    assert "<th>judge_splice_score</th><th>judge_structure_score</th><th>judge_appearance_score</th>" in page
    for run in finished_trials(uri, "cows"):
        assert f'<td class="text">{run.info.run_name}</td>' in page
        assert f"<td>{number(run.data.metrics['splice_score'])}</td>" in page  # 4 significant digits
        assert f"<td>{number(run.data.metrics['judge_splice_score'])}</td>" in page
        assert f"<td>{number(run.data.params['alpha'])}</td>" in page
    assert page.count('<td class="text">paper</td>') == 2, "each pair's first trial is the paper's point"


def test_best_by_judge_needs_a_search_with_a_judge(store_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root, uri = store_copy
    with store_database(root) as database:  # the search as a space without judge_vit would have left it
        for table in ("metrics", "latest_metrics"):
            database.execute(f"DELETE FROM {table} WHERE key LIKE 'judge_%'")
    code, out, err = run_cli(["best", "--pair", "cows", "--root", root, "--by", "judge"], capsys, monkeypatch)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --by judge: search {SEARCH!r} has no judge scores (its search space names no judge_vit); rank "
        f"by --by splice, or search with a space that sets judge_vit"
    ]
    assert list(tmp_path.iterdir()) == [root.parent], "nothing written"


def test_report_unknown_pair_exits_2_and_writes_nothing(finished_search, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        ["report", "--pair", "fruit", "--root", store_root(finished_search), "--out-dir", "out"], capsys, monkeypatch
    )
    assert code == 2 and "fruit" in err and "did you mean 'fruits'" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------- ls


def test_ls_shows_the_search_its_pairs_and_trial_counts(finished_search, monkeypatch, capsys):
    code, out, err = run_cli(["ls", "--root", store_root(finished_search)], capsys, monkeypatch)
    assert code == 0, err
    lines = out.splitlines()
    heading = next(index for index, line in enumerate(lines) if line.startswith(f"{SEARCH}  created "))
    header = next(line for line in lines[heading:] if "stopped early" in line)
    columns = [cell.strip() for cell in header.split("┃")[1:-1]]
    assert columns[:2] == ["pair", "trials"]
    for pair in finished_search.summary.pairs:
        row = next(line for line in out.splitlines() if f" {pair.pair} " in line)
        cells = dict(zip(columns, (cell.strip() for cell in row.split("│")[1:-1])))
        assert cells["trials"] == str(sum(pair.counts.values()))
        for state in ("finished", "stopped early", "failed"):
            assert cells[state] == str(pair.counts[state])
        assert cells["best splice_score"] == number(pair.score)
    assert f"search {SEARCH}: NOT DINO (random-weight ViT random_tiny8)" in out


def test_ls_never_cuts_a_search_name_in_80_columns(store_copy, monkeypatch, capsys):
    root, uri = store_copy
    longest = "x" * 60 + "-a-search-name-of-the-longest-kind-allowed"[:40]  # 100 characters, as --name allows
    MlflowClient(uri).rename_experiment(experiment_id(uri), longest)
    code, out, err = run_cli(["ls", "--root", root], capsys, monkeypatch, columns=80)
    assert code == 0, err
    assert any(line.startswith(f"{longest}  created ") for line in out.splitlines()), out
    assert all(len(line) <= 80 for line in out.splitlines() if "│" in line or "┃" in line)


def test_ls_json_for_scripts(finished_search, monkeypatch, capsys):
    code, out, err = run_cli(["ls", "--json", "--root", store_root(finished_search)], capsys, monkeypatch)
    assert code == 0, err
    listing = json.loads(out)
    assert listing["tracking_uri"] == finished_search.tracking_uri
    [search] = listing["searches"]
    assert search["name"] == SEARCH and search["experiment_id"] == experiment_id(finished_search.tracking_uri)
    assert search["description"] == "test space (random tiny ViT, 64 px, 30 steps)"
    assert search["vit_note"].startswith("NOT DINO (random-weight ViT random_tiny8)")
    assert datetime.datetime.fromisoformat(search["created"]).tzinfo is not None
    for pair, result in zip(search["pairs"], finished_search.summary.pairs):
        assert pair == {
            "pair": result.pair,
            "trials": sum(result.counts.values()),
            "finished": result.counts["finished"],
            "stopped_early": result.counts["stopped early"],
            "failed": result.counts["failed"],
            "running": 0,
            "interrupted": 0,
            "best_splice_score": result.score,
            "best_run_id": result.run_id,
        }


def test_ls_against_an_unreachable_server_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    started = time.perf_counter()
    code, out, err = run_cli(["ls", "--tracking-uri", "http://127.0.0.1:1"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --tracking-uri http://127.0.0.1:1: nothing answers")
    assert time.perf_counter() - started < 20
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_store_is_bad_input_not_a_traceback():
    from mlflow.exceptions import MlflowException

    from splice_tune import results
    from splice_tune.errors import BadInput

    class Broken:
        tracking_uri = "http://mlflow.example:5000"

        def search_experiments(self, **kwargs):
            raise MlflowException("API request to http://mlflow.example:5000 failed: 502 Bad Gateway")

    with pytest.raises(BadInput) as raised:
        results.search_experiments(Broken())
    [line] = raised.value.problems
    assert line.startswith("http://mlflow.example:5000: cannot read the MLflow store") and "502" in line


def damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    if how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif how == "random-bytes":
        db.write_bytes(np.random.default_rng(0).bytes(len(data)))
    else:
        db.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "random-bytes", "empty"])
def test_a_damaged_store_is_one_line_exit_2_and_stays_untouched(how, finished_search, tmp_path, monkeypatch, capsys):
    from conftest import write_search_inputs

    import splice_tune.driver

    monkeypatch.chdir(tmp_path)
    write_search_inputs(tmp_path)
    root = tmp_path / "splice-runs"
    root.mkdir()
    db = root / "mlflow.db"
    shutil.copy(store_root(finished_search) / "mlflow.db", db)
    damage(db, how)
    before = (db.read_bytes(), db.stat().st_mtime_ns)

    def no_search(request):
        raise AssertionError("the search got past its checks and would now start Ray")

    monkeypatch.setattr(splice_tune.driver, "_start_ray", no_search)
    for args in (["ls"], ["best", "--pair", "cows"], ["report"], ["search", "pairs.csv", "--space", "space.yaml"]):
        code, out, err = run_cli([*args, "--root", root], capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in out + err, f"{args}: exit {code}\n{err}"
        assert len(lines) == 1 and lines[0].startswith(f"error: {db.resolve()}: not a readable MLflow store ("), err
        assert "restore it from a backup" in lines[0]
        assert (db.read_bytes(), db.stat().st_mtime_ns) == before, f"{args} changed the store"
        assert [path.name for path in root.iterdir()] == ["mlflow.db"], f"{args} wrote into the root"


# ----------------------------------------------------------------------------------------------------- ui


def test_ui_refuses_a_missing_store_and_a_busy_port(finished_search, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["ui", "--root", tmp_path / "nowhere"], capsys, monkeypatch)
    assert code == 2 and "splice-tune search" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(["ui", "--root", store_root(finished_search), "--port", port], capsys, monkeypatch)
    assert code == 2 and f"--port {port}" in err and "in use" in err


@pytest.mark.slow
def test_ui_serves_the_search_over_http_on_localhost(store_copy, tmp_path, monkeypatch, capsys):
    root, uri = store_copy
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "ui.log", "wb") as log:
        process = subprocess.Popen([SCRIPT, "ui", "--port", str(port), "--root", root], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 90  # a cold server start takes 10-30 s on a busy 2-core machine
            while True:
                assert process.poll() is None, (tmp_path / "ui.log").read_text()
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    assert time.monotonic() < deadline, "the UI did not answer in 90 s"
                    time.sleep(0.5)
            request = urllib.request.Request(
                f"{base}/api/2.0/mlflow/runs/search",
                method="POST",
                headers={"Content-Type": "application/json"},
                data=json.dumps({"experiment_ids": [experiment_id(uri)], "max_results": 100}).encode(),
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                runs = json.load(response)["runs"]
            kinds = sorted(
                tag["value"] for run in runs for tag in run["data"]["tags"] if tag["key"] == "splice_tune.kind"
            )
            assert len(runs) == 8 and kinds == ["pair"] * 2 + ["trial"] * 6
            # While it serves, `best` links there (its port) and has no advice to start a UI.
            assert results.serving_ui(root) == base
            code, out, err = run_cli(
                ["best", "--pair", "fruits", "--root", root, "--out", tmp_path / "f.png"], capsys, monkeypatch
            )
            assert code == 0, err
            assert f"MLflow run: {base}/#/experiments/{experiment_id(uri)}/runs/" in out
            assert (
                f"MLflow, every trial: {base}/#/experiments/{experiment_id(uri)}/runs?workflowType=machine_learning\n"
                in out
            )
        finally:
            process.terminate()
            code = process.wait(timeout=60)
    assert code == 0, (tmp_path / "ui.log").read_text()
    with pytest.raises((urllib.error.URLError, OSError)):  # the server went with it
        urllib.request.urlopen(f"{base}/health", timeout=2)
    assert results.serving_ui(root) is None and not (root / results.UI_STATE_FILE).exists()


def test_a_ui_killed_without_cleaning_up_is_not_linked_to(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = {"url": "http://127.0.0.1:5123", "pid": gone.pid, "host": socket.gethostname()}
    (tmp_path / results.UI_STATE_FILE).write_text(json.dumps(state))
    assert results.serving_ui(tmp_path) is None
    (tmp_path / results.UI_STATE_FILE).write_text(json.dumps({**state, "pid": os.getpid()}))
    assert results.serving_ui(tmp_path) == "http://127.0.0.1:5123"
    assert results.ui_base(f"sqlite:///{tmp_path}/mlflow.db") == ("http://127.0.0.1:5123", None)


def test_a_report_of_many_pairs_is_an_index_and_pages_of_twenty(tmp_path):
    """45 pairs: index.html holds the summary (a row per pair) and links, no images; 3 pages hold the pairs."""
    from splice_tune.report import PAGE_PAIRS, PairReport, _write_pages

    png = tmp_path / "figure.png"
    Image.new("RGB", (4, 4)).save(png)
    reports = [
        PairReport(f"pair{index:02d}", f"run{index}", [], None, png, png, varying=["alpha"]) for index in range(45)
    ]
    pages = _write_pages(tmp_path / "index.html", "big", "1", "sqlite:///x.db", reports, None)
    assert [page.name for page in pages] == ["index.html", "pairs-001.html", "pairs-002.html", "pairs-003.html"]
    index = pages[0].read_text()
    assert "<img" not in index and 'href="pairs-003.html#pair44"' in index
    assert '<tr><td class="text">pair44</td>' in index, "the summary has a row per pair"
    for page, count in zip(pages[1:], (PAGE_PAIRS, PAGE_PAIRS, 5)):
        text = page.read_text()
        assert text.count("<h2 id=") == count and 'href="index.html"' in text
    assert "pairs 41-45 of 45" in pages[3].read_text()
