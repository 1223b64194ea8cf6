"""What the search driver costs per trial as the number of pairs grows, on the real path.

For each pair count it writes a pairs file of that many pairs (the shipped example images, reused), runs the
real `splice-tune search` CLI in a process of its own without a terminal (output to a log file, as under a
job scheduler): Ray, the Optuna storage and the MLflow SQLite store, `quick` space, 2 trials per pair of
`--steps` steps, `--no-warm-start`. While it runs, the driver process's CPU time and resident memory are read
from /proc (the driver alone, not Ray's processes or the trials' workers). Afterwards it checks that nothing
was lost (one FINISHED MLflow run per trial, every study trial complete), times `ls` and `report` on the
finished search, and measures the log (size, longest line).

    .venv/bin/python benchmarks/bench_scale.py --pairs 32 256 1024

Columns: wall/trial and CPU/trial are counted from the moment the search line is printed (after the checks,
Ray's start and the MLflow records of the pairs) to the end, divided by the trials; start is the time before
that line. Run it alone on the machine: other jobs on 2 cores change every number here.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLICE_TUNE = [sys.executable, "-m", "splice_tune.cli"]
EXAMPLES = REPO / "examples"
TICKS = os.sysconf("SC_CLK_TCK")


def write_pairs(folder: Path, count: int) -> Path:
    """A pairs file of `count` pairs, cycling through the shipped example pairs' images."""
    with open(EXAMPLES / "pairs.csv", newline="") as file:
        shipped = list(csv.DictReader(file))
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["pair", "structure", "appearance"])
        for index in range(count):
            row = shipped[index % len(shipped)]
            writer.writerow(
                [f"p{index:05d}", EXAMPLES / row["structure"], EXAMPLES / row["appearance"]],
            )
    return path


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, peak resident bytes) of process `pid` so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    peak = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return cpu, peak


def run_search(folder: Path, pairs: Path, steps: int, trials: int, timeout: float) -> dict:
    """One search in a child process; its timings, driver CPU and memory, and its log."""
    log_path = folder / "search.log"
    command = [
        *SPLICE_TUNE,
        "search",
        str(pairs),
        "--space",
        "quick",
        "--set",
        f"steps={steps}",
        "--set",
        f"budget.trials_per_pair={trials}",
        "--name",
        "scale",
        "--root",
        str(folder / "splice-runs"),
        "--no-warm-start",
    ]
    # As under a job scheduler: no terminal, and no COLUMNS that a shell would have set.
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "COLUMNS", "LINES")}
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        sample = proc_sample(process.pid) or (0.0, 0)
        search_line_at, cpu_at_search_line = None, None
        while process.poll() is None:
            if time.monotonic() - started > timeout:
                process.kill()
                raise SystemExit(f"search of {pairs} ran past {timeout} s; its log: {log_path}")
            time.sleep(0.2)
            now = proc_sample(process.pid)
            if now is not None:  # a process that has exited but is not reaped yet reports no memory: keep the peak
                sample = (max(now[0], sample[0]), max(now[1], sample[1]))
            if search_line_at is None and "search scale:" in log_path.read_text(errors="replace"):
                search_line_at, cpu_at_search_line = time.monotonic(), sample[0]
        ended = time.monotonic()
    text = log_path.read_text(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"search exited {process.returncode}; the end of its log:\n{text[-3000:]}")
    search_line_at = search_line_at or started
    return {
        "wall": ended - started,
        "start": search_line_at - started,
        "run_wall": ended - search_line_at,
        "cpu": sample[0],
        "run_cpu": sample[0] - (cpu_at_search_line or 0.0),
        "peak": sample[1],
        "log_bytes": len(text.encode()),
        "longest_line": max((len(line) for line in text.splitlines()), default=0),
        "log_lines": text.count("\n"),
    }


def count_lost(folder: Path, pairs: int, trials: int) -> str:
    """'none' when every trial has one FINISHED-or-stopped run and a complete or pruned study trial."""
    import optuna
    from mlflow import MlflowClient

    from splice_tune import results, store, tracking

    root = folder / "splice-runs"
    client = MlflowClient(store.default_tracking_uri(root))
    experiment = client.get_experiment_by_name("scale")
    runs = store.search_all(client, experiment.experiment_id, store.tag_filter(**{tracking.TAG_KIND: "trial"}))
    counts = results.count_states(runs)
    ended = counts[results.FINISHED] + counts[results.STOPPED_EARLY]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    summaries = optuna.get_all_study_summaries(f"sqlite:///{root / 'optuna.db'}")
    told = sum(summary.n_trials for summary in summaries if summary.study_name.startswith("scale/"))
    expected = pairs * trials
    problems = []
    if len(runs) != expected or ended != expected:
        problems.append(f"{len(runs)} runs, {ended} ended of {expected}")
    if told != expected:
        problems.append(f"{told} study trials of {expected}")
    return "; ".join(problems) or "none"


def timed(command: list[str], folder: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--trials", type=int, default=2, help="trials per pair")
    parser.add_argument("--steps", type=int, default=6, help="training steps per trial")
    parser.add_argument("--no-report", action="store_true", help="skip timing `report` (it renders every pair)")
    parser.add_argument("--keep", type=Path, help="keep each search's folder under this one")
    parser.add_argument("--timeout", type=float, default=7200.0)
    args = parser.parse_args()

    print(f"# splice-tune search, quick space, {args.trials} trials x {args.steps} steps per pair, no terminal")
    print(
        "| pairs | trials | start s | wall s/trial | driver CPU s/trial | driver peak MB | lost "
        "| log KB | longest line | ls s | report s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for count in args.pairs:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-scale-{count}-"))
        try:
            pairs = write_pairs(folder, count)
            measured = run_search(folder, pairs, args.steps, args.trials, args.timeout)
            trials = count * args.trials
            lost = count_lost(folder, count, args.trials)
            root = ["--root", str(folder / "splice-runs")]
            ls_s = timed([*SPLICE_TUNE, "ls", *root], folder)
            report_s = "-" if args.no_report else f"{timed([*SPLICE_TUNE, 'report', *root], folder):.1f}"
            print(
                f"| {count} | {trials} | {measured['start']:.1f} | {measured['run_wall'] / trials:.3f} "
                f"| {measured['run_cpu'] / trials:.3f} | {measured['peak'] / 2**20:.0f} | {lost} "
                f"| {measured['log_bytes'] / 1024:.1f} | {measured['longest_line']} | {ls_s:.1f} | {report_s} |",
                flush=True,
            )
            if args.keep:
                shutil.copytree(folder, args.keep / folder.name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
