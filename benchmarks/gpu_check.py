"""The GPU check: what a search costs on one GPU, measured with `splice_model` alone (no Ray/Optuna/MLflow).

    python benchmarks/gpu_check.py                       # one GPU, at most ~5 minutes, one markdown table
    python benchmarks/gpu_check.py --quick --device cpu  # the same code on a CPU in under a minute (a test runs it)

It is meant to run once, unattended, on a rented GPU, so it is built not to waste the lease:
- without a usable CUDA device it stops at once (exit code 2, one line on stderr) instead of spending the
  budget measuring a CPU; only `--quick` or `--device cpu` measure a CPU (a full `--device cpu` run gets a
  30-minute budget: it costs no lease);
- the whole check stays within `--budget-s` (default 300 s on a GPU: room under a 600 s command cap and
  for a rerun in a 15-minute lease), a GPU probe (one small kernel, in a child with a timeout) included;
- every unit of work (one setting x mode of the steps section, the drift section, each trial count of the
  packing section) runs in its own spawned process with its own timeout (`--timeout-s`, cut to what is
  left of `--budget-s`): a unit that hangs or overruns (a cold torch.compile) is killed and reported as
  "timed out after N s", one that fails is reported as "failed: ...", and the table always comes out. A
  fresh process per unit also gives each one a clean torch.compile/dynamo state and its own memory peak;
- every wait is bounded: a packing trial that fails before the start line aborts the barrier, so the
  others stop at once instead of waiting for the unit's timeout.

The first lines printed are the torch, CUDA and driver versions and the GPU; then, with seeded random DINO
weights (speed and memory do not depend on weight values), it measures:
- `dino_vitb8` on 512x512 images (the paper's setting) and `dino_vits16` on 224x224: ms per regular step,
  full-image step and eval in fp32, bf16 autocast, and bf16 + torch.compile of the ViT; device memory per
  trial: the allocator's peak reserve (torch.cuda.max_memory_reserved) plus the context (what else the
  process holds on the device: the CUDA context, library handles, kernels), against the goal of 8 GB for
  dino_vitb8;
- the 2000-step wall time of one dino_vitb8 512x512 training implied by those numbers (goal: under 60 s on
  an H100; the paper: ~20 minutes on an RTX 6000);
- the bf16-vs-fp32 score drift: the same seed trained for `--drift-steps` steps both ways, the three scores
  at the end and their relative difference; fp32 run twice with the same seed gives the noise floor
  (non-deterministic CUDA kernels; ~0 % on a CPU), fp32 with another seed the scale;
- several trials on one GPU: aggregate steps/s of 1, 2, 4 and 8 concurrent trial processes (what
  `--gpus-per-trial 1 / 0.5 / 0.25 / 0.125` gives a search), device memory in use with them all, and the
  packing with the most trials per hour.

Sections run in that order; a unit that no longer fits the budget is reported as skipped. Each row says
how long its unit took. `--quick` swaps in the tiny random preset at 96 px and shortens everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the device machine runs it from a bare checkout

import torch  # noqa: E402
from bench_step import random_weights_preset, sync, synthetic_pair, timed  # noqa: E402 (beside this file)

from splice_model import PairScorer, SpliceConfig, SpliceTrainer  # noqa: E402
from splice_model.train import load_features, uses_amp  # noqa: E402
from splice_model.vit import VIT_PRESETS  # noqa: E402

PAPER_STEPS, FULL_IMAGE_EVERY, EVAL_EVERY = 2000, 75, 100
MEMORY_GOAL_GB = 8.0
WALL_GOAL_S = 60.0
GIB = 2**30
# Default (budget, per-unit timeout) in seconds. On a GPU the budget leaves room under a 600 s command cap
# (probe, clean-up) and for a rerun in a 15-minute lease; a cold torch.compile of dino_vitb8 fits in 150 s.
# A full run on a CPU (asked for with --device cpu) costs no lease: it may take its time.
GPU_LIMITS_S, QUICK_LIMITS_S, CPU_LIMITS_S = (300.0, 150.0), (120.0, 120.0), (1800.0, 1800.0)
PROBE_TIMEOUT_S = 90.0  # import torch, CUDA init, one small kernel
MIN_UNIT_S = 10.0  # below this a unit cannot even import torch in its process: skip it instead


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured configuration: a ViT preset on square synthetic images of `size` pixels."""

    label: str
    vit: str
    size: int
    vit_size: int = 224


FULL_SETTINGS = (Setting("dino_vitb8 512²", "dino_vitb8", 512), Setting("dino_vits16 224²", "dino_vits16", 224))
QUICK_SETTINGS = (Setting("random_tiny8 96²", "random_tiny8", 96, 64),)
# bf16+compile: torch.compile of the ViT (SpliceConfig.compile); bf16+compile-all: of the generator as well
# (measured here only: whether it pays decides whether the trainer should offer it).
MODES = ("fp32", "bf16", "bf16+compile", "bf16+compile-all")


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


# ---------------------------------------------------------------------------- one unit in its own process


@dataclasses.dataclass
class Outcome:
    """What a unit gave: its value, or an `error` ("Type: first line of the message"), or it timed out."""

    value: object = None
    error: str | None = None
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def took(self) -> str:
        return f"took {self.seconds:.0f} s"

    @property
    def failure(self) -> str:
        """The row's text for a unit that gave no value."""
        return self.error if self.timed_out else f"failed: {self.error}; {self.took}"


def describe(error: BaseException) -> str:
    """An exception as "Type: first line of its message" (torch's messages run to pages)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}"[:200] if lines else type(error).__name__


def _unit_child(function, args: tuple, sender, show_traceback: bool) -> None:
    """A unit's process: run `function(*args)`, send back ("ok", value) or ("failed", description)."""
    try:
        message = ("ok", function(*args))
    except Exception as error:
        if show_traceback:  # the row has one line; the rest is here
            print(traceback.format_exc()[-3000:], file=sys.stderr, flush=True)
        message = ("failed", describe(error))
    sender.send(message)
    sender.close()


def run_unit(function, args: tuple, timeout_s: float, show_traceback: bool = True) -> Outcome:
    """`function(*args)` in a fresh spawned process, killed after `timeout_s` seconds (`show_traceback`: a
    failing unit's traceback on stderr).

    `function` and `args` must pickle (a module-level function). A fresh process costs an `import torch`
    (a few seconds) but nothing can outlive it: compiled graphs, dynamo caches, CUDA memory and a hung
    kernel all go with the process."""
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    # Not a daemon: a daemonic process may not start processes of its own (torch.compile's workers may).
    process = context.Process(target=_unit_child, args=(function, args, sender, show_traceback))
    start = time.monotonic()
    answered = False
    try:
        process.start()
        sender.close()  # the child holds the only sending end now: its exit, even a crash, ends the wait below
        if not receiver.poll(timeout_s):
            return Outcome(error=f"timed out after {timeout_s:.0f} s", seconds=timeout_s, timed_out=True)
        try:
            status, value = receiver.recv()
        except EOFError:  # it died without a word: a segfault, or the kernel's out-of-memory killer
            process.join(timeout=5)
            return Outcome(
                error=f"its process exited with code {process.exitcode} (crashed or killed)",
                seconds=time.monotonic() - start,
            )
        answered = True
        seconds = time.monotonic() - start
        return Outcome(value=value, seconds=seconds) if status == "ok" else Outcome(error=value, seconds=seconds)
    finally:
        if process.pid is not None:
            # A unit that answered exits by itself (CUDA tear-down can take a moment); any other is killed now.
            process.join(timeout=10 if answered else 0)
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        receiver.close()


def unit_timeout(timeout_s: float, deadline: float, needs_s: float = MIN_UNIT_S) -> float | None:
    """A unit's timeout: its own, cut to what is left of the budget; None (skip the unit) when less than
    `needs_s` seconds are left."""
    left = deadline - time.monotonic()
    return min(timeout_s, left) if left >= needs_s else None


# ------------------------------------------------------------------------------------------ the machine


def driver_version() -> str:
    """The NVIDIA driver's version from nvidia-smi (which creates no CUDA context), or "unknown"."""
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({describe(error)})"
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else "unknown"


def probe_cuda(device: str) -> dict:
    """In a unit's process: one small computation on `device` (a broken driver fails or hangs here, within
    the probe's timeout, not in the first measured unit) and the GPU's name and memory."""
    device = torch.device(device)
    x = torch.arange(1024.0, device=device)
    (x @ x).item()
    properties = torch.cuda.get_device_properties(device)
    return {
        "name": properties.name,
        "memory": properties.total_memory / GIB,
        "capability": f"{properties.major}.{properties.minor}",
    }


def pick_device(name: str, quick: bool) -> torch.device | None:
    """The device to measure, or None when it must be CUDA and no CUDA is available. Only `--quick` with
    `--device auto` falls back to the CPU: a full run on a CPU would spend the whole lease measuring nothing
    anyone asked for. `torch.cuda.is_available()` counts devices without creating a CUDA context."""
    if name == "auto":
        if quick and not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        return None
    # An explicit index everywhere (trainer, memory statistics), never "the current device".
    return torch.device("cuda", 0 if device.index is None else device.index)


def header_lines(device: torch.device, gpu: dict | None) -> list[str]:
    """The first lines printed: what the numbers below were measured with."""
    where = (
        f"{gpu['name']} ({device}, {gpu['memory']:.1f} GiB, compute capability {gpu['capability']})"
        if gpu
        else f"none: measuring on the {device} ({torch.get_num_threads()} threads)"
    )
    return [
        f"torch {torch.__version__}",
        f"CUDA {torch.version.cuda or 'none (a CPU-only torch build)'}",
        f"driver {driver_version()}",
        f"GPU {where}",
    ]


# ------------------------------------------------------------------------------------------- memory


def read_used(device: torch.device, nvml: bool) -> int:
    """Bytes in use on the whole device: NVML's count (torch.cuda.device_memory_used), or total - free from
    cudaMemGetInfo (torch.cuda.mem_get_info)."""
    if nvml:
        return torch.cuda.device_memory_used(device)
    free_bytes, total = torch.cuda.mem_get_info(device)
    return total - free_bytes


def start_reading(device: torch.device) -> tuple[int, bool]:
    """The device's used bytes before this process puts anything on it, and whether NVML read them.

    Read first thing in a unit's process. NVML reads without creating a CUDA context, so the context is part
    of what the process adds afterwards. Without NVML (torch needs pynvml for it), cudaMemGetInfo's first
    call creates this process's context before it reads: the bare context (a few hundred MiB) is then in
    the starting point, not in the trial's memory."""
    try:
        return read_used(device, nvml=True), True
    except Exception:  # no pynvml (torch does not require it), an older torch, or an NVML error
        torch.cuda.init()
        return read_used(device, nvml=False), False


def trial_memory(max_reserved: int, reserved_now: int, used_start: int, used_end: int, nvml: bool) -> dict:
    """What one trial needs on the device, in GiB: the caching allocator's peak reserve (what PyTorch asked
    the driver for: allocations plus the cache), and the context: the rest of what the process's device
    memory grew by (CUDA context, cuBLAS/cuDNN handles, loaded kernels), i.e. its growth less what the
    allocator holds at the end. The two together decide how many trials fit on one device."""
    context = max(used_end - used_start - reserved_now, 0)
    return {"reserved": max_reserved / GIB, "context": context / GIB, "nvml": nvml}


def memory_text(memory: dict) -> str:
    text = f"reserved {memory['reserved']:.2f} GiB + context {memory['context']:.2f} GiB"
    return text if memory["nvml"] else text + " (bare CUDA context not counted: no pynvml)"


def memory_per_trial(memory: dict) -> float:
    return memory["reserved"] + memory["context"]


# --------------------------------------------------------------------------------------------- steps


def config_for(setting: Setting, mode: str, device: torch.device, **changes) -> SpliceConfig:
    return SpliceConfig(
        vit=random_weights_preset(setting.vit),
        max_side=setting.size,
        vit_size=setting.vit_size,
        vit_max_side=max(480, setting.vit_size),
        device=str(device),
        amp=mode != "fp32",
        compile="compile" in mode,
        **changes,
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_steps(setting: Setting, mode: str, device: str, steps: int, repeats: int) -> dict:
    """A unit (its own process): median seconds of a regular step, a full-image step and an eval; on CUDA,
    the memory of the whole trial."""
    device = torch.device(device)
    # First, before anything touches the device: the starting point of this process's memory.
    used_start, nvml = start_reading(device) if device.type == "cuda" else (0, False)
    config = config_for(setting, mode, device, steps=10**9, eval_every=10**9, full_image_every=10**9)
    structure, appearance = synthetic_pair(setting.size)
    start = time.perf_counter()
    # The trainer loads its ViT as a trial does; the process is this unit's, so the peak is one trial's.
    trainer = SpliceTrainer(structure, appearance, config)
    if mode == "bf16+compile-all":
        trainer.generator = torch.compile(trainer.generator)  # shares its parameters with the optimiser's

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
        **back_to_back(trainer, steps, device),
    }
    if device.type == "cuda":
        sync(device)
        result["memory"] = trial_memory(
            torch.cuda.max_memory_reserved(device),
            torch.cuda.memory_reserved(device),
            used_start,
            read_used(device, nvml),
            nvml,
        )
        result["memory"]["allocated"] = torch.cuda.max_memory_allocated(device) / GIB
    return result


def back_to_back(trainer: SpliceTrainer, steps: int, device: torch.device) -> dict[str, float]:
    """Seconds per regular step over `steps` steps run back to back (one sync at the end), with the loss
    read-out every step (`train_step`, a host sync each) and read one step late (`lagged_readout`, the CUDA
    default): whether the per-step sync idles the GPU."""

    def run(lagged: bool) -> float:
        sync(device)
        start, pending = time.perf_counter(), None
        for _ in range(steps):
            trainer.step += trainer.step % trainer.config.full_image_every == 0
            if lagged:
                read = trainer._lagged_step()
                if pending is not None:
                    pending()
                pending = read
            else:
                trainer.train_step()
        if pending is not None:
            pending()
        sync(device)
        return (time.perf_counter() - start) / steps

    return {"synced": run(False), "lagged": run(True)}


def run_seconds(timing: dict, steps: int = PAPER_STEPS) -> float:
    """Wall time of a `steps`-step training on the paper's schedule (full image every 75, eval every 100)."""
    return (
        steps * timing["regular"]
        + steps // FULL_IMAGE_EVERY * (timing["full"] - timing["regular"])
        + steps // EVAL_EVERY * timing["eval"]
    )


def steps_section(table: Table, settings, modes, device: torch.device, args, deadline: float) -> dict:
    timings = {}
    for setting in settings:
        for mode in modes:
            if mode == "bf16+compile-all" and setting is not settings[0]:
                continue  # a cold compile of both networks costs minutes: the paper's setting only
            what = f"{setting.label} {mode}"
            timeout = unit_timeout(args.timeout_s, deadline)
            if timeout is None:
                table.add("steps", what, "skipped (time budget)")
                continue
            outcome = run_unit(measure_steps, (setting, mode, str(device), args.steps, args.repeats), timeout)
            if outcome.error:  # one failing mode (e.g. compile) must not cost the rest of the table
                table.add("steps", what, outcome.failure)
                continue
            timing = timings[setting, mode] = outcome.value
            memory = f"; peak {memory_text(timing['memory'])}" if "memory" in timing else ""
            table.add(
                "steps",
                what + ("" if timing["amp"] or mode == "fp32" else " (no amp)"),
                f"regular {timing['regular'] * 1e3:,.1f} ms, full-image {timing['full'] * 1e3:,.1f} ms, "
                f"eval {timing['eval'] * 1e3:,.1f} ms ({1 / timing['regular']:,.1f} steps/s; warm-up "
                f"{timing['warmup']:.0f} s); back to back {timing['synced'] * 1e3:,.1f} ms/step with the loss "
                f"read every step, {timing['lagged'] * 1e3:,.1f} ms read one step late{memory}; {outcome.took}",
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
        if "memory" in timing:
            gib = memory_per_trial(timing["memory"])
            table.add(
                "goals",
                f"{setting.label} {mode}: memory per trial",
                f"{gib:.2f} GiB = {memory_text(timing['memory'])} (goal <= {MEMORY_GOAL_GB:.0f} GB: "
                f"{'met' if gib * GIB <= MEMORY_GOAL_GB * 1e9 else 'not met'})",
            )


# --------------------------------------------------------------------------------------------- drift

DRIFT_RUNS = (("fp32", "fp32", 0), ("fp32 again", "fp32", 0), ("bf16", "bf16", 0), ("fp32 seed 1", "fp32", 1))


def drift_scores(setting: Setting, device: str, steps: int) -> dict[str, dict[str, float]]:
    """A unit (its own process): the final scores of each of DRIFT_RUNS trained `steps` steps, and the bf16
    run's generator re-scored in fp32."""
    device = torch.device(device)
    structure, appearance = synthetic_pair(setting.size)
    scores = {}
    for run, mode, seed in DRIFT_RUNS:
        config = config_for(setting, mode, device, steps=steps, eval_every=steps, seed=seed)
        trainer = SpliceTrainer(structure, appearance, config)  # the ViT: load_features' cache, as in a trial
        for event in trainer.events():
            if getattr(event, "final", False):
                scores[run] = event.scores
        if mode == "bf16":
            scores["bf16 scored in fp32"] = fp32_scores(trainer)
        del trainer
        free(device)
    return scores


def fp32_scores(trainer: SpliceTrainer) -> dict[str, float]:
    """The trainer's current generator scored entirely in fp32 (targets and baselines included) by the fp32
    ViT (a bf16 run's own ViT may hold bf16 weights, which only work under autocast)."""
    config = trainer.config
    scorer = PairScorer(
        load_features(dataclasses.replace(config, amp=False), trainer.device),
        trainer.structure,
        trainer.appearance,
        config.vit_size,
        config.vit_max_side,
        config.vit_resample,
    )
    with torch.no_grad():
        return scorer.score(trainer.generator(trainer.structure[None]).float())


def drift_section(table: Table, setting: Setting, device: torch.device, steps: int, args, deadline: float) -> None:
    """How far bf16 moves the final scores: the same seed trained `steps` steps in fp32 and in bf16, the bf16
    generator re-scored in fp32 (what the precision of the scoring alone moves); for a noise floor the fp32
    run repeated, and for scale fp32 with another seed."""
    what = f"{setting.label}, {steps} steps"
    timeout = unit_timeout(args.timeout_s, deadline)
    if timeout is None:
        table.add("drift", what, "skipped (time budget)")
        return
    outcome = run_unit(drift_scores, (setting, str(device), steps), timeout)
    if outcome.error:
        table.add("drift", what, outcome.failure)
        return
    scores = outcome.value

    def compare(label: str, before: str, after: str) -> None:
        table.add(
            "drift",
            f"{what}: {label}",
            ", ".join(
                f"{name} {scores[before][name]:.4g} -> {scores[after][name]:.4g} "
                f"({abs(scores[after][name] - value) / max(abs(value), 1e-12):.1%})"
                for name, value in scores[before].items()
            ),
        )

    compare("fp32, same seed, run twice", "fp32", "fp32 again")
    compare("fp32 -> bf16, seed 0", "fp32", "bf16")
    compare("bf16 run, its own scores -> rescored in fp32", "bf16", "bf16 scored in fp32")
    compare("for scale, fp32 seed 0 -> seed 1", "fp32", "fp32 seed 1")
    table.add("drift", f"{what}: the {len(DRIFT_RUNS)} trainings", outcome.took)


# ------------------------------------------------------------------------------------------- packing


def _trial_process(
    rank: int, setting: Setting, device: str, seconds: float, timeout_s: float, barrier, results, fail: bool
) -> None:
    """One concurrent trial (its own process): a training on the paper's schedule, counting its steps for
    `seconds` after all trials are warm. Puts (rank, "ok", (steps, elapsed, GiB reserved, GiB in use on the
    device)) or (rank, "failed", description) on `results`; a failure also aborts the barrier, so the other
    trials stop waiting at once."""
    try:
        torch.set_num_threads(1)
        device = torch.device(device)
        structure, appearance = synthetic_pair(setting.size)
        config = config_for(
            setting, "bf16", device, steps=10**9, eval_every=EVAL_EVERY, full_image_every=FULL_IMAGE_EVERY
        )
        trainer = SpliceTrainer(structure, appearance, config)
        events = trainer.events()
        for _ in range(6):  # warm-up
            next(events)
        if fail:
            raise RuntimeError(f"trial {rank} fails on purpose before the barrier (--fail-child)")
        barrier.wait(timeout=timeout_s)  # all warm: measure together
        used = read_used(device, nvml=False) if device.type == "cuda" else 0  # every trial alive and warm
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            steps += type(next(events)).__name__ == "StepEvent"
        sync(device)
        elapsed = time.perf_counter() - start
        if device.type == "cuda":
            reserved = torch.cuda.max_memory_reserved(device) / GIB
            used = max(used, read_used(device, nvml=False)) / GIB
        else:
            reserved = used = 0.0
        results.put((rank, "ok", (steps, elapsed, reserved, used)))
    except Exception as error:
        if not isinstance(error, threading.BrokenBarrierError):  # that one only says another trial failed
            print(traceback.format_exc()[-3000:], file=sys.stderr, flush=True)
        results.put((rank, "failed", f"trial {rank}: {describe(error)}"))
        # Flushed before the abort: the others' BrokenBarrierError reaches the parent after this, the cause.
        results.close()
        results.join_thread()
        barrier.abort()


def packing_unit(
    setting: Setting, device: torch.device, count: int, seconds: float, timeout_s: float, fail_child: int | None
) -> Outcome:
    """`count` trial processes sharing the device, all of them killed after `timeout_s` seconds; the value is
    a list of each trial's (steps, elapsed, GiB reserved, GiB in use on the device)."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    processes = [
        context.Process(
            target=_trial_process,
            args=(rank, setting, str(device), seconds, timeout_s, barrier, results, rank == fail_child),
        )
        for rank in range(count)
    ]
    start = time.monotonic()
    finished = {}
    try:
        for process in processes:
            process.start()
        while len(finished) < count:
            if time.monotonic() - start > timeout_s:
                return Outcome(error=f"timed out after {timeout_s:.0f} s", seconds=timeout_s, timed_out=True)
            # Read before the wait: a trial dead by now has put what it ever will in the queue.
            dead = {rank for rank, process in enumerate(processes) if process.exitcode not in (None, 0)}
            try:
                rank, status, value = results.get(timeout=1.0)
            except queue.Empty:
                crashed = sorted(dead - set(finished))
                if crashed:  # killed (out of memory?) or crashed without a word: the others would wait in vain
                    barrier.abort()
                    return Outcome(
                        error=f"trial {crashed[0]}'s process exited with code "
                        f"{processes[crashed[0]].exitcode} (crashed or killed)",
                        seconds=time.monotonic() - start,
                    )
                continue
            if status != "ok":
                barrier.abort()
                return Outcome(error=value, seconds=time.monotonic() - start)
            finished[rank] = value
        return Outcome(value=list(finished.values()), seconds=time.monotonic() - start)
    finally:
        for process in processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=10 if len(finished) == count else 0)
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        results.close()


def concurrency_section(
    table: Table,
    setting: Setting,
    device: torch.device,
    counts,
    seconds: float,
    timeout_s: float,
    deadline: float,
    fail_child: int | None = None,
) -> None:
    """Aggregate steps/s of N trial processes sharing the device, and the N with the most trials per hour.
    `fail_child`: the rank of a trial that raises before the barrier (tests the failure path)."""
    rates = {}
    stopped = None  # why larger counts are not tried
    for count in counts:
        what = f"{count} trial(s) at once (--gpus-per-trial {1 / count:g})"
        timeout = unit_timeout(timeout_s, deadline, needs_s=seconds + MIN_UNIT_S)
        if stopped or timeout is None:
            table.add("packing", what, stopped or "skipped (time budget)")
            continue
        outcome = packing_unit(setting, device, count, seconds, timeout, fail_child)
        if outcome.error:
            table.add("packing", what, outcome.failure)
            # More trials than failed (out of memory, most likely) or overran will not do better.
            stopped = f"not run ({count} trials did not finish)"
            continue
        rate = sum(steps / elapsed for steps, elapsed, _, _ in outcome.value)
        rates[count] = rate
        reserved = max(reserved for _, _, reserved, _ in outcome.value)
        used = max(used for _, _, _, used in outcome.value)
        table.add(
            "packing",
            what,
            f"{rate:,.1f} steps/s in all ({rate / count:,.1f} each), "
            f"{rate * 3600 / PAPER_STEPS:,.0f} 2000-step trials/hour"
            + (f", peak reserved {reserved:.2f} GiB per process, {used:.2f} GiB in use on the device" if used else "")
            + f"; {outcome.took}",
        )
    if rates:
        best = max(rates, key=rates.get)
        table.add(
            "packing",
            "best packing",
            f"{best} trial(s) per device: --gpus-per-trial {1 / best:g} "
            f"({rates[best] / rates[min(rates)]:.2f}x the steps/s of {min(rates)})",
        )


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="auto",
        help='"auto" (CUDA; falls back to the CPU only with --quick), "cuda", "cuda:1", "cpu"',
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, few steps: a smoke run (CPU: < 1 min)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"the whole check's time: no unit runs past it [default: {GPU_LIMITS_S[0]:.0f}, --quick "
        f"{QUICK_LIMITS_S[0]:.0f}, a full run on a CPU {CPU_LIMITS_S[0]:.0f}]",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help=f"one unit's time (a setting x mode, the drift section, one trial count), after which it is killed "
        f"[default: {GPU_LIMITS_S[1]:.0f}, --quick {QUICK_LIMITS_S[1]:.0f}, a full run on a CPU: the budget]",
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
    parser.add_argument("--fail-child", type=int, default=None, help=argparse.SUPPRESS)  # debug: a packing trial fails
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps, args.repeats = (3, 2) if quick else (20, 5)
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
    try:
        device = pick_device(args.device, quick)
    except RuntimeError as error:  # torch.device("nonsense")
        parser.error(f"--device: {describe(error)}")
    script = Path(sys.argv[0]).name
    if device is None:  # before anything is built: seconds, not the lease
        print(
            f"{script}: CUDA is not available (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
            "for a CPU smoke run use --device cpu --quick",
            file=sys.stderr,
        )
        return 2
    default_budget, default_timeout = (
        QUICK_LIMITS_S if quick else GPU_LIMITS_S if device.type == "cuda" else CPU_LIMITS_S
    )
    budget = args.budget_s or default_budget
    args.timeout_s = args.timeout_s or min(default_timeout, budget)
    started = time.monotonic()
    deadline = started + budget

    gpu = None
    if device.type == "cuda":
        # No traceback: a machine without a usable GPU gets one line, like one without CUDA at all.
        probe = run_unit(probe_cuda, (str(device),), min(PROBE_TIMEOUT_S, budget), show_traceback=False)
        if probe.error:
            print(
                f"{script}: CUDA is not usable on {device} ({probe.error}); "
                "for a CPU smoke run use --device cpu --quick",
                file=sys.stderr,
            )
            return 2
        gpu = probe.value
    print("\n".join(header_lines(device, gpu)), flush=True)

    table = Table()
    name = gpu["name"] if gpu else f"CPU, {torch.get_num_threads()} threads"
    table.add(
        "machine",
        "device",
        f"{device} ({name}); torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; weights: seeded random (NOT DINO; timing only)",
    )
    table.add("machine", "limits", f"budget {budget:.0f} s in all, at most {args.timeout_s:.0f} s per unit")
    if "steps" in sections:
        timings = steps_section(table, settings, modes, device, args, deadline)
        summary_section(table, timings, settings[0])
    if "drift" in sections:
        drift_section(table, settings[0], device, args.drift_steps or (10 if quick else 200), args, deadline)
    if "packing" in sections:
        concurrency_section(
            table, settings[0], device, counts, 3.0 if quick else 10.0, args.timeout_s, deadline, args.fail_child
        )
    table.add("machine", "check wall time", f"{time.monotonic() - started:,.0f} s")
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
