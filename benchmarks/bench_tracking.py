"""Throughput of concurrent trial writers on one fresh SQLite tracking store.

Each writer is a separate process (as a Ray trial is) with its own `TrialLogger`; it logs `--evals`
evaluations, each after `--steps-per-eval` buffered steps of 4 losses, with 3 scores and an output image.
Afterwards every metric row, param and image is counted back through MLflow, so the table shows both speed
and whether anything was lost.

    .venv/bin/python benchmarks/bench_tracking.py --writers 8 --evals 20 --steps-per-eval 15
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402

from splice_tune.store import default_tracking_uri  # noqa: E402
from splice_tune.tracking import SearchTracker  # noqa: E402
from splice_tune.trial_logger import TrialLogger  # noqa: E402

LOSSES = ("loss/total", "loss/appearance", "loss/structure", "loss/identity")
SCORES = ("structure_score", "appearance_score", "splice_score")
PARAMS = {"vit": "dino_vits8_random", "alpha": 0.1, "beta": 0.1, "lr": 2e-3, "blur_p": 0.2}


def write_trial(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    index: int,
    evals: int,
    steps_per_eval: int,
    ready: multiprocessing.synchronize.Barrier,
) -> None:
    """One trial process: open a logger, then log evals x (steps x losses + scores + image)."""
    image = Image.new("RGB", (64, 48), (index * 30 % 256, 90, 160))
    trial = TrialLogger(uri, experiment_id, parent_run_id, f"trial_{index:04d}", "bench", "bench", PARAMS)
    ready.wait()  # all writers hit the store together: the contention is what is being measured
    step = 0
    for _ in range(evals):
        for _ in range(steps_per_eval):
            step += 1
            trial.log_step(step, {key: 1.0 / step + i for i, key in enumerate(LOSSES)})
        trial.log_eval(step, {key: 0.5 / step + i for i, key in enumerate(SCORES)}, image)
    trial.finish("FINISHED")


def count_records(client: MlflowClient, tracker: SearchTracker) -> int:
    """Metric history rows + params + step images actually stored for the search's trials."""
    found = 0
    for run in tracker.trial_runs():
        for key in run.data.metrics:
            found += len(client.get_metric_history(run.info.run_id, key))
        found += len(run.data.params)
        found += sum(info.path.endswith(".png") for info in client.list_artifacts(run.info.run_id, "images"))
    return found


def main() -> None:
    """Run the writers, count what landed, print one table row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--steps-per-eval", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        uri = default_tracking_uri(Path(tmp))
        tracker = SearchTracker(uri, "bench")
        parent = tracker.pair_run("bench", *_inputs(Path(tmp)))
        context = multiprocessing.get_context("spawn")
        # Process start-up (imports, store connection) is excluded: the clock starts when all are ready.
        ready = context.Barrier(args.writers + 1, timeout=300)
        writers = [
            context.Process(
                target=write_trial,
                args=(uri, tracker.experiment_id, parent, index, args.evals, args.steps_per_eval, ready),
            )
            for index in range(args.writers)
        ]
        for writer in writers:
            writer.start()
        ready.wait()
        started = time.perf_counter()
        for writer in writers:
            writer.join()
        seconds = time.perf_counter() - started
        failed = sum(writer.exitcode != 0 for writer in writers)

        per_writer = args.evals * (args.steps_per_eval * len(LOSSES) + len(SCORES) + 1) + len(PARAMS)
        written = args.writers * per_writer
        found = count_records(tracker.client, tracker)

    print(f"{'writers':>8} {'written':>9} {'found':>9} {'seconds':>8} {'records/s':>10} {'failed':>7}")
    print(f"{args.writers:>8} {written:>9} {found:>9} {seconds:>8.2f} {written / seconds:>10.0f} {failed:>7}")
    if found != written or failed:
        sys.exit(1)


def _inputs(folder: Path) -> tuple[Path, Path]:
    structure, appearance = folder / "structure.png", folder / "appearance.png"
    Image.new("RGB", (32, 32), "white").save(structure)
    Image.new("RGB", (32, 32), "black").save(appearance)
    return structure, appearance


if __name__ == "__main__":
    main()
