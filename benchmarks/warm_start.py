"""Does warm-starting a pair's Optuna study find a better splice_score in the same number of trials?

    python benchmarks/warm_start.py              # 6 pairs x 3 seeds, 8 trials per study, k = 2,4,8 (~12 min, 2 cores)
    python benchmarks/warm_start.py --quick      # 2 pairs, 1 seed, 6 steps per training: the smoke test (a test)

Two arms, each one in-memory Optuna study per (pair, sampler seed), trials asked and told one after the
other, every trial trained to the end (no early stopping: no ASHA, no Ray, no MLflow; only `splice_model`,
`optuna` and splice-tune's own search space, sampler and warm-start helpers):

- cold ("sampler only"): the pair's seeded sampler (`splice_tune.search.make_sampler`) proposes every trial;
- warm: the same sampler, but the study first gets `splice_tune.warm_start.plan`'s points enqueued: the
  paper's point, then the other pairs' cold-arm winners (same seed) by score, at most half the trials. This is
  leave-one-out: it is what `splice-tune search --warm-start EARLIER` gives a pair when the earlier search
  covered the other pairs (and not this one).

Reported, after k trials of each study: the best splice_score so far (the search's objective), as the median
over all pairs x seeds per arm, the median of the per-(pair, seed) warm-minus-cold differences, and in how many
(pair, seed) cases warm was better / equal / worse; the same for the held-out judge's judge_splice_score of the
trial that splice_score picks; the paper point's own score; which source each warm study's winner came from;
the wall time. Lower scores are better.

The space is the shipped `quick` one (random-weight tiny ViTs, NOT DINO; 96 px) with its budget set to the
largest k (so `plan` may enqueue up to ceil(k/2) points). Pairs are built from the procedurally drawn images
in examples/pairs/: the three matched pairs and three crossed ones. The training seed is the space's fixed
one, so equal params train to equal scores: trainings are cached by (pair, rounded params), and the paper
point trains once per pair. Studies run in a pool of `--workers` spawned processes (one torch thread each),
one study per task; the warm arm starts when the cold arm is done, since it needs the cold winners.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, like the other benchmarks

import optuna  # noqa: E402

from splice_tune import warm_start  # noqa: E402
from splice_tune.spaces import SearchSpace, load_space  # noqa: E402
from splice_tune.warm_start import SOURCE, WarmPoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "pairs"
COLD, WARM = "cold", "warm"
ARM_LABELS = {COLD: "cold: sampler only", WARM: "warm: paper + leave-one-out winners"}
HEADER = f"| k trials | {ARM_LABELS[COLD]} | {ARM_LABELS[WARM]} | warm - cold | warm better / equal / worse |"
FULL = {"pairs": 6, "seeds": 3, "ks": "2,4,8", "workers": 2, "steps": None}
# ks 1,3 rather than 1,2: with a budget of 2 `plan` enqueues only the paper's point (at most half the trials),
# with 3 also the other pair's winner, so the smoke test goes through every path.
QUICK = {"pairs": 2, "seeds": 1, "ks": "1,3", "workers": 1, "steps": 6}


@dataclasses.dataclass(frozen=True)
class Pair:
    """A structure image and an appearance image from examples/pairs/."""

    name: str
    structure: str  # the scene whose structure image is used
    appearance: str  # the scene whose appearance image is used

    def paths(self) -> tuple[Path, Path]:
        return IMAGES / f"{self.structure}_structure.png", IMAGES / f"{self.appearance}_appearance.png"


PAIRS = (
    Pair("cows", "cows", "cows"),
    Pair("fruits", "fruits", "fruits"),
    Pair("mountains", "mountains", "mountains"),
    Pair("cows-x-fruits", "cows", "fruits"),
    Pair("fruits-x-mountains", "fruits", "mountains"),
    Pair("mountains-x-cows", "mountains", "cows"),
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One training's final scores (NaN when the loss went non-finite) and its wall time (0 when cached)."""

    score: float
    judge: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    params: dict
    source: str  # "paper", "cold/PAIR" (an enqueued winner) or the sampler's type
    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class StudyTask:
    """One study to run in a worker: `trials` trials, `points` enqueued first; `known`: cached trainings."""

    arm: str
    pair: Pair
    seed: int
    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    trials: int
    points: tuple[WarmPoint, ...] = ()
    known: tuple[tuple[tuple, Outcome], ...] = ()


@dataclasses.dataclass(frozen=True)
class StudyResult:
    arm: str
    pair: str
    seed: int
    trials: tuple[TrialRecord, ...]
    trained: int  # trainings this study ran (the others came from the cache)

    def best(self, k: int) -> TrialRecord | None:
        """The trial with the lowest splice_score among the first k (None: none finished)."""
        done = [trial for trial in self.trials[:k] if math.isfinite(trial.outcome.score)]
        return min(done, key=lambda trial: trial.outcome.score, default=None)


# ---------------------------------------------------------------- worker side (one torch thread per process)

_IMAGES: dict[str, tuple] = {}
_CACHE: dict[tuple, Outcome] = {}


def init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def params_key(pair: str, params: dict) -> tuple:
    """What identifies a training: the pair and its params, floats rounded (Optuna hands back what it got)."""
    rounded = {name: round(float(v), 10) if isinstance(v, (int, float)) else v for name, v in params.items()}
    return (pair, *sorted(rounded.items()))


def train(space: SearchSpace, pair: Pair, params: dict) -> Outcome:
    """Train one trial on the CPU to the end; its final splice_score and judge_splice_score."""
    from splice_model import EvalEvent, NonFiniteLossError, SpliceTrainer
    from splice_model.images import load_image

    config = space.config_for(params).replace(device="cpu")
    if pair.name not in _IMAGES:
        _IMAGES[pair.name] = tuple(load_image(path, max_side=config.max_side) for path in pair.paths())
    start = time.perf_counter()
    scores = {}
    try:
        for event in SpliceTrainer(*_IMAGES[pair.name], config).events():
            if isinstance(event, EvalEvent) and event.final:
                scores = event.scores
    except NonFiniteLossError:
        scores = {}
    return Outcome(
        float(scores.get(space.objective.metric, math.nan)),
        float(scores.get("judge_splice_score", math.nan)),
        time.perf_counter() - start,
    )


def cached_train(space: SearchSpace, pair: Pair, params: dict) -> tuple[Outcome, bool]:
    """`train`, or the cached outcome of the same (pair, params); whether it trained."""
    key = params_key(pair.name, params)
    if key in _CACHE:
        return dataclasses.replace(_CACHE[key], seconds=0.0), False
    _CACHE[key] = train(space, pair, params)
    return _CACHE[key], True


def run_study(task: StudyTask) -> StudyResult:
    """One study, sequential: ask, train, tell (a non-finite loss is told as FAIL), `task.trials` times."""
    _CACHE.update(task.known)
    study = optuna.create_study(direction="minimize", sampler=task.sampler)
    for point in task.points:
        study.enqueue_trial(point.params, user_attrs={SOURCE: point.source})
    distributions = task.space.distributions()
    records, trained = [], 0
    for _ in range(task.trials):
        trial = study.ask(distributions)
        outcome, fresh = cached_train(task.space, task.pair, dict(trial.params))
        trained += fresh
        if math.isfinite(outcome.score):
            study.tell(trial, outcome.score)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        source = trial.user_attrs.get(SOURCE, task.space.sampler.type)
        records.append(TrialRecord(dict(trial.params), source, outcome))
    return StudyResult(task.arm, task.pair.name, task.seed, tuple(records), trained)


def run_point(space: SearchSpace, pair: Pair, params: dict) -> tuple[tuple, Outcome]:
    return params_key(pair.name, params), train(space, pair, params)


# ---------------------------------------------------------------- driver side


def bench_space(trials: int, steps: int | None) -> SearchSpace:
    """The quick space with a budget of `trials` per pair and, with `steps`, that training length."""
    space = load_space("quick")
    space = dataclasses.replace(space, budget=dataclasses.replace(space.budget, trials_per_pair=trials))
    if steps is not None:
        space = dataclasses.replace(space, fixed={**space.fixed, "steps": steps})
    return space


def seeded_sampler(space: SearchSpace, pair: str, seed: int) -> optuna.samplers.BaseSampler:
    """The pair's sampler as a search with sampler seed `seed` builds it."""
    from splice_tune.search import make_sampler  # imports Ray's module (not a Ray run): the driver only

    return make_sampler(dataclasses.replace(space, sampler=dataclasses.replace(space.sampler, seed=seed)), pair)


def run_tasks(pool, tasks: list[StudyTask], label: str) -> list[StudyResult]:
    results = []
    for result in pool.imap_unordered(run_study, tasks, chunksize=1):
        results.append(result)
        best = result.best(len(result.trials))
        shown = f"{best.outcome.score:.4f}" if best else "none finished"
        print(
            f"  {label} {len(results)}/{len(tasks)}: {result.pair} seed {result.seed}: best {shown} "
            f"({result.trained} trained)",
            file=sys.stderr,
            flush=True,
        )
    return sorted(results, key=lambda r: ([p.name for p in PAIRS].index(r.pair), r.seed))


def winners(cold: list[StudyResult], seed: int, leave_out: str) -> list[WarmPoint]:
    """The cold arm's winners of seed `seed`, every pair's but `leave_out`'s, as an earlier search's."""
    points = []
    for result in cold:
        best = result.best(len(result.trials))
        if result.seed == seed and result.pair != leave_out and best is not None:
            points.append(WarmPoint(best.params, f"cold/{result.pair}", best.outcome.score, result.pair))
    return points


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.4f}" if values else "n/a"


def comparison_rows(cold: dict, warm: dict, ks: list[int], judge: bool) -> list[str]:
    """One markdown row per k: medians per arm, median warm-minus-cold difference, better/equal/worse."""
    rows = []
    for k in ks:
        values = {}
        for arm, results in ((COLD, cold), (WARM, warm)):
            for case, result in results.items():
                best = result.best(k)
                value = math.nan if best is None else (best.outcome.judge if judge else best.outcome.score)
                values[arm, case] = value
        finite = {arm: [v for (a, _), v in values.items() if a == arm and math.isfinite(v)] for arm in (COLD, WARM)}
        diffs = [values[WARM, case] - values[COLD, case] for case in cold]
        diffs = [d for d in diffs if math.isfinite(d)]
        better, equal = sum(d < -1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs)
        missing = len(cold) - len(diffs)
        counts = f"{better} / {equal} / {len(diffs) - better - equal}" + (f" ({missing} n/a)" if missing else "")
        diff = f"{statistics.median(diffs):+.4f}" if diffs else "n/a"
        rows.append(f"| {k} | {median(finite[COLD])} | {median(finite[WARM])} | {diff} | {counts} |")
    return rows


def source_counts(trials: list[TrialRecord]) -> str:
    """How many of `trials` came from the paper's point, another pair's winner, and the sampler."""
    kinds = {"paper": 0, "another pair's winner": 0, "the sampler": 0}
    for trial in trials:
        if trial.source == warm_start.PAPER:
            kinds["paper"] += 1
        elif trial.source.startswith(f"{COLD}/"):
            kinds["another pair's winner"] += 1
        else:
            kinds["the sampler"] += 1
    return ", ".join(f"{kind} {count}" for kind, count in kinds.items())


def print_header(args: argparse.Namespace, space: SearchSpace, pairs: list[Pair], seeds: list[int]) -> None:
    fixed = space.fixed
    cap = math.ceil(space.budget.trials_per_pair / 2)
    lines = [
        "# warm-start benchmark: sampler only (cold) vs warm-started studies (warm)",
        "",
        f"- space: quick ({space.description}); steps {fixed['steps']}, max_side {fixed['max_side']}, "
        f"vit {fixed['vit']}, judge {fixed.get('judge_vit')}; sampled: {', '.join(space.params)}",
        f"- pairs ({len(pairs)}): "
        + ", ".join(f"{p.name} ({p.structure} structure + {p.appearance} appearance)" for p in pairs),
        f"- sampler seeds: {', '.join(map(str, seeds))} ({space.sampler.type}, {space.sampler.startup_trials} "
        f"startup trials; per-pair seed from make_sampler); training seed fixed at the space's "
        f"({space.lowest_config().seed})",
        f"- each study: {space.budget.trials_per_pair} trials asked and told one after the other, in memory, every "
        "trial trained to the end (no early stopping); objective splice_score (min); non-finite loss: FAIL",
        "- cold: the pair's seeded sampler only",
        f"- warm: warm_start.plan enqueues first the paper's point, then the other pairs' cold winners of the "
        f"same seed by score (leave-one-out; what --warm-start of a search over the other pairs gives), at most "
        f"{cap}; then the same seeded sampler",
        f"- reported after k = {', '.join(map(str, args.ks))} trials: the best score so far per (pair, seed); "
        f"medians over {len(pairs) * len(seeds)} (pair, seed) cases; lower is better",
        f"- {args.workers} worker process(es), 1 torch thread each, CPU; trainings cached by (pair, params)",
    ]
    print("\n".join(lines) + "\n", flush=True)


def print_report(
    cold: list[StudyResult], warm: list[StudyResult], paper: dict, ks: list[int], wall_s: float, pairs: list[Pair]
) -> None:
    by_case = {arm: {(r.pair, r.seed): r for r in results} for arm, results in ((COLD, cold), (WARM, warm))}
    seeds = sorted({r.seed for r in cold})
    print("## best splice_score after k trials (the objective)\n")
    print(HEADER + "\n| --- | --- | --- | --- | --- |")
    print("\n".join(comparison_rows(by_case[COLD], by_case[WARM], ks, judge=False)))
    paper_scores = [paper[p.name].score for p in pairs for _ in seeds if math.isfinite(paper[p.name].score)]
    print(f"\npaper point alone (k = 1 of the warm arm): median splice_score {median(paper_scores)}")
    judged = [r.best(ks[-1]) for r in cold + warm]
    if any(best is not None and math.isfinite(best.outcome.judge) for best in judged):
        print("\n## judge_splice_score (held-out judge ViT) of the trial splice_score picks after k trials\n")
        print(HEADER + "\n| --- | --- | --- | --- | --- |")
        print("\n".join(comparison_rows(by_case[COLD], by_case[WARM], ks, judge=True)))
        paper_judge = [paper[p.name].judge for p in pairs for _ in seeds if math.isfinite(paper[p.name].judge)]
        print(f"\npaper point alone: median judge_splice_score {median(paper_judge)}")
    print(f"\n## per pair after k = {ks[-1]}: best splice_score, median over seeds\n")
    print("| pair | cold | warm | paper point |\n| --- | --- | --- | --- |")
    for pair in pairs:
        cells = []
        for arm in (COLD, WARM):
            found = [by_case[arm][pair.name, s].best(ks[-1]) for s in seeds]
            cells.append(median([b.outcome.score for b in found if b is not None]))
        print(f"| {pair.name} | {cells[0]} | {cells[1]} | {median([paper[pair.name].score])} |")
    everything = [t for r in cold + warm for t in r.trials]
    trained = [t.outcome.seconds for t in everything if t.outcome.seconds > 0]
    trained += [o.seconds for o in paper.values()]
    print(f"\nwarm studies' trials came from: {source_counts([t for r in warm for t in r.trials])}")
    found = [best for best in (r.best(ks[-1]) for r in warm) if best is not None]
    print(f"warm studies' best trial after k = {ks[-1]} came from: {source_counts(found)}")
    print(
        f"trainings: {len(trained)} run ({len(everything) + len(paper) - len(trained)} cached), "
        f"{statistics.mean(trained):.1f} s each on average"
    )
    print(f"wall time: {wall_s:,.0f} s")


# ---------------------------------------------------------------- flags


class Parser(argparse.ArgumentParser):
    """Bad flags: exit 2 with one line on stderr (not the usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"warm_start.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=None, help=f"pairs, 2 to {len(PAIRS)} [default 6; quick 2]")
    parser.add_argument("--seeds", type=int, default=None, help="sampler seeds 0..N-1 [default 3; quick 1]")
    parser.add_argument("--ks", default=None, help="report after these trial counts [default 2,4,8; quick 1,3]")
    parser.add_argument("--workers", type=int, default=None, help="training processes [default 2; quick 1]")
    parser.add_argument("--steps", type=int, default=None, help="training steps [default: the space's 60; quick 6]")
    parser.add_argument("--quick", action="store_true", help="the smoke test: 2 pairs, 1 seed, ks 1,3, 6 steps")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        ks = [int(k) for k in str(args.ks).split(",")]
    except ValueError:
        parser.error(f"--ks: want comma-separated trial counts such as 2,4,8, got {args.ks!r}")
    if not ks or min(ks) < 1:
        parser.error(f"--ks: trial counts must be >= 1, got {args.ks!r}")
    args.ks = sorted(set(ks))
    if not 2 <= args.pairs <= len(PAIRS):
        parser.error(f"--pairs: must be 2 to {len(PAIRS)} (leave-one-out needs another pair), got {args.pairs}")
    for name in ("seeds", "workers", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name}: must be >= 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pairs, seeds = list(PAIRS[: args.pairs]), list(range(args.seeds))
    trials = args.ks[-1]
    space = bench_space(trials, args.steps)
    print_header(args, space, pairs, seeds)
    paper = warm_start.paper_point(space)
    context = mp.get_context("spawn")
    with context.Pool(args.workers, initializer=init_worker) as pool:
        # The paper's point first, once per pair, so every warm study finds it cached.
        outcomes = pool.starmap(run_point, [(space, pair, paper.params) for pair in pairs], chunksize=1)
        known = {key: outcome for key, outcome in outcomes}
        paper_outcomes = {key[0]: outcome for key, outcome in known.items()}
        print(f"  paper point trained on {len(pairs)} pairs", file=sys.stderr, flush=True)
        cold_tasks = [
            StudyTask(COLD, pair, seed, space, seeded_sampler(space, pair.name, seed), trials)
            for pair in pairs
            for seed in seeds
        ]
        cold = run_tasks(pool, cold_tasks, COLD)
        for result in cold:
            known.update((params_key(result.pair, t.params), t.outcome) for t in result.trials if t.outcome.seconds)
        warm_tasks = []
        for pair in pairs:
            mine = tuple((key, outcome) for key, outcome in known.items() if key[0] == pair.name)
            for seed in seeds:
                points = warm_start.plan(space, [pair.name], True, winners(cold, seed, pair.name)).points[pair.name]
                sampler = seeded_sampler(space, pair.name, seed)
                warm_tasks.append(StudyTask(WARM, pair, seed, space, sampler, trials, tuple(points), mine))
        warm = run_tasks(pool, warm_tasks, WARM)
    print_report(cold, warm, paper_outcomes, args.ks, time.monotonic() - started, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
