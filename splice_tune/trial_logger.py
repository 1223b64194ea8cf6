"""MLflow writes, trial side: `TrialLogger`, one per Ray trial process, writing that trial's run.

Many trial processes write to one store at once. Per-step losses are therefore buffered in memory and
written with the eval's scores in one batch per evaluation, which keeps the number of write transactions
(what SQLite serialises) small, and every call rides out a locked database (`store.retry`) instead of
dropping the record (docs/design.md, MLflow layout: Concurrent writes), and waits out an MLflow server that is
briefly unreachable (docs/design.md, Lost nodes and tracking outages).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path

import PIL.Image
from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking.multimedia import compress_image_size
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH

from splice_tune.store import retry, search_all, tag_filter
from splice_tune.tracking import (
    IMAGE_KEY,
    KIND_TRIAL,
    MAX_ERROR_CHARS,
    SCHEDULER_STOP,
    TAG_ATTEMPT,
    TAG_ERROR,
    TAG_INTERRUPTED,
    TAG_KIND,
    TAG_PAIR,
    TAG_RESUMED_FROM,
    TAG_SEARCH,
    TAG_STOP_REASON,
    TAG_STOPPED_EARLY,
    TAG_STUDY_TRIAL,
    TAG_TRIAL,
    TAG_VIT,
    TERMINAL_STATUSES,
    log_batch,
    new_params,
    now_ms,
)

# The two files of one eval's image: images/<stem>.png and images/<stem>+compressed.webp, where the stem is
# output+step+<step>+timestamp+<ms>+<uuid> (the names MLflow's log_image writes).
_IMAGE_FILE = re.compile(rf"^images/({re.escape(IMAGE_KEY)}\+step\+(\d+)\+[^/]*?)(\+compressed\.webp|\.png)$")
_IMAGE_FILES = (".png", "+compressed.webp")


class TrialLogger:
    """Worker side: lives inside a Ray trial process and talks to the tracking URI directly.

    Losses given to `log_step` stay in memory until the next `log_eval`, `log_final` or `finish`, which write
    them (with the scores) in one batch: a trial costs one write transaction per evaluation, not per step.
    Buffered steps are lost if the process dies before the next flush.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        pair_name: str,
        search_name: str,
        params: dict,
        tags: dict | None = None,
        study_trial: int | None = None,
    ):
        """Get or create the child run of a trial under `parent_run_id` and set it RUNNING.

        The trial is identified by `study_trial` (its number in the pair's Optuna study) when given, and its
        run named ``PAIR-t<study_trial>``; else by Ray's `trial_id`, which also names the run. The study
        number is what survives a driver killed mid-search: Ray may hand the resumed trial a new id, but the
        restored study asks the same trial number again. A restarted trial
        finds its existing run, so each trial has exactly one run: its attempt counter (tag
        ``splice_tune.attempt``) goes up, stale error / stopped-early / interrupted tags from the previous
        attempt are removed, and params already logged are left alone. `tags` (e.g. the Ray node id) and
        the current Ray trial id are set on every attempt. A restarted attempt may resume from a checkpoint
        older than the run's last logged eval (the trial died after logging it, before Ray kept its
        checkpoint): steps up to that eval are replayed with the same values and not logged again.
        """
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._pending: list[Metric] = []
        self._last_step = 0
        self._logged_through = 0  # the last eval step an earlier attempt logged
        self._unfinished_images: dict[int, str | None] = {}  # eval step -> stem, for images it left unfinished
        extra_tags = {key: str(value) for key, value in (tags or {}).items()}

        identity = {TAG_STUDY_TRIAL: str(study_trial)} if study_trial is not None else {TAG_TRIAL: trial_id}
        extra_tags.update(identity)
        mine = tag_filter(**{**identity, MLFLOW_PARENT_RUN_ID: parent_run_id})
        runs = search_all(self.client, experiment_id, mine)
        if runs:
            run = min(runs, key=lambda found: found.info.start_time)
            attempt = int(run.data.tags.get(TAG_ATTEMPT, "1")) + 1
            extra_tags[TAG_TRIAL] = trial_id
            for stale in (TAG_ERROR, TAG_STOPPED_EARLY, TAG_STOP_REASON, TAG_INTERRUPTED, TAG_RESUMED_FROM):
                if stale in run.data.tags:
                    retry(self.client.delete_tag, run.info.run_id, stale)
            if run.info.status != "RUNNING":
                retry(self.client.update_run, run.info.run_id, status="RUNNING")
            log_batch(
                self.client,
                run.info.run_id,
                tags=[RunTag(key, value) for key, value in {TAG_ATTEMPT: str(attempt), **extra_tags}.items()],
            )
            eval_steps = self._eval_steps(run)
            self._logged_through = max(eval_steps, default=0)
            self._unfinished_images = self._find_unfinished_images(run.info.run_id, eval_steps)
        else:
            run_tags = {
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                TAG_KIND: KIND_TRIAL,
                TAG_SEARCH: search_name,
                TAG_PAIR: pair_name,
                TAG_TRIAL: trial_id,
                TAG_ATTEMPT: "1",
                **extra_tags,
            }
            if "vit" in params:
                run_tags[TAG_VIT] = str(params["vit"])
            # PAIR-t<study trial>: what the UI lists, and the same name after a resume gives Ray new trial ids.
            name = f"{pair_name}-t{study_trial}" if study_trial is not None else trial_id
            tried = False

            def create() -> Run:
                # A create whose answer an outage lost may have been applied: look for it before creating
                # again, or the trial would have two runs (and later attempts would reopen the other one).
                nonlocal tried
                if tried and (created := self.client.search_runs([experiment_id], filter_string=mine)):
                    return min(created, key=lambda found: found.info.start_time)
                tried = True
                return self.client.create_run(experiment_id, run_name=name, tags=run_tags)

            run = retry(create)
        self.run_id: str = run.info.run_id
        log_batch(self.client, self.run_id, params=new_params(run, params))

    def _eval_steps(self, run: Run) -> list[int]:
        # Scores (``*_score``) are logged at evals only, so their short history holds every eval step.
        scores = sorted(key for key in run.data.metrics if key.endswith("_score") and not key.startswith("final_"))
        if not scores:
            return []
        return sorted({metric.step for metric in retry(self.client.get_metric_history, run.info.run_id, scores[0])})

    def _find_unfinished_images(self, run_id: str, eval_steps: list[int]) -> dict[int, str | None]:
        """The eval steps whose image an earlier attempt did not finish writing, each with the stem of the file
        it did write (None when it wrote neither).

        An eval writes its scores first, then the image's PNG, then its preview: a process killed between
        those writes leaves the eval counted as logged (its scores are there) with an image missing or half
        written. The attempt that replays that step rewrites both files under the stem found here.
        """
        found: dict[int, dict[str, str]] = {}
        for info in retry(self.client.list_artifacts, run_id, "images"):
            if match := _IMAGE_FILE.match(info.path):
                found.setdefault(int(match.group(2)), {})[match.group(3)] = match.group(1)
        unfinished = {}
        for step in eval_steps:
            files = found.get(step, {})
            stems = set(files.values())
            if set(files) != set(_IMAGE_FILES) or len(stems) != 1:
                unfinished[step] = files.get(".png", files.get("+compressed.webp"))
        return unfinished

    def log_step(self, step: int, losses: dict[str, float]) -> None:
        """Buffer one training step's losses (written at the next flush, with their own step and time)."""
        if step <= self._logged_through:
            return
        now = now_ms()
        self._pending.extend(Metric(key, float(value), now, step) for key, value in losses.items())
        self._last_step = max(self._last_step, step)

    def log_eval(self, step: int, scores: dict[str, float], image: PIL.Image.Image) -> None:
        """Write the buffered losses and these scores in one batch, then the output image at `step`."""
        if step <= self._logged_through:
            self._last_step = max(self._last_step, step)
            if step in self._unfinished_images:
                # Replayed with the same values, so this is the image the earlier attempt was writing.
                self._log_image(image, step, stem=self._unfinished_images.pop(step))
            return
        now = now_ms()
        self._pending.extend(Metric(key, float(value), now, step) for key, value in scores.items())
        self._last_step = max(self._last_step, step)
        self._flush()
        self._log_image(image, step)

    def _flush(self) -> None:
        # Drop each chunk only once it is stored, so a flush that finally raises can be repeated by the
        # next flush (finish() after a failure) without losing or duplicating rows.
        while self._pending:
            chunk = self._pending[:MAX_ENTITIES_PER_BATCH]
            retry(self.client.log_batch, self.run_id, metrics=chunk, synchronous=True)
            del self._pending[: len(chunk)]

    def _log_image(self, image: PIL.Image.Image, step: int, stem: str | None = None) -> None:
        # The files and tag MLflow's log_image writes (the UI's step slider reads these names), written here
        # under one name chosen once: log_image picks a fresh uuid per call, so repeating it after a locked
        # database or a lost server answer could leave two images at one step. Each write below replaces what
        # an earlier try of it wrote, so `retry` may repeat any of them, and a later attempt may finish an
        # image a killed one left half written by passing its `stem`.
        stem = stem or f"{IMAGE_KEY}+step+{step}+timestamp+{now_ms()}+{uuid.uuid4()}"
        with tempfile.TemporaryDirectory() as tmp:
            for picture, suffix in ((image, _IMAGE_FILES[0]), (compress_image_size(image), _IMAGE_FILES[1])):
                name = stem + suffix
                picture.save(Path(tmp) / name)
                retry(self.client.log_artifact, self.run_id, str(Path(tmp) / name), "images")
        retry(self.client.set_tag, self.run_id, MLFLOW_LOGGED_IMAGES, True, synchronous=True)

    def log_checkpoint(self, checkpoint_path: Path) -> None:
        """Store the generator as artifact ``checkpoint/generator.pt``, replacing the previous eval's, so
        every trial (also one stopped early) keeps its latest generator."""
        checkpoint_path = Path(checkpoint_path)
        with tempfile.TemporaryDirectory() as tmp:
            if checkpoint_path.name != "generator.pt":
                checkpoint_path = Path(shutil.copy(checkpoint_path, Path(tmp) / "generator.pt"))
            retry(self.client.log_artifact, self.run_id, str(checkpoint_path), "checkpoint")

    def log_final(self, image: PIL.Image.Image, checkpoint_path: Path, scores: dict[str, float]) -> None:
        """Write buffered losses and ``final_<score>`` metrics, then artifacts ``output.png`` and
        ``checkpoint/generator.pt`` (copied under that name if `checkpoint_path` is named otherwise)."""
        now = now_ms()
        self._pending.extend(
            Metric(f"final_{key}", float(value), now, self._last_step) for key, value in scores.items()
        )
        self._flush()
        checkpoint_path = Path(checkpoint_path)
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "output.png"
            image.save(output, format="PNG")
            retry(self.client.log_artifact, self.run_id, str(output))
        self.log_checkpoint(checkpoint_path)

    def finish(self, status: str) -> None:
        """Write anything buffered, then end the run with `status` ("FINISHED", "KILLED" or "FAILED")."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        self._flush()
        retry(self.client.set_terminated, self.run_id, status)

    def fail(self, error: str) -> None:
        """Tag the error text and end the run FAILED.

        Text over 5000 characters keeps its end, where a traceback names the actual exception.
        """
        if len(error) > MAX_ERROR_CHARS:
            marker = "[...truncated]\n"
            error = marker + error[-(MAX_ERROR_CHARS - len(marker)) :]
        retry(self.client.set_tag, self.run_id, TAG_ERROR, error, synchronous=True)
        self.finish("FAILED")

    def set_tag(self, key: str, value: str) -> None:
        """Set one tag on the trial's run."""
        retry(self.client.set_tag, self.run_id, key, value, synchronous=True)

    def mark_stopped_early(self, reason: str = SCHEDULER_STOP) -> None:
        """Tag the run as stopped early (with why) and end it KILLED."""
        log_batch(
            self.client,
            self.run_id,
            tags=[RunTag(TAG_STOPPED_EARLY, "true"), RunTag(TAG_STOP_REASON, reason[:MAX_ERROR_CHARS])],
        )
        self.finish("KILLED")
