"""`splice-tune report`: what a search found, per pair, as pictures a person can judge at a glance.

Trials are ranked by splice_score, or, when the search had a held-out judge ViT (its space named judge_vit),
by the judge's splice_score, and the Pareto plot then shows the judge's scores. Per pair: a Pareto plot
(structure_score against appearance_score of every finished trial, the non-dominated front, the winner), a
contact sheet (the two inputs, then every trial's output in rank order, its scores written under it) and
the analysis of its stored Optuna study (`analysis`: history, parallel coordinates, importances). All are
written to the output folder and logged to the pair's parent run under ``report/``. One self-contained
HTML page (images embedded), starting with a cross-pair summary, covers the pairs reported: ``index.html``
for the whole search, ``PAIR.html`` with ``--pair``. Beyond `PAGE_PAIRS` pairs, ``index.html`` keeps the
summary and links, and the pairs' sections are on pages ``pairs-001.html``... of `PAGE_PAIRS` pairs each.
The pages are logged once, to the parent run of the first pair they cover: a copy on every pair's run would
make the stored size grow with the square of the number of pairs.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import html
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image
from rich.console import Console

from splice_tune import analysis, contact_sheet, results, store, studies, tracking, warm_start
from splice_tune.errors import BadInput
from splice_tune.formatting import number
from splice_tune.results import NOT_SETTINGS, SCORES

SHORT_VIT_NOTE = "random-weight ViT, NOT DINO"


@dataclass
class ReportRequest:
    """What `splice-tune report` was asked to do (flags, not yet validated)."""

    pair: str | None = None
    search: str | None = None
    out_dir: Path | None = None
    root: Path = store.DEFAULT_ROOT
    tracking_uri: str | None = None
    optuna_storage: str | None = None


@dataclass
class TrialRow:
    """One trial as the report shows it."""

    run: Run
    name: str
    state: str
    step: int | None
    scores: dict[str, float]
    image: Image.Image | None = None


@dataclass
class PairReport:
    name: str
    parent_run_id: str
    rows: list[TrialRow]  # ordered by `metric`, unscored last
    winner: TrialRow | None
    pareto: Path
    sheet: Path
    settings: dict[str, str] = field(default_factory=dict)  # params equal in every trial
    varying: list[str] = field(default_factory=list)  # sampled or otherwise differing params
    metric: str = "splice_score"  # what ranks the trials: the judge's splice_score when they have one
    analysis: analysis.PairAnalysis | None = None  # drawn from the pair's stored Optuna study


@dataclass
class ReportResult:
    out_dir: Path
    page: Path
    pairs: list[PairReport]


def run_report(request: ReportRequest, console: Console | None = None) -> ReportResult:
    """Write and log the report; BadInput (nothing written) for a missing store, search or pair."""
    console = console or Console()
    client, uri = results.open_store(request.tracking_uri, request.root)
    experiment = results.find_search(client, request.search, uri)
    pairs = results.search_pairs(client, experiment)
    if request.pair is not None:
        pairs = {request.pair: results.select_pair(pairs, request.pair, experiment.name)}
    elif not pairs:
        raise BadInput(f"search {experiment.name!r} has no pairs yet; wait for it to start trials")
    out_dir = request.out_dir or request.root / "reports" / experiment.name
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out-dir {out_dir}: is a file, not a folder; name a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    note = results.vit_note([trial for pair in pairs.values() for trial in pair.trials])
    reports = []
    storage_url = studies.resolve_url(request.optuna_storage, request.root)
    for pair in pairs.values():
        with tempfile.TemporaryDirectory(prefix="splice-report-") as tmp:
            report = _pair_report(client, experiment.name, pair, out_dir, Path(tmp), note is not None)
        title = f"{experiment.name} / {pair.name}" + (f"  ({SHORT_VIT_NOTE})" if note else "")
        path = out_dir / f"{pair.name}_analysis.png"
        report.analysis = analysis.analyse_pair(storage_url, experiment.name, pair.name, title, path)
        for path in (report.pareto, report.sheet, report.analysis.figure):
            if path is not None:
                store.retry(client.log_artifact, report.parent_run_id, str(path), "report")
        reports.append(report)

    page = out_dir / ("index.html" if request.pair is None else f"{request.pair}.html")
    pages = _write_pages(page, experiment.name, experiment.experiment_id, uri, reports, note)
    for written in pages:
        store.retry(client.log_artifact, reports[0].parent_run_id, str(written), "report")
    figures = sum(1 + (r.analysis.figure is not None) for r in reports) + len(reports)
    if len(reports) <= 3:
        wrote = ", ".join(
            f"{r.name}_pareto.png, {r.name}_sheet.png" + (f", {r.analysis.figure.name}" if r.analysis.figure else "")
            for r in reports
        )
    else:  # one line at any number of pairs
        wrote = f"{figures} figures of {len(reports)} pairs (PAIR_pareto.png, PAIR_sheet.png, PAIR_analysis.png)"
    shown_pages = page.name if len(pages) == 1 else f"{page.name} and {len(pages) - 1} pages of {PAGE_PAIRS} pairs"
    console.print(f"wrote {out_dir}: {wrote}, {shown_pages}", highlight=False, soft_wrap=True)
    console.print(
        f"logged to MLflow under report/ of each pair's parent run (the pages on pair "
        f"{reports[0].name}'s run); open {page}",
        highlight=False,
        soft_wrap=True,
    )
    return ReportResult(out_dir, page, reports)


# Pairs on one HTML page. A search of more pairs gets an index page (the cross-pair summary and a link to
# every pair) and pages of this many pairs each: a single page would embed every pair's images.
PAGE_PAIRS = 20


def _write_pages(
    page: Path, search: str, experiment_id: str, uri: str, reports: list[PairReport], note: str | None
) -> list[Path]:
    """Write the report's HTML: `page` alone for up to `PAGE_PAIRS` pairs, else `page` as the index and
    `pairs-NNN.html` beside it. Returns the files written, the index first."""
    if len(reports) <= PAGE_PAIRS:
        page.write_text(_html_page(search, experiment_id, uri, reports, note), encoding="utf-8")
        return [page]
    chunks = [reports[start : start + PAGE_PAIRS] for start in range(0, len(reports), PAGE_PAIRS)]
    names = [f"pairs-{index + 1:03d}.html" for index in range(len(chunks))]
    where = {report.name: name for name, chunk in zip(names, chunks) for report in chunk}
    page.write_text(_html_page(search, experiment_id, uri, reports, note, where), encoding="utf-8")
    written = [page]
    for index, (name, chunk) in enumerate(zip(names, chunks)):
        title = f"pairs {index * PAGE_PAIRS + 1}-{index * PAGE_PAIRS + len(chunk)} of {len(reports)}"
        text = _html_page(search, experiment_id, uri, chunk, note, subtitle=title, index=page.name)
        (page.parent / name).write_text(text, encoding="utf-8")
        written.append(page.parent / name)
    return written


def _pair_report(
    client: MlflowClient, search: str, pair: results.PairRuns, out_dir: Path, tmp: Path, random_vit: bool
) -> PairReport:
    rows = [_trial_row(client, run, tmp) for run in pair.trials]
    metric = results.ranking_metric(pair.trials)
    rows.sort(key=lambda row: (row.scores.get(metric, math.inf), row.name))
    winner_run = results.winner(pair.trials, metric)
    winner = next((row for row in rows if winner_run and row.run.info.run_id == winner_run.info.run_id), None)
    title = f"{search} / {pair.name}" + (f"  ({SHORT_VIT_NOTE})" if random_vit else "")
    prefix = metric.removesuffix("splice_score")  # "judge_" or ""
    bases = {key: pair.parent.data.metrics.get(prefix + key) for key in ("structure_base", "appearance_base")}
    pareto = _pareto_plot(rows, winner, bases, title, out_dir / f"{pair.name}_pareto.png", prefix)
    inputs = [(_open_rgb(results.input_image(client, pair, role, tmp)), role) for role in ("structure", "appearance")]
    sheet = contact_sheet.draw(inputs, rows, winner, title, out_dir / f"{pair.name}_sheet.png", metric)
    settings, varying = _split_params([row.run for row in rows])
    return PairReport(pair.name, pair.parent.info.run_id, rows, winner, pareto, sheet, settings, varying, metric)


def _trial_row(client: MlflowClient, run: Run, tmp: Path) -> TrialRow:
    state = results.trial_state(run)
    scores = {key: run.data.metrics[key] for key in SCORES if key in run.data.metrics}
    image, step = None, None
    if state == results.FINISHED:
        image = _try_image(client, run, "output.png", tmp)
        step = int(run.data.params["steps"]) if "steps" in run.data.params else None
    if image is None:
        # Stopped early (or finished without its final image): show the last image it logged at an eval.
        found = results.last_eval_image(client, run)
        if found is not None:
            image, step = _try_image(client, run, found[0], tmp), found[1]
    if step is None and "splice_score" in scores:
        history = store.retry(client.get_metric_history, run.info.run_id, "splice_score")
        step = max(metric.step for metric in history) if history else None
    return TrialRow(run, results.trial_name(run), state, step, scores, image)


def _try_image(client: MlflowClient, run: Run, artifact_path: str, tmp: Path) -> Image.Image | None:
    try:
        path = results.download(client, run, artifact_path, tmp / run.info.run_id)
    except BadInput:
        return None
    return _open_rgb(path)


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates lower is better), ordered by the first one."""
    front, best_second = [], math.inf
    for index in sorted(range(len(points)), key=lambda i: points[i]):
        if points[index][1] < best_second:
            front.append(index)
            best_second = points[index][1]
    return front


def _pareto_plot(
    rows: list[TrialRow],
    winner: TrialRow | None,
    bases: dict[str, float | None],
    title: str,
    path: Path,
    prefix: str = "",
) -> Path:
    pareto_figure(rows, winner, bases, title, prefix).savefig(path)
    return path


def pareto_figure(
    rows: list[TrialRow], winner: TrialRow | None, bases: dict[str, float | None], title: str, prefix: str = ""
) -> Figure:
    """structure_score against appearance_score: every scored trial, the Pareto front of the finished ones,
    the winner, and the `splice_score = 1` line (or, when it lies beyond the axes, a legend entry saying so).
    `prefix` "judge_" plots the held-out judge's scores instead (`bases` are then the judge's)."""
    point = functools.partial(_point, prefix=prefix)
    # A bare Figure (no pyplot) renders with Agg and keeps no global state between reports.
    figure = Figure(figsize=(7.5, 6.2), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    finished, stopped = _scored(rows, results.FINISHED, prefix), _scored(rows, results.STOPPED_EARLY, prefix)
    points = [point(row) for row in finished]
    every_point = points + [point(row) for row in stopped]
    if every_point:
        axes.set_xlim(0, max(x for x, _ in every_point) * 1.25 or 1)
        axes.set_ylim(0, max(y for _, y in every_point) * 1.25 or 1)
    if stopped:
        axes.scatter(
            *zip(*(point(row) for row in stopped)), marker="x", color="0.7", label="stopped early (its last eval)"
        )
    if points:
        axes.scatter(*zip(*points), color="0.35", label="finished trial", zorder=2)
        _draw_front(axes, [finished[index] for index in pareto_front(points)], winner, prefix)
    else:
        axes.text(0.5, 0.5, "no finished trial yet", transform=axes.transAxes, ha="center", fontsize=14)
    if winner is not None:
        axes.scatter(
            *point(winner),
            marker="*",
            s=320,
            color="gold",
            edgecolors="black",
            zorder=4,
            label=f"winner (lowest {prefix}splice_score)",
        )
        axes.annotate(
            f"winner {winner.name}\n{prefix}splice_score {number(winner.scores[prefix + 'splice_score'])}",
            point(winner),
            xytext=(18, 18),
            textcoords="offset points",
            fontsize=9,
            arrowprops={"arrowstyle": "->", "color": "black"},
        )
    _draw_copy_line(axes, bases.get("structure_base"), bases.get("appearance_base"), bool(every_point), prefix)
    judge = f" (judge ViT {winner.run.data.params.get('judge_vit')})" if prefix and winner else ""
    axes.set_xlabel(f"{prefix}structure_score{judge} (lower: keeps the structure image's layout)")
    axes.set_ylabel(f"{prefix}appearance_score (lower: takes the appearance image's look)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    # Below the axes: inside, it would hide trials (typically the weak ones in the upper right).
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return figure


def _scored(rows: list[TrialRow], state: str, prefix: str = "") -> list[TrialRow]:
    keys = (prefix + "structure_score", prefix + "appearance_score")
    return [row for row in rows if row.state == state and all(key in row.scores for key in keys)]


def _point(row: TrialRow, prefix: str = "") -> tuple[float, float]:
    return row.scores[prefix + "structure_score"], row.scores[prefix + "appearance_score"]


def _draw_front(axes, front: list[TrialRow], winner: TrialRow | None, prefix: str = "") -> None:
    """The front as the edge of the region its trials dominate, a staircase out to the axes' edges: visible
    even when one trial beats all others (a line through one point draws nothing)."""
    (right, top), points = (axes.get_xlim()[1], axes.get_ylim()[1]), [_point(row, prefix) for row in front]
    xs, ys = [points[0][0]], [top]
    for index, (x, y) in enumerate(points):
        if index:
            xs.append(x)
            ys.append(points[index - 1][1])
        xs.append(x)
        ys.append(y)
    axes.plot(
        [*xs, right],
        [*ys, points[-1][1]],
        "-",
        color="tab:red",
        linewidth=2,
        label="Pareto front (no trial better at both)",
        zorder=3,
    )
    axes.scatter(*zip(*points), color="tab:red", s=36, zorder=3)
    for row in front:
        if row is not winner:  # the winner is labelled with its score
            axes.annotate(
                row.name, _point(row, prefix), xytext=(5, -12), textcoords="offset points", fontsize=8, color="tab:red"
            )


def _draw_copy_line(
    axes, structure_base: float | None, appearance_base: float | None, fixed_axes: bool, prefix: str = ""
) -> None:
    """splice_score = x / structure_base + y / appearance_base = 1: no better than copying an input."""
    if not (structure_base and appearance_base):
        return
    label = f"{prefix}splice_score = 1 (as good as copying an input)"
    right, top = axes.get_xlim()[1], axes.get_ylim()[1]
    if fixed_axes and right / structure_base + top / appearance_base <= 1:
        # The whole plot lies below the line: widening the axes to show it would crowd every trial into a
        # corner, so the legend says where it is instead.
        axes.plot([], [], "--", color="0.6", label=f"{label}: beyond these axes, every trial here beats it")
    else:
        axes.plot([0, structure_base], [appearance_base, 0], "--", color="0.6", label=label)


def _split_params(runs: list[Run]) -> tuple[dict[str, str], list[str]]:
    """(settings equal in every trial, names of the params that were sampled or differ), sampled first."""
    names = sorted({name for run in runs for name in run.data.params} - NOT_SETTINGS)
    sampled = list(dict.fromkeys(name for run in runs for name in results.sampled_names(run)))
    differing = [name for name in names if len({run.data.params.get(name) for run in runs}) > 1]
    varying = sampled + [name for name in differing if name not in sampled]
    settings = {name: runs[0].data.params[name] for name in names if name not in varying}
    return settings, varying


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_page(
    search: str,
    experiment_id: str,
    uri: str,
    reports: list[PairReport],
    note: str | None,
    pages: dict[str, str] | None = None,
    subtitle: str | None = None,
    index: str | None = None,
) -> str:
    """One self-contained page. With `pages` (pair -> the page that shows it), an index: the summary and
    links, no pair sections. With `index`, one page of pairs, linking back to it."""
    escape = html.escape
    base, _ = results.ui_base(uri)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>splice-tune report: {escape(search)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;font-size:14px;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
        "td.text{text-align:left}tr.winner{background:#fff3c4}img{max-width:100%;margin:.5em 0;"
        "border:1px solid #ddd}.note{background:#fde8e8;border:1px solid #e0a0a0;padding:.5em 1em}"
        ".muted{color:#666;font-size:13px}</style></head><body>",
        f"<h1>splice-tune report: search {escape(search)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p><b>{escape(subtitle)}</b> (<a href="{escape(index or "")}">all pairs</a>)</p>')
    if note:
        parts.append(f'<p class="note"><b>Note:</b> {escape(note)}.</p>')
    parts.append(
        f'<p class="muted">MLflow {escape(uri)}, experiment <a href="'
        f'{escape(results.ui_link(base, experiment_id))}">{escape(experiment_id)}</a>; '
        f"generated {dt.datetime.now():%Y-%m-%d %H:%M}. Scores: lower is better; splice_score 1.0 is "
        f"no better than copying an input.</p>"
    )
    link = {r.name: f"{pages[r.name] if pages else ''}#{r.name}" for r in reports}
    parts.append(
        "<p>Pairs: " + ", ".join(f'<a href="{escape(link[r.name])}">{escape(r.name)}</a>' for r in reports) + "</p>"
    )
    if index is None:  # the summary across pairs is the index's (or the only page's)
        winners = {r.name: r.winner.run.data.params if r.winner else None for r in reports}
        params = list(dict.fromkeys(name for r in reports for name in r.varying))
        parts.append(analysis.summary_html(winners, params, [r.analysis for r in reports if r.analysis]))
    if pages is None:
        for report in reports:
            parts += _pair_section(report, search, base, experiment_id)
    parts.append("</body></html>")
    return "\n".join(parts)


def _pair_section(report: PairReport, search: str, base: str, experiment_id: str) -> list[str]:
    """The page's part for one pair: its winner, images, analysis note and a table of every trial."""
    escape = html.escape
    parts = []
    parts.append(f'<h2 id="{escape(report.name)}">{escape(report.name)}</h2>')
    if report.winner is not None:
        by = " --by judge" if report.metric == "judge_splice_score" else ""
        held_out = " (the held-out judge ViT's)" if by else ""
        parts.append(
            f"<p>Winner: trial <b>{escape(report.winner.name)}</b>, {report.metric}{held_out} "
            f"{number(report.winner.scores[report.metric])}. Render it: "
            f"<code>splice-tune best --pair {escape(report.name)} --search {escape(search)}{by}</code></p>"
        )
    else:
        parts.append("<p>No finished trial yet.</p>")
    parts.append(f'<img alt="{escape(report.name)} Pareto front" src="{_data_uri(report.pareto)}">')
    parts.append(f'<img alt="{escape(report.name)} contact sheet" src="{_data_uri(report.sheet)}">')
    if report.analysis and report.analysis.figure:
        parts.append(f'<img alt="{escape(report.name)} analysis" src="{_data_uri(report.analysis.figure)}">')
    if report.analysis and report.analysis.note:
        parts.append(f'<p class="muted">{escape(report.analysis.note)}</p>')
    scores = [name for name in SCORES if any(name in row.scores for row in report.rows)] or list(SCORES[:3])
    header = ["trial", "status", "step", "params from", *scores, *report.varying, "MLflow"]
    parts.append("<table><tr>" + "".join(f"<th>{escape(name)}</th>" for name in header) + "</tr>")
    for row in report.rows:
        error = row.run.data.tags.get(tracking.TAG_ERROR, "").strip().splitlines()
        status = f'<td class="text" title="{escape(error[-1])}">' if error else '<td class="text">'
        cells = [
            f'<td class="text">{escape(row.name)}</td>',
            f"{status}{escape(row.state)}</td>",
            f"<td>{'-' if row.step is None else row.step}</td>",
            f'<td class="text">{escape(row.run.data.tags.get(warm_start.SOURCE, "-"))}</td>',
            *(f"<td>{number(row.scores.get(name))}</td>" for name in scores),
            *(f"<td>{escape(number(row.run.data.params.get(name)))}</td>" for name in report.varying),
            f'<td class="text"><a href="{escape(results.ui_link(base, experiment_id, row.run.info.run_id))}'
            f'">run</a></td>',
        ]
        css = ' class="winner"' if row is report.winner else ""
        parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    settings = ", ".join(f"{name}={number(value)}" for name, value in report.settings.items())
    parts.append(f'<p class="muted">Same in every trial: {escape(settings) or "-"}</p>')
    return parts
