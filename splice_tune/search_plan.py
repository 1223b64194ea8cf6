"""What `splice-tune search` is asked to do, and the checks that turn the request into a plan before anything
starts (docs/design.md, Input validation contract).

`driver.plan_search` runs them in order; each returns every problem it finds as one line, so a user fixes
everything in one go. The plan is what the rest of the search runs on: the space, the pairs, the name, where
Ray and MLflow keep it, and the fingerprints a resume is compared against (docs/design.md, Resume contract).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from splice_model import NearDuplicatePairError, PairScorer, WeightsError, build_vit
from splice_model.images import load_image
from splice_model.train import JUDGE_PREFIX
from splice_tune import results, store, studies, tracking, warm_start
from splice_tune.console import PROGRESS_EVERY_S
from splice_tune.errors import BadInput
from splice_tune.pairs import Pair
from splice_tune.spaces import SearchSpace

SEARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class SearchRequest:
    """Everything `splice-tune search` was asked to do (flags and files, not yet validated)."""

    pairs_csv: Path
    space: str = "quick"
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    resume: bool = False
    root: Path = store.DEFAULT_ROOT
    storage: str | None = None
    tracking_uri: str | None = None
    optuna_storage: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 2
    quiet: bool = False
    progress_every: float = PROGRESS_EVERY_S  # seconds between progress lines when there is no terminal
    verbose: bool = False  # Ray's own error reports (with tracebacks) as trials fail
    warm_start: list[str] = field(default_factory=list)  # earlier searches whose winners start the studies; "auto"
    no_warm_start: bool = False  # not even the paper's point


@dataclass
class SearchPlan:
    """A search whose every input was checked: what `driver.run_search` runs."""

    request: SearchRequest
    name: str
    pairs: list[Pair]
    space: SearchSpace
    storage: str
    tracking_uri: str
    optuna_url: str  # the Optuna storage of the pairs' studies
    max_concurrent: int | None
    baselines: dict[str, dict[str, float]]  # pair -> structure_base, appearance_base (and the judge's, judge_*)
    fingerprints: dict[str, str]  # experiment tags recording the inputs (see search_fingerprints)
    warm: warm_start.WarmStart = field(default_factory=warm_start.WarmStart)  # what each study tries first


def flag_problems(request: SearchRequest) -> list[str]:
    """The resource and retry flags that cannot work (on this machine, unless a cluster --address is given)."""
    problems = []
    if request.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial: must be > 0, got {request.cpus_per_trial}")
    if request.gpus_per_trial < 0:
        problems.append(f"--gpus-per-trial: must be >= 0, got {request.gpus_per_trial}")
    if request.gpus_per_trial > 1 and request.gpus_per_trial != int(request.gpus_per_trial):
        problems.append(f"--gpus-per-trial: above 1 it must be a whole number of GPUs, got {request.gpus_per_trial}")
    if request.max_concurrent is not None and request.max_concurrent < 1:
        problems.append(f"--max-concurrent: must be >= 1, got {request.max_concurrent}")
    if request.max_failures < 0:
        problems.append(f"--max-failures: must be >= 0, got {request.max_failures}")
    if request.no_warm_start and request.warm_start:
        problems.append("--warm-start and --no-warm-start: give one of them (or neither: the paper's point)")
    if request.address is None and request.cpus_per_trial > (os.cpu_count() or 1):
        problems.append(
            f"--cpus-per-trial {request.cpus_per_trial}: this machine has {os.cpu_count()} CPUs, so no "
            f"trial could ever start; use at most {os.cpu_count()} or join a cluster with --address"
        )
    if request.gpus_per_trial > 0 and request.address is None and torch.cuda.device_count() == 0:
        problems.append(
            f"--gpus-per-trial {request.gpus_per_trial}: this machine has no GPU; leave it at 0 "
            f"or join a GPU cluster with --address"
        )
    return problems


def storage_path(request: SearchRequest) -> str:
    """Where Ray keeps the search's experiment folder: --storage (default ROOT/ray), absolute when local."""
    storage = request.storage or str(request.root / "ray")
    if is_local(storage):
        # Ray wants an absolute path; a file:// URI names the same folder.
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    return storage


def chosen_name(request: SearchRequest, storage: str) -> str | None:
    """The search's name: --name, else with --resume the latest search under a local `storage` (None when there
    is none), else PAIRS-SPACE-TIMESTAMP."""
    return request.name or (_latest_search(storage) if request.resume else _default_name(request))


def name_problems(request: SearchRequest, name: str | None, storage: str) -> list[str]:
    """Why `name` cannot be the search's name under `storage`: invalid, or taken (free, with --resume)."""
    problems = []
    if name is None:
        problems.append(f"--resume: no search to resume under {storage}; pass --name of the search")
    elif not SEARCH_NAME.match(name):
        problems.append(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.' or '-')"
        )
    else:
        from ray import tune

        experiment = f"{storage.rstrip('/')}/{name}"
        try:
            # Shared or cloud storage (s3://, gs://) is read through Ray's own filesystem layer (pyarrow).
            exists = Path(experiment).exists() if is_local(storage) else tune.Tuner.can_restore(experiment)
        except (OSError, ValueError) as error:  # what pyarrow raises for an unknown scheme or unreachable store
            problems.append(
                f"--storage {storage}: cannot read it ({' '.join(str(error).split())}); check the "
                f"URI and this machine's credentials for it"
            )
        else:
            if request.resume and not exists:
                problems.append(f"--resume: no search named {name!r} under {storage}; check --name and --storage")
            if not request.resume and exists:
                problems.append(
                    f"--name {name!r}: a search of that name exists under {storage}; add --resume "
                    f"to continue it, or choose another --name"
                )
    return problems


def search_fingerprints(space: SearchSpace, pairs: list[Pair]) -> dict[str, str]:
    """What a search runs, as the experiment tags that record it: the space after --set, the pairs (names
    and image paths, in order), both together (`TAG_SPEC`), and each image's content. A resume must run the
    same, or its trials would silently differ from the first part's; separate tags say which input differs.
    """

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    space_part = space.to_dict()
    pairs_part = [[pair.name, str(pair.structure), str(pair.appearance)] for pair in pairs]
    tags = {
        tracking.TAG_SPEC: digest({"space": space_part, "pairs": pairs_part}),
        tracking.TAG_SPEC_SPACE: digest(space_part),
        tracking.TAG_SPEC_PAIRS: digest(pairs_part),
        warm_start.TAG_SETTINGS: warm_start.settings_fingerprint(space),
    }
    for pair in pairs:
        for role in ("structure", "appearance"):
            tags[_image_tag(pair, role)] = hashlib.sha256(getattr(pair, role).read_bytes()).hexdigest()
    return tags


def _image_tag(pair: Pair, role: str) -> str:
    return f"{tracking.TAG_INPUT_SHA256}.{pair.name}.{role}"


def recorded_search_problems(
    request: SearchRequest, name: str, space: SearchSpace, pairs: list[Pair], fingerprints: dict[str, str]
) -> list[str]:
    """What the MLflow store says against starting (or resuming) search `name`: its records must never be
    mixed with another search's, and a resume must run on the inputs the search started with."""
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
    try:
        experiment = results.recorded_search(tracking_uri, name)
    except BadInput as error:
        return error.problems
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        return [tracking.deleted_search(name)]
    if not request.resume:
        if experiment is not None:
            return [
                f"--name {name!r}: the MLflow store {tracking_uri} already holds a search of that name; "
                f"add --resume to continue it, or choose another --name"
            ]
        return []
    if experiment is None:
        return [
            f"--resume: the MLflow store {tracking_uri} has no search named {name!r}; pass the --root or "
            f"--tracking-uri the search used"
        ]
    if request.tracking_uri is None and not store.lies_under(experiment.artifact_location, request.root):
        # MLflow puts a new run's artifacts where the experiment says, which is no longer this root.
        return [
            f"--resume: search {name!r} keeps its artifacts in {experiment.artifact_location}, outside --root "
            f"{request.root.resolve()} (the store was moved or copied since the search started); resume it "
            f"where it started, or start a new search with another --name"
        ]
    return _changed_inputs(experiment.tags, request, name, space, pairs, fingerprints)


def _changed_inputs(
    recorded: dict[str, str],
    request: SearchRequest,
    name: str,
    space: SearchSpace,
    pairs: list[Pair],
    fingerprints: dict[str, str],
) -> list[str]:
    """One line per input that differs from what search `name` recorded when it started. Inputs it did not
    record (searches started before images were fingerprinted) cannot be compared and pass."""

    def differs(key: str) -> bool:
        return key in recorded and recorded[key] != fingerprints[key]

    fix = f"resume with the inputs search {name!r} started with, or start a new search with another --name"
    problems = []
    if differs(tracking.TAG_SPEC_SPACE):
        problems.append(
            f"--resume: the search space {_shown(space)} (with its --set values) differs from what "
            f"search {name!r} started with; {fix}"
        )
    if differs(tracking.TAG_SPEC_PAIRS):
        problems.append(
            f"--resume: the pairs file {request.pairs_csv} lists other pairs or image paths than "
            f"search {name!r} started with; {fix}"
        )
    if differs(tracking.TAG_SPEC) and not problems:  # a search that recorded only the combined fingerprint
        problems.append(
            f"--resume: the pairs file or the search space (with its --set values) differs from "
            f"what search {name!r} started with; {fix}"
        )
    for pair in pairs if not problems else []:
        for role in ("structure", "appearance"):
            if differs(_image_tag(pair, role)):
                problems.append(
                    f"--resume: {pair.where}: {role} image {getattr(pair, role)} has changed since "
                    f"search {name!r} started (its content differs); put the original back, or "
                    f"start a new search with another --name"
                )
    return problems


def warm_start_plan(request: SearchRequest, name: str, space: SearchSpace, pairs: list[Pair]) -> warm_start.WarmStart:
    """What each pair's new study tries first (`warm_start`); BadInput for a --warm-start search the store
    lacks or that has no winner. A resumed search keeps what it started with: nothing new is enqueued."""
    if request.resume or request.no_warm_start:
        return warm_start.WarmStart()
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
    winners, notes = warm_start.earlier_winners(tracking_uri, request.warm_start, space, name)
    plan = warm_start.plan(space, [pair.name for pair in pairs], True, winners)
    plan.notes[:0] = notes
    return plan


def study_problems(request: SearchRequest, name: str, pairs: list[Pair], optuna_url: str) -> list[str]:
    """What the Optuna storage says against starting (or resuming) search `name`: see `studies.storage_problems`.
    The storage a resumed search started with is in its experiment's tags."""
    recorded = None
    if request.resume:
        tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
        experiment = results.recorded_search(tracking_uri, name)
        recorded = experiment.tags.get(studies.TAG_STORAGE) if experiment is not None else None
    return studies.storage_problems(optuna_url, name, [pair.name for pair in pairs], request.resume, recorded)


def check_vit_and_pairs(space: SearchSpace, pairs: list[Pair]) -> dict[str, dict[str, float]]:
    """Load the ViT and the judge ViT once (weights missing offline fail here, not in every trial) and reject
    pairs whose images are (near-)duplicates to either, where the scores would divide by ~0. Returns each
    pair's baselines (the judge's with a judge_ prefix)."""
    config = space.lowest_config()
    networks = {"": ("vit", config.vit, config.vit_weights)}
    if config.judge_vit is not None:
        networks[JUDGE_PREFIX] = ("judge_vit", config.judge_vit, config.judge_vit_weights)
    features, problems = {}, []
    for prefix, (field_name, preset, weights) in networks.items():
        try:
            features[prefix] = build_vit(preset, weights)
        except WeightsError as error:
            problems.append(f"{_shown(space)}: {field_name} {preset}: {error}")
    if problems:
        raise BadInput(problems)
    baselines: dict[str, dict[str, float]] = {}
    for pair in pairs:
        structure = load_image(pair.structure, max_side=config.max_side)
        appearance = load_image(pair.appearance, max_side=config.max_side)
        baselines[pair.name] = {}
        for prefix, network in features.items():
            scorer = PairScorer(
                network, structure, appearance, config.vit_size, config.vit_max_side, config.vit_resample
            )
            judge = f" (to the judge ViT {config.judge_vit})" if prefix else ""
            try:
                scorer.check_baselines(f"{pair.where}: pair {pair.name!r}{judge}")
            except NearDuplicatePairError as error:
                problems.append(str(error))
            baselines[pair.name].update({prefix + name: value for name, value in scorer.baselines.items()})
    if problems:
        raise BadInput(problems)
    return baselines


def _shown(space: SearchSpace) -> str:
    return str(space.path) if space.path else "search space"


def is_local(storage: str) -> bool:
    """True for a folder this machine reads directly (a path, also a shared mount, or file://); False for a
    URI that only Ray's filesystem layer reads (s3://, gs://, ...)."""
    return "://" not in storage or storage.startswith("file://")


def _default_name(request: SearchRequest) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(request.pairs_csv).stem) or "pairs"
    space = re.sub(r"[^A-Za-z0-9._-]", "-", Path(request.space).stem)
    return f"{stem}-{space}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _latest_search(storage: str) -> str | None:
    if not is_local(storage) or not Path(storage).is_dir():
        return None
    searches = [path for path in Path(storage).iterdir() if path.is_dir() and SEARCH_NAME.match(path.name)]
    return max(searches, key=lambda path: path.stat().st_mtime).name if searches else None
