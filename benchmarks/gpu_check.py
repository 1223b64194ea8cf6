"""The GPU check: what a search costs on one GPU, measured with `splice_model` alone (no Ray/Optuna/MLflow).

    python benchmarks/gpu_check.py                       # one GPU, <= 8 minutes, prints one markdown table
    python benchmarks/gpu_check.py --quick --device cpu  # the same code on a CPU in under a minute (a test runs it)

With seeded random DINO weights (speed and memory do not depend on weight values) it measures:
- `dino_vitb8` on 512x512 images (the paper's setting) and `dino_vits16` on 224x224: ms per regular step,
  full-image step and eval in fp32, bf16 autocast, and bf16 + torch.compile of the ViT; peak GPU memory per
  trial (torch.cuda.max_memory_allocated / max_memory_reserved) against the goal of 8 GB for dino_vitb8;
- the 2000-step wall time of one dino_vitb8 512x512 training implied by those numbers (goal: under 60 s on
  an H100; the paper: ~20 minutes on an RTX 6000);
- the bf16-vs-fp32 score drift: the same seed trained for `--drift-steps` steps both ways, the three scores
  at the end and their relative difference;
- several trials on one GPU: aggregate steps/s of 1, 2, 4 and 8 concurrent trial processes (what
  `--gpus-per-trial 1 / 0.5 / 0.25 / 0.125` gives a search) and the packing with the most trials per hour.

Sections run in that order and each checks the time left (`--budget-s`): what does not fit is reported as
skipped, so the table always comes out. `--quick` swaps in the tiny random preset at 96 px and shortens
everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the device machine runs it from a bare checkout

import torch  # noqa: E402
from bench_step import random_weights_preset, sync, synthetic_pair, timed  # noqa: E402 (beside this file)

from splice_model import PairScorer, SpliceConfig, SpliceTrainer  # noqa: E402
from splice_model.train import resolve_device, uses_amp  # noqa: E402
from splice_model.vit import VIT_PRESETS, build_vit  # noqa: E402

PAPER_STEPS, FULL_IMAGE_EVERY, EVAL_EVERY = 2000, 75, 100
MEMORY_GOAL_GB = 8.0
WALL_GOAL_S = 60.0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured configuration: a ViT preset on square synthetic images of `size` pixels."""

    label: str
    vit: str
    size: int
    vit_size: int = 224


FULL_SETTINGS = (Setting("dino_vitb8 512²", "dino_vitb8", 512), Setting("dino_vits16 224²", "dino_vits16", 224))
QUICK_SETTINGS = (Setting("random_tiny8 96²", "random_tiny8", 96, 64),)
MODES = ("fp32", "bf16", "bf16+compile")


class Table:
    """Rows of one markdown table, printed at the end (and as they come, so a killed run still shows some)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, section: str, what: str, value: str) -> None:
        self.rows.append((section, what, value))
        print(f"  {section} | {what} | {value}", file=sys.stderr, flush=True)

    def print(self) -> None:
        print("| section | what | value |\n| --- | --- | --- |")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


def config_for(setting: Setting, mode: str, device: torch.device, **changes) -> SpliceConfig:
    return SpliceConfig(
        vit=random_weights_preset(setting.vit),
        max_side=setting.size,
        vit_size=setting.vit_size,
        vit_max_side=max(480, setting.vit_size),
        device=str(device),
        amp=mode != "fp32",
        compile=mode.endswith("compile"),
        **changes,
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_steps(setting: Setting, mode: str, device: torch.device, steps: int, repeats: int) -> dict:
    """Median seconds of a regular step, a full-image step and an eval; peak memory of the whole trial."""
    config = config_for(setting, mode, device, steps=10**9, eval_every=10**9, full_image_every=10**9)
    structure, appearance = synthetic_pair(setting.size)
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    # A fresh ViT per setting, so the peak is one trial's: the ViT, the generator and a step's activations.
    trainer = SpliceTrainer(structure, appearance, config, features=build_vit(config.vit))

    def regular():
        trainer.step += trainer.step % config.full_image_every == 0  # never a full-image step index
        trainer.train_step()

    def full_image():
        trainer.step = (trainer.step // config.full_image_every + 1) * config.full_image_every
        trainer.train_step()

    for _ in range(3):  # warm-up, compilation included
        regular()
    full_image()
    trainer.evaluate()
    warmup_s = time.perf_counter() - start
    result = {
        "regular": statistics.median(timed(regular, device) for _ in range(steps)),
        "full": statistics.median(timed(full_image, device) for _ in range(repeats)),
        "eval": statistics.median(timed(trainer.evaluate, device) for _ in range(repeats)),
        "warmup": warmup_s,
        "amp": uses_amp(config.amp, device),
    }
    if device.type == "cuda":
        result["allocated"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["reserved"] = torch.cuda.max_memory_reserved(device) / 2**30
    trainer = None  # noqa: F841 (the closures above hold it: release the trial before the next one's peak)
    free(device)
    return result


def run_seconds(timing: dict, steps: int = PAPER_STEPS) -> float:
    """Wall time of a `steps`-step training on the paper's schedule (full image every 75, eval every 100)."""
    return (
        steps * timing["regular"]
        + steps // FULL_IMAGE_EVERY * (timing["full"] - timing["regular"])
        + steps // EVAL_EVERY * timing["eval"]
    )


def steps_section(table: Table, settings, modes, device, args, deadline: float) -> dict:
    timings = {}
    for setting in settings:
        for mode in modes:
            if time.monotonic() > deadline:
                table.add("steps", f"{setting.label} {mode}", "skipped (time budget)")
                continue
            try:
                timing = measure_steps(setting, mode, device, args.steps, args.repeats)
            except Exception as error:  # one failing mode (e.g. compile) must not cost the rest of the table
                table.add(
                    "steps",
                    f"{setting.label} {mode}",
                    f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200],
                )
                free(device)
                continue
            timings[setting, mode] = timing
            memory = (
                f"; peak {timing['allocated']:.2f} GiB allocated, {timing['reserved']:.2f} GiB reserved"
                if "allocated" in timing
                else ""
            )
            table.add(
                "steps",
                f"{setting.label} {mode}" + ("" if timing["amp"] or mode == "fp32" else " (no amp)"),
                f"regular {timing['regular'] * 1e3:,.1f} ms, full-image {timing['full'] * 1e3:,.1f} ms, "
                f"eval {timing['eval'] * 1e3:,.1f} ms ({1 / timing['regular']:,.1f} steps/s; warm-up "
                f"{timing['warmup']:.0f} s){memory}",
            )
    return timings


def summary_section(table: Table, timings: dict, setting: Setting) -> None:
    """The paper-setting trial: memory against the 8 GB goal and the 2000-step wall time against 60 s."""
    measured = {mode: timing for (s, mode), timing in timings.items() if s == setting}
    if not measured:
        table.add("goals", setting.label, "not measured")
        return
    best_mode = min(measured, key=lambda mode: run_seconds(measured[mode]))
    seconds = run_seconds(measured[best_mode])
    goal = (
        f"goal < {WALL_GOAL_S:.0f} s on an H100: {'met' if seconds < WALL_GOAL_S else 'not met'}"
        if setting.vit == "dino_vitb8" and setting.size == 512
        else "the goals are for dino_vitb8 512²"
    )
    table.add(
        "goals",
        f"{setting.label}: 2000-step training",
        f"{seconds:,.0f} s with {best_mode} ({goal}; paper ~1200 s on an RTX 6000)",
    )
    for mode, timing in measured.items():
        if "allocated" in timing:
            table.add(
                "goals",
                f"{setting.label} {mode}: memory per trial",
                f"{timing['allocated']:.2f} GiB (goal <= {MEMORY_GOAL_GB:.0f} GB: "
                f"{'met' if timing['allocated'] * 2**30 <= MEMORY_GOAL_GB * 1e9 else 'not met'})",
            )


def drift_section(table: Table, setting: Setting, device: torch.device, steps: int, deadline: float) -> None:
    """How far bf16 moves the final scores: the same seed trained `steps` steps in fp32 and in bf16, the bf16
    generator re-scored in fp32 (what the precision of the scoring alone moves), and, for scale, fp32 with
    another seed."""
    if time.monotonic() > deadline:
        table.add("drift", setting.label, "skipped (time budget)")
        return
    structure, appearance = synthetic_pair(setting.size)
    features = build_vit(random_weights_preset(setting.vit))
    scores = {}
    for run, mode, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32 seed 1", "fp32", 1)):
        config = config_for(setting, mode, device, steps=steps, eval_every=steps, seed=seed)
        trainer = SpliceTrainer(structure, appearance, config, features=features)
        for event in trainer.events():
            if getattr(event, "final", False):
                scores[run] = event.scores
        if mode == "bf16":
            scores["bf16 scored in fp32"] = fp32_scores(trainer)
        del trainer
        free(device)

    def compare(label: str, before: str, after: str) -> None:
        table.add(
            "drift",
            f"{setting.label}, {steps} steps: {label}",
            ", ".join(
                f"{name} {scores[before][name]:.4g} -> {scores[after][name]:.4g} "
                f"({abs(scores[after][name] - value) / max(abs(value), 1e-12):.1%})"
                for name, value in scores[before].items()
            ),
        )

    compare("fp32 -> bf16, seed 0", "fp32", "bf16")
    compare("bf16 run, its own scores -> rescored in fp32", "bf16", "bf16 scored in fp32")
    compare("for scale, fp32 seed 0 -> seed 1", "fp32", "fp32 seed 1")


def fp32_scores(trainer: SpliceTrainer) -> dict[str, float]:
    """The trainer's current generator scored entirely in fp32 (targets and baselines included)."""
    config = trainer.config
    scorer = PairScorer(
        trainer.features,
        trainer.structure,
        trainer.appearance,
        config.vit_size,
        config.vit_max_side,
        config.vit_resample,
    )
    with torch.no_grad():
        return scorer.score(trainer.generator(trainer.structure[None]).float())


def _trial_process(setting: Setting, device: str, seconds: float, barrier, results) -> None:
    """One concurrent trial: a training on the paper's schedule, counting its steps for `seconds`."""
    torch.set_num_threads(1)
    structure, appearance = synthetic_pair(setting.size)
    config = config_for(
        setting, "bf16", torch.device(device), steps=10**9, eval_every=EVAL_EVERY, full_image_every=FULL_IMAGE_EVERY
    )
    trainer = SpliceTrainer(structure, appearance, config)
    events = trainer.events()
    for _ in range(6):
        next(events)
    barrier.wait()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        steps += type(next(events)).__name__ == "StepEvent"
    sync(trainer.device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else 0.0
    results.put((steps, time.perf_counter() - start, peak))


def concurrency_section(
    table: Table, setting: Setting, device: torch.device, counts, seconds: float, startup_s: float, deadline: float
) -> None:
    """Aggregate steps/s of N trial processes sharing the device, and the N with the most trials per hour."""
    context = mp.get_context("spawn")
    rates = {}
    for count in counts:
        if time.monotonic() + seconds + startup_s > deadline:
            table.add("packing", f"{count} trials at once", "skipped (time budget)")
            continue
        barrier, results = context.Barrier(count), context.Queue()
        processes = [
            context.Process(target=_trial_process, args=(setting, str(device), seconds, barrier, results))
            for _ in range(count)
        ]
        for process in processes:
            process.start()
        try:
            finished = [results.get(timeout=seconds + 240) for _ in processes]
        except Exception as error:  # out of memory in a process, or a hang: report it, keep the table
            table.add("packing", f"{count} trials at once", f"failed ({type(error).__name__}); see stderr")
            for process in processes:
                process.kill()
            break
        for process in processes:
            process.join()
        rate = sum(steps / elapsed for steps, elapsed, _ in finished)
        rates[count] = rate
        peak = max(peak for _, _, peak in finished)
        table.add(
            "packing",
            f"{count} trial(s) at once (--gpus-per-trial {1 / count:g})",
            f"{rate:,.1f} steps/s in all ({rate / count:,.1f} each), "
            f"{rate * 3600 / PAPER_STEPS:,.0f} 2000-step trials/hour"
            + (f", peak {peak:.2f} GiB per process" if peak else ""),
        )
    if rates:
        best = max(rates, key=rates.get)
        table.add(
            "packing",
            "best packing",
            f"{best} trial(s) per device: --gpus-per-trial {1 / best:g} "
            f"({rates[best] / rates[min(rates)]:.2f}x the steps/s of {min(rates)})",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cuda", "cuda:1", "cpu"')
    parser.add_argument("--quick", action="store_true", help="tiny preset, few steps: a smoke run (CPU: < 1 min)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="stop starting sections after this long [default: 450, --quick 50]"
    )
    parser.add_argument(
        "--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} [default: all; --quick: fp32,bf16]"
    )
    parser.add_argument("--drift-steps", type=int, default=None, help="[default: 200, --quick 10]")
    parser.add_argument("--concurrency", default=None, help="trial counts [default: 1,2,4,8; --quick: 1,2]")
    parser.add_argument("--sections", default="steps,drift,packing", help="which sections to run")
    parser.add_argument(
        "--vit", default=None, help="measure only this preset (seeded random weights), on images of --size pixels"
    )
    parser.add_argument("--size", type=int, default=224, help="image side for --vit")
    args = parser.parse_args(argv)
    quick = args.quick
    device = resolve_device(args.device)
    args.steps, args.repeats = (3, 2) if quick else (20, 5)
    budget = args.budget_s or (50.0 if quick else 450.0)
    modes = (args.modes or ("fp32,bf16" if quick else ",".join(MODES))).split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    counts = [int(n) for n in (args.concurrency or ("1,2" if quick else "1,2,4,8")).split(",")]
    settings = QUICK_SETTINGS if quick else FULL_SETTINGS
    if args.vit:
        if args.vit not in VIT_PRESETS:
            parser.error(f"--vit: unknown preset {args.vit}; choose from {', '.join(VIT_PRESETS)}")
        settings = (Setting(f"{args.vit} {args.size}²", args.vit, args.size, min(224, args.size)),)
    sections = set(args.sections.split(","))
    deadline = time.monotonic() + budget
    started = time.monotonic()

    table = Table()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    table.add(
        "machine",
        "device",
        f"{device} ({name}); torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; weights: seeded random (NOT DINO; timing only)",
    )
    if "steps" in sections:
        timings = steps_section(table, settings, modes, device, args, deadline)
        summary_section(table, timings, settings[0])
    if "drift" in sections:
        drift_section(table, settings[0], device, args.drift_steps or (10 if quick else 200), deadline)
    if "packing" in sections:
        concurrency_section(
            table, settings[0], device, counts, 3.0 if quick else 20.0, 10.0 if quick else 40.0, deadline
        )
    table.add("machine", "check wall time", f"{time.monotonic() - started:,.0f} s")
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
