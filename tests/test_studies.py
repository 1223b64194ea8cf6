"""The pairs' Optuna studies in Optuna's own storage, and `splice-tune dashboard` serving them."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from splice_tune import studies, tracking
from splice_tune.cli import main

SCRIPT = Path(sys.executable).parent / "splice-tune"


def test_a_search_leaves_studies_optuna_opens_with_every_trial_and_its_mlflow_run(finished_search):
    root = finished_search.folder / "splice-runs"
    client = MlflowClient(finished_search.tracking_uri)
    experiment = client.get_experiment_by_name("test-search")
    assert experiment.tags[studies.TAG_STORAGE] == studies.default_url(root)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_id = {run.info.run_id: run for run in runs}
    names = optuna.get_all_study_names(studies.default_url(root))
    assert sorted(names) == ["test-search/cows", "test-search/fruits"]
    for pair in ("cows", "fruits"):
        study = optuna.load_study(study_name=f"test-search/{pair}", storage=studies.default_url(root))
        parent = by_id[study.user_attrs[studies.ATTR_PARENT_RUN]]
        assert parent.data.tags[tracking.TAG_KIND] == "pair" and parent.data.tags[tracking.TAG_PAIR] == pair
        assert [trial.number for trial in study.trials] == [0, 1, 2]
        for trial in study.trials:
            run = by_id[trial.user_attrs[studies.ATTR_RUN]]
            assert run.data.tags[tracking.TAG_STUDY_TRIAL] == str(trial.number)
            assert run.data.tags[tracking.TAG_PAIR] == pair
            assert trial.state.name in ("COMPLETE", "PRUNED")


def run_cli(args: list, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["splice-tune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out + captured.err


def test_dashboard_refuses_a_missing_or_unreadable_storage_in_one_line(tmp_path, capsys, monkeypatch):
    code, output = run_cli(["dashboard", "--root", tmp_path / "nowhere"], capsys, monkeypatch)
    assert code == 2 and output.strip().splitlines() == [
        f"error: --root {tmp_path / 'nowhere'}: no Optuna storage at {(tmp_path / 'nowhere').resolve() / 'optuna.db'}"
        f" (no search has stored studies there); run a search first"
    ]
    assert not (tmp_path / "nowhere").exists(), "looking never creates a storage"
    (tmp_path / "junk.db").write_text("not a database")
    code, output = run_cli(["dashboard", "--optuna-storage", f"sqlite:///{tmp_path / 'junk.db'}"], capsys, monkeypatch)
    assert code == 2 and len(output.strip().splitlines()) == 1 and "cannot read" in output, output


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_study_list_over_http_and_stops_on_ctrl_c(finished_search, tmp_path):
    root = tmp_path / "splice-runs"
    root.mkdir()
    shutil.copy(finished_search.folder / "splice-runs" / studies.OPTUNA_DB, root / studies.OPTUNA_DB)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen([SCRIPT, "dashboard", "--port", str(port), "--root", root], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
                try:
                    with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                        listed = json.load(response)["study_summaries"]
                        break
                except (urllib.error.URLError, OSError):
                    assert time.monotonic() < deadline, "the dashboard did not answer in 90 s"
                    time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
    assert sorted(study["study_name"] for study in listed) == ["test-search/cows", "test-search/fruits"]
    attrs = [{attr["key"] for attr in study["user_attrs"]} for study in listed]
    assert attrs == [{studies.ATTR_PARENT_RUN}] * 2
    assert code == 0, (tmp_path / "dashboard.log").read_text()
    assert "stopping optuna-dashboard" in (tmp_path / "dashboard.log").read_text()
    with pytest.raises((urllib.error.URLError, OSError)):  # the server went with it
        urllib.request.urlopen(f"{base}/api/studies", timeout=2)


def _synthetic_study(url: str, name: str, finished: int) -> None:
    """`finished` trials whose objective follows lr alone (alpha is noise), and one stopped early."""
    study = optuna.create_study(storage=url, study_name=name, sampler=optuna.samplers.RandomSampler(seed=1))
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "alpha": optuna.distributions.FloatDistribution(0.05, 0.3),
        "vit_resample": optuna.distributions.CategoricalDistribution(["bilinear", "bicubic"]),
    }
    for _ in range(finished):
        trial = study.ask(distributions)
        study.tell(trial, 1.0 / (1.0 + 100 * trial.params["lr"]))
    stopped = study.ask(distributions)
    stopped.report(0.97, step=1)
    study.tell(stopped, state=optuna.trial.TrialState.PRUNED)


def test_analysis_draws_each_pair_and_says_which_params_mattered(tmp_path):
    from splice_tune import analysis

    url = studies.default_url(tmp_path)
    _synthetic_study(url, "s/many", finished=12)
    _synthetic_study(url, "s/few", finished=2)
    many = analysis.analyse_pair(url, "s", "many", "s / many", tmp_path / "many.png")
    few = analysis.analyse_pair(url, "s", "few", "s / few", tmp_path / "few.png")
    missing = analysis.analyse_pair(url, "s", "gone", "s / gone", tmp_path / "gone.png")

    assert max(many.importances, key=many.importances.get) == "lr" and many.note is None
    assert few.importances == {} and few.note == "2 finished trial(s): parameter importances need at least 4"
    assert few.figure.exists() and many.figure.exists(), "history and parallel coordinates still drawn"
    assert missing.figure is None and missing.note == f"no Optuna study 's/gone' in {url}"
    assert not (tmp_path / "gone.png").exists()
    [(name, mean, top), *_] = analysis.mattered([many, few, missing])
    assert (name, top) == ("lr", 1) and mean == pytest.approx(many.importances["lr"])

    page = analysis.summary_html(
        {"many": {"lr": "0.00123456", "alpha": "0.1"}, "few": None}, ["lr", "alpha"], [many, few, missing]
    )
    assert '<td class="text">lr</td><td>0.001235</td><td>-</td>' in page, "winners side by side, 4 digits"
    assert "mean over the 1 pair(s) with importances" in page and "<td>1 of 1</td>" in page


def test_parallel_coordinates_show_a_stopped_early_trial_as_such(tmp_path):
    from splice_tune import analysis

    url = studies.default_url(tmp_path)
    _synthetic_study(url, "s/p", finished=3)
    figure = analysis.Figure()
    axes = figure.subplots()
    analysis._draw_parallel(axes, analysis.load_pair_study(url, "s", "p"))
    styles = [line.get_linestyle() for line in axes.get_lines()]
    assert styles == ["-", "-", "-", "--"], "three finished trials and one stopped early (dashed)"
    figure = analysis.Figure()
    axes = figure.subplots()
    analysis._draw_history(axes, analysis.load_pair_study(url, "s", "p"))
    assert {text.get_text() for text in axes.get_legend().get_texts()} == {
        "finished",
        "stopped early (last eval)",
        "best so far",
    }
