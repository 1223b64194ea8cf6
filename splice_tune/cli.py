"""The `splice-tune` command line: train one pair, search many, then look at and render the results.

Exit codes: 0 done, 1 the work itself failed, 2 bad input (one readable line per problem, nothing written),
130 / 143 / 129 interrupted by SIGINT (Ctrl-C) / SIGTERM / SIGHUP (the search prints how to resume it).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup
from typer.models import OptionInfo

from splice_model.config import SpliceConfig
from splice_model.presets import VIT_PRESETS
from splice_tune.errors import CommandError, Failure
from splice_tune.formatting import number
from splice_tune.spaces import SPACES_DIR

DEFAULTS = SpliceConfig()
# `best --by`: the <by>_score every trial logs; judge* are the held-out judge's (judge = its splice_score)
SCORE_CHOICES = ("splice", "structure", "appearance", "judge", "judge_structure", "judge_appearance")
DEFAULT_ROOT = Path("splice-runs")  # store.DEFAULT_ROOT, not imported here: store loads MLflow
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: set once, every command reads that store


def _flags_without_type(params: list) -> list:
    # typer's help gives every option a type column, "<bool>" for flags too, which take no value.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


app = typer.Typer(
    help="Find the best Splice (semantic appearance transfer) settings for each of your image pairs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Group,
)
console = Console(stderr=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splice-tune")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"splice-tune {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print splice-tune's version and exit."
    ),
) -> None:
    """Find the best Splice (semantic appearance transfer) settings for each of your image pairs."""


def _default(name: str) -> str:
    return f"\\[default: {getattr(DEFAULTS, name)}]"


def _choices(names) -> str:
    """The metavar of an option with fixed choices, as typer writes one: <a|b|c>."""
    return "<" + "|".join(names) + ">"


def _complete(names):
    """Shell completion of `names` (the callback typer calls with what the user has typed so far)."""
    return lambda incomplete: [name for name in names if name.startswith(incomplete)]


def _shipped_space_names() -> list[str]:
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def _complete_space(incomplete: str) -> list[str]:
    """Shipped space names, then YAML files beside what was typed."""
    folder = Path(incomplete).parent
    files = (
        sorted(
            str(path)
            for pattern in ("*.yaml", "*.yml")
            for path in folder.glob(pattern)
            if str(path).startswith(incomplete)
        )
        if folder.is_dir()
        else []
    )
    return [name for name in _shipped_space_names() if name.startswith(incomplete)] + files


# Every command's --root: one definition, so the store folder is described and defaulted the same everywhere.
Root = Annotated[Path, typer.Option(help="Folder of the local MLflow store (search also keeps Ray's results there).")]
Host = Annotated[
    str, typer.Option(help="Interface to bind; only this machine can connect unless you give another (e.g. 0.0.0.0).")
]


def _tracking_uri_option(help: str) -> OptionInfo:
    return typer.Option(None, envvar=TRACKING_ENV, show_envvar=True, help=help)


@app.command()
def train(
    structure: Path = typer.Argument(..., help="Image whose structure (layout, shapes) the output keeps."),
    appearance: Path = typer.Argument(..., help="Image whose appearance (colours, textures) the output takes."),
    out: Path = typer.Option(Path("out.png"), "--out", "-o", help="Where to write the rendered output image."),
    checkpoint: Optional[Path] = typer.Option(
        None, help="Where to write the generator checkpoint \\[default: OUT with suffix .pt]."
    ),
    steps: Optional[int] = typer.Option(None, help=f"Training steps {_default('steps')}."),
    vit: Optional[str] = typer.Option(
        None,
        # Twelve presets do not fit a metavar column: the help text lists them, where they wrap between names.
        metavar="<preset>",
        autocompletion=_complete(VIT_PRESETS),
        help=f"ViT preset: {', '.join(VIT_PRESETS)} (random_tiny* are NOT DINO) {_default('vit')}.",
    ),
    vit_weights: Optional[Path] = typer.Option(
        None, help="Local DINO or DINOv2 checkpoint file (else torch hub's cache)."
    ),
    judge_vit: Optional[str] = typer.Option(
        None,
        metavar="<preset>",
        autocompletion=_complete(VIT_PRESETS),
        help="A second ViT preset (as --vit) that also scores the result (judge_* scores); the generator never "
        "trains against it.",
    ),
    judge_vit_weights: Optional[Path] = typer.Option(None, help="Local DINO or DINOv2 checkpoint file of --judge-vit."),
    alpha: Optional[float] = typer.Option(None, help=f"Weight of the structure loss {_default('alpha')}."),
    beta: Optional[float] = typer.Option(None, help=f"Weight of the identity loss {_default('beta')}."),
    lr: Optional[float] = typer.Option(None, help=f"Adam learning rate {_default('lr')}."),
    max_side: Optional[int] = typer.Option(None, help=f"Downscale inputs to this long side {_default('max_side')}."),
    vit_size: Optional[int] = typer.Option(None, help=f"Short side of the ViT's input {_default('vit_size')}."),
    eval_every: Optional[int] = typer.Option(None, help=f"Score every N steps {_default('eval_every')}."),
    seed: Optional[int] = typer.Option(None, help=f"Random seed {_default('seed')}."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 or auto \\[default: auto]."),
    amp: Optional[bool] = typer.Option(
        None,
        "--amp/--no-amp",
        show_default=False,
        help="bf16 autocast: --amp always, --no-amp exact fp32 \\[default: where the device computes bf16 natively].",
    ),
    vit_resample: Optional[str] = typer.Option(
        None, help=f"ViT input resize filter, bilinear or bicubic {_default('vit_resample')}."
    ),
    render_max_side: Optional[int] = typer.Option(
        None, help="Cap the rendered output's long side \\[default: the structure image's full size]."
    ),
) -> None:
    """Train Splice on one image pair and render the result at full resolution."""
    from splice_tune.training import TrainRequest, run_train

    settings = {
        "steps": steps,
        "vit": vit,
        "vit_weights": str(vit_weights) if vit_weights else None,
        "judge_vit": judge_vit,
        "judge_vit_weights": str(judge_vit_weights) if judge_vit_weights else None,
        "alpha": alpha,
        "beta": beta,
        "lr": lr,
        "max_side": max_side,
        "vit_size": vit_size,
        "eval_every": eval_every,
        "seed": seed,
        "device": device,
        "amp": amp,
        "vit_resample": vit_resample,
    }
    run_train(TrainRequest(structure, appearance, out, checkpoint, settings, render_max_side), console)


@app.command()
def search(
    pairs_csv: Path = typer.Argument(..., help="CSV with header pair,structure,appearance (paths relative to it)."),
    space: str = typer.Option(
        "quick",
        "--space",
        "-s",
        metavar=_choices([*_shipped_space_names(), "FILE.yaml"]),
        autocompletion=_complete_space,
        help="Search space: a shipped one (`splice-tune spaces` describes them) or a YAML file.",
    ),
    set_values: list[str] = typer.Option(
        [], "--set", help="Override a fixed setting or budget, e.g. --set steps=500 --set budget.trials_per_pair=4."
    ),
    name: Optional[str] = typer.Option(None, help="Search name \\[default: CSV-SPACE-TIMESTAMP]."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted search (--name, or the latest)."),
    root: Root = DEFAULT_ROOT,
    storage: Optional[str] = typer.Option(
        None, help="Ray experiment storage: a path or URI (s3://, gs://) \\[default: ROOT/ray]."
    ),
    tracking_uri: Optional[str] = _tracking_uri_option(
        "MLflow tracking URI, e.g. http://mlflow:5000 \\[default: SQLite under ROOT]."
    ),
    optuna_storage: Optional[str] = typer.Option(
        None,
        help="Optuna storage URL of the pairs' studies, e.g. postgresql://… \\[default: sqlite:///ROOT/optuna.db].",
    ),
    address: Optional[str] = typer.Option(
        None, help="Ray cluster to join: HEAD:6379 of its head node, or auto \\[default: start a local Ray]."
    ),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs Ray reserves for each trial."),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per trial; fractions share a GPU (0.25 = four per GPU)."),
    max_concurrent: Optional[int] = typer.Option(
        None,
        help="Most trials running at once \\[default: the space's budget.max_concurrent, else what resources allow].",
    ),
    max_failures: int = typer.Option(2, help="Retries of a trial that crashes before it counts as failed."),
    warm_start: list[str] = typer.Option(
        [],
        "--warm-start",
        metavar="SEARCH|auto",
        help="Also start each pair's study from the winners of an earlier search (repeatable); auto: every "
        "earlier search in the store with the same space. The paper's point is always tried first.",
    ),
    no_warm_start: bool = typer.Option(
        False, "--no-warm-start", help="Start each study from its sampler alone, not even the paper's point."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table; print only the summary."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Print each failed trial's traceback as it happens (they are always in MLflow)."
    ),
) -> None:
    """Search each pair's best alpha, beta, lr and augmentation strengths (Ray Tune + Optuna, logged to MLflow)."""
    from splice_tune.driver import SearchInterrupted, SearchRequest, run_search

    request = SearchRequest(
        pairs_csv=pairs_csv,
        space=space,
        overrides=list(set_values),
        name=name,
        resume=resume,
        root=root,
        storage=storage,
        tracking_uri=tracking_uri,
        optuna_storage=optuna_storage,
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        warm_start=list(warm_start),
        no_warm_start=no_warm_start,
        quiet=quiet,
        verbose=verbose,
    )
    try:
        summary = run_search(request, console)
    except SearchInterrupted as stop:
        again = shlex.join(arg for arg in sys.argv[1:] if arg != "--resume")
        if "--name" not in sys.argv:
            again += f" --name {stop.name}"
        if stop.reason:
            said = (
                f"[red]error:[/] search {stop.name} stopped: {stop.reason}; then continue it with:\n"
                f"  splice-tune {again} --resume"
            )
        elif stop.started:
            said = (
                f"search {stop.name} interrupted: its state is saved ({stop.interrupted_runs} running "
                f"trial(s) marked interrupted in MLflow). Continue it with:\n  splice-tune {again} --resume"
            )
        else:
            said = f"search {stop.name} stopped before its first trial; start it again with:\n  splice-tune {again}"
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            console.print(said, highlight=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code)  # 128 + the signal's number; 1 for a full disk
    _print_summary(summary, root)
    _raise_failures(summary)


@app.command()
def best(
    pair: Optional[str] = typer.Option(
        None, "--pair", "-p", help="Pair whose winner to render (its name in pairs.csv)."
    ),
    all_pairs: bool = typer.Option(False, "--all", help="Render every pair's winner of the search."),
    trial: Optional[str] = typer.Option(
        None,
        "--trial",
        "-t",
        metavar="PAIR-tN",
        help="Render this trial instead of a winner (e.g. one picked from `report`'s contact sheet); "
        "writes PAIR-tN.png.",
    ),
    search: Optional[str] = typer.Option(None, help="Search name \\[default: the latest search]."),
    by: str = typer.Option(
        "splice",
        metavar=_choices(SCORE_CHOICES),
        autocompletion=_complete(SCORE_CHOICES),
        help="Score that picks the winner: the lowest <by>_score among finished trials "
        "(judge: the held-out judge ViT's splice_score).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output image \\[default: PAIR_best.png here]."),
    out_dir: Optional[Path] = typer.Option(None, help="Folder for PAIR_best.png (with --all) \\[default: here]."),
    max_side: Optional[int] = typer.Option(None, help="Cap the output's long side \\[default: full resolution]."),
    retrain_steps: Optional[int] = typer.Option(
        None, help="Train the winner's settings again from scratch for N steps and render that (also writes OUT.pt)."
    ),
    root: Root = DEFAULT_ROOT,
    tracking_uri: Optional[str] = _tracking_uri_option("MLflow tracking URI \\[default: SQLite under ROOT]."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Also print the winners as one JSON document on stdout, "
        "for scripts (keys: README); the rest goes to stderr.",
    ),
) -> None:
    """Render a pair's winning trial (or a trial you pick) at the structure image's full resolution."""
    from splice_tune.best import BestRequest, run_best

    run_best(
        BestRequest(
            pair, all_pairs, trial, search, by, out, out_dir, max_side, retrain_steps, root, tracking_uri, as_json
        ),
        progress_console=console,
    )


@app.command()
def report(
    pair: Optional[str] = typer.Option(None, "--pair", "-p", help="Only this pair \\[default: every pair]."),
    search: Optional[str] = typer.Option(None, help="Search name \\[default: the latest search]."),
    out_dir: Optional[Path] = typer.Option(None, help="Where to write the report \\[default: ROOT/reports/SEARCH]."),
    root: Root = DEFAULT_ROOT,
    tracking_uri: Optional[str] = _tracking_uri_option("MLflow tracking URI \\[default: SQLite under ROOT]."),
    optuna_storage: Optional[str] = typer.Option(
        None, help="Optuna storage URL \\[default: sqlite:///ROOT/optuna.db]."
    ),
) -> None:
    """Pareto plots, contact sheets, study analysis and an HTML page of a search (also logged to MLflow)."""
    from splice_tune.report import ReportRequest, run_report

    run_report(ReportRequest(pair, search, out_dir, root, tracking_uri, optuna_storage))


@app.command()
def ui(
    port: int = typer.Option(5000, help="Port to serve on."),
    host: Host = "127.0.0.1",
    root: Root = DEFAULT_ROOT,
) -> None:
    """Serve the MLflow UI for the local store until Ctrl-C."""
    from splice_tune.ui import serve_ui

    sys.exit(serve_ui(root, host, port, console))


@app.command()
def dashboard(
    port: int = typer.Option(8080, help="Port to serve on."),
    host: Host = "127.0.0.1",
    root: Root = DEFAULT_ROOT,
    optuna_storage: Optional[str] = typer.Option(
        None, help="Optuna storage URL \\[default: sqlite:///ROOT/optuna.db]."
    ),
) -> None:
    """Serve optuna-dashboard on the searches' Optuna studies (one per search and pair) until Ctrl-C."""
    from splice_tune.dashboard import serve_dashboard, storage_flag

    url, flag = storage_flag(optuna_storage, root)
    sys.exit(serve_dashboard(url, flag, host, port, console))


@app.command()
def spaces() -> None:
    """List the shipped search spaces (for --space) with what each is for."""
    from rich.table import Table

    from splice_tune.spaces import shipped_spaces

    table = Table(title=f"search spaces shipped in {SPACES_DIR}", title_justify="left")
    table.add_column("--space", no_wrap=True)
    table.add_column("description", overflow="fold")
    for name, description in shipped_spaces().items():
        table.add_row(name, description or "-")
    Console().print(table)
    Console().print(
        "or pass your own YAML file: --space my_space.yaml (format: search_spaces/README.md)", highlight=False
    )


@app.command("ls")
def list_searches(
    root: Root = DEFAULT_ROOT,
    tracking_uri: Optional[str] = _tracking_uri_option("MLflow tracking URI \\[default: SQLite under ROOT]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document for scripts (keys: README)."),
) -> None:
    """List searches with, per pair, trials by state and the best splice_score."""
    from splice_tune.listing import list_searches as show

    show(root, tracking_uri, as_json=as_json)


SUMMARY_ROWS = 12  # a search of more pairs shows its best and worst few: the summary fits one screen
SUMMARY_FAILURES = 5  # pairs named in the failure lines; the rest are counted


def _print_summary(summary, root: Path | None = None) -> None:
    """Each pair's winner, then how to render them and where the rest is. Fits one screen at any number of
    pairs: beyond `SUMMARY_ROWS` pairs, the table shows the best and the worst few by the objective and a
    line says how many are between (`ls` and `report` list every pair)."""
    from rich.table import Table

    from splice_model.presets import not_dino_note
    from splice_tune.best import by_name

    out = Console(soft_wrap=True)
    pairs = list(summary.pairs)
    with_winner = sorted((pair for pair in pairs if pair.run_id), key=lambda pair: pair.score)
    shown, between = pairs, 0
    if len(pairs) > SUMMARY_ROWS:
        few = SUMMARY_ROWS // 2
        shown = with_winner[:few] + with_winner[-few:] if len(with_winner) > 2 * few else with_winner
        between = len(with_winner) - len(shown)
    title = f"search {summary.name}: each pair's winner by {summary.metric}"
    if len(shown) < len(pairs):
        title = (
            f"search {summary.name}: the best and worst {len(shown) // 2} of {len(pairs)} pairs' winners "
            f"by {summary.metric}"
        )
    table = Table(title=title, title_justify="left")
    # Beyond a screenful of pairs, no params column: in a log's 80 columns it folds each row into many lines
    # (`ls`, `report` and `best --pair` show them).
    columns = ["pair", summary.metric, "finished", "stopped early", "failed"]
    columns += ["winner's params"] if len(shown) == len(pairs) else []
    for column in columns:
        table.add_column(column, overflow="fold")
    for index, pair in enumerate(shown):
        if between and index == len(shown) // 2:
            table.add_row(f"... {between} more", *[""] * (len(columns) - 1))
        params = " ".join(f"{k}={number(v)}" for k, v in sorted(pair.params.items())) or "-"
        cells = [
            pair.pair,
            number(pair.score),
            str(pair.counts["finished"]),
            str(pair.counts["stopped early"]),
            str(pair.counts["failed"]),
        ]
        table.add_row(*cells, *([params if pair.run_id else "no finished trial"] if len(columns) > 5 else []))
    out.print(table)
    if len(pairs) > 1:
        counts = {key: sum(pair.counts[key] for pair in pairs) for key in ("finished", "stopped early", "failed")}
        out.print(
            f"{len(pairs)} pairs, {len(with_winner)} with a winner; trials: {counts['finished']} finished, "
            f"{counts['stopped early']} stopped early, {counts['failed']} failed",
            highlight=False,
        )
    by = "" if summary.metric == "splice_score" else f" --by {by_name(summary.metric)}"
    store = "" if root is None or root == DEFAULT_ROOT else f" --root {shlex.quote(str(root))}"
    if len(with_winner) == 1 and len(pairs) == 1:
        out.print(
            f"  splice-tune best --pair {with_winner[0].pair} --search {summary.name}{by}{store}", highlight=False
        )
    elif with_winner:
        out.print(
            f"render every winner: splice-tune best --all --search {summary.name}{by}{store} "
            f"(one: --pair {with_winner[0].pair} instead of --all)",
            highlight=False,
        )
    if len(shown) < len(pairs):
        out.print(
            f"every pair: splice-tune ls{store}; plots and contact sheets: splice-tune report "
            f"--search {summary.name}{store}",
            highlight=False,
        )
    note = not_dino_note(getattr(summary, "vit", None) or "")
    if note:
        out.print(f"[bold red]{note}[/]", highlight=False)
    out.print(
        f"MLflow: {summary.tracking_uri} (experiment {summary.experiment_id}); compare trials with: splice-tune ui",
        highlight=False,
    )


def _raise_failures(summary) -> None:
    """Failure with one line per pair whose every trial failed or diverged, naming the cause; None if none."""
    from splice_tune.results import ui_link

    failed = [pair for pair in summary.pairs if pair.failure]
    if failed:
        lines = [
            f"pair {pair.pair}: no trial finished: {pair.failure}; each trial's full error is in "
            f"MLflow: {ui_link(summary.tracking_uri, summary.experiment_id, pair.parent_run_id)}"
            for pair in failed[:SUMMARY_FAILURES]
        ]
        if len(failed) > SUMMARY_FAILURES:
            lines.append(
                f"and {len(failed) - SUMMARY_FAILURES} more pairs where no trial finished "
                f"(splice-tune ls lists them: their failed column equals their trials)"
            )
        raise Failure(lines)


# Every command renders its --help through _Command (flags without a type), set here once for all of them.
for _info in app.registered_commands:
    _info.cls = _Command


def main() -> None:
    """Console-script entry point: turns BadInput and Failure into `error:` lines and exit codes 2 and 1."""
    try:
        app()
    except CommandError as error:
        for problem in error.problems:
            console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    # No KeyboardInterrupt handler here: typer's own main turns Ctrl-C into Exit(130) (typer/core.py `_main`).


if __name__ == "__main__":
    main()
