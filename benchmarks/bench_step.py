"""Time one Splice training step, a full-image step and an evaluation on synthetic images.

    python benchmarks/bench_step.py --vit random_tiny8 --size 96 --vit-size 64
    python benchmarks/bench_step.py --vit dino_vits16 --random-weights --size 224 --vit-size 224
    python benchmarks/bench_step.py --vit dino_vitb8 --vit-weights dino_vitbase8_pretrain.pth --size 512
    python benchmarks/bench_step.py --vit dino_vitb8 --judge-vit dino_vits16 --random-weights --size 512

Speed does not depend on the ViT's weight values, so `--random-weights` builds a DINO architecture with
seeded random weights when no checkpoint is at hand (the output says so). Images are procedural (a few
shapes / stripes), square, `--size` pixels on a side; the ViT sees `--vit-size` pixels on a side.

Reported: median seconds per regular step (after warm-up), steps/s, the extra cost of a full-image step
(every `full_image_every` steps in training), an evaluation (with `--judge-vit`, scored by the judge too:
run it with and without to see what a judge costs), setup (ViT build + baselines), peak memory (process max
RSS on CPU; torch.cuda.max_memory_allocated on CUDA) and parameter counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

from splice_model import SpliceConfig, SpliceTrainer, WeightsError, load_features, resolve_device
from splice_model.train import uses_amp
from splice_model.vit import VIT_PRESETS


def synthetic_pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Structure: coloured disc and box on a noisy background. Appearance: colour stripes with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    structure = 0.8 + 0.1 * rng.random((3, size, size))
    disc = (x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.06
    box = (x > 0.55) & (x < 0.9) & (y > 0.3) & (y < 0.85)
    structure[:, disc] = np.array([0.8, 0.15, 0.15])[:, None]
    structure[:, box] = np.array([0.1, 0.25, 0.8])[:, None]
    phase = (x + y) * 40
    appearance = 0.5 + 0.35 * np.stack([np.sin(phase), np.sin(phase + 2), np.cos(phase / 2)])
    appearance += rng.normal(0, 0.05, appearance.shape)
    as_tensor = lambda a: torch.from_numpy(np.clip(a, 0, 1)).float()  # noqa: E731
    return as_tensor(structure), as_tensor(appearance)


def random_weights_preset(name: str) -> str:
    """Register a copy of preset `name` that builds with seeded random weights; return its name."""
    preset = VIT_PRESETS[name]
    if preset.url is None:
        return name  # already random
    random_name = f"{name}-random-weights"
    VIT_PRESETS[random_name] = dataclasses.replace(
        preset, url=None, description=f"{name}'s architecture with seeded random weights (timing only)"
    )
    return random_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - start


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # ru_maxrss is KiB on Linux


def peak_memory(device: torch.device, rss_at_start: float) -> str:
    if device.type == "cuda":
        return (
            f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB "
            f"(torch.cuda.max_memory_allocated over the timed steps)"
        )
    return f"{max_rss_mib():,.0f} MiB (process max RSS; {rss_at_start:,.0f} MiB after imports)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vit", default="random_tiny8", choices=sorted(VIT_PRESETS), help="ViT preset")
    parser.add_argument("--vit-weights", default=None, help="local DINO checkpoint for the preset")
    parser.add_argument("--judge-vit", default=None, choices=sorted(VIT_PRESETS), help="a held-out judge ViT preset")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build a DINO preset with seeded random weights (no download; timing only)",
    )
    parser.add_argument("--size", type=int, default=224, help="side of the square synthetic images (pixels)")
    parser.add_argument("--vit-size", type=int, default=224, help="ViT input side (short side)")
    parser.add_argument("--steps", type=int, default=10, help="timed regular steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="timed full-image steps and evals")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", "cuda:1", ...')
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--amp",
        choices=["auto", "on", "off"],
        default="auto",
        help="bf16 autocast: auto = where the device computes bf16 natively (SpliceConfig.amp)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the ViT")
    args = parser.parse_args(argv)
    rss_at_start = max_rss_mib()
    if args.random_weights and args.vit_weights:
        parser.error("--random-weights and --vit-weights exclude each other")
    if args.size < 16 or args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("need --size >= 16, --steps >= 1, --warmup >= 0, --repeats >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    vit_name = random_weights_preset(args.vit) if args.random_weights else args.vit
    judge_name = random_weights_preset(args.judge_vit) if args.random_weights and args.judge_vit else args.judge_vit
    device = resolve_device(args.device)
    # Full-image steps and evals are timed on their own, so regular steps never include them.
    config = SpliceConfig(
        vit=vit_name,
        vit_weights=args.vit_weights,
        judge_vit=judge_name,
        vit_size=args.vit_size,
        vit_max_side=max(480, args.vit_size),
        max_side=args.size,
        device=str(device),
        amp={"auto": "auto", "on": True, "off": False}[args.amp],
        compile=args.compile,
        steps=10**9,
        eval_every=10**9,
        full_image_every=10**9,
    )
    structure, appearance = synthetic_pair(args.size)

    try:
        build_s = timed(lambda: load_features(config, device), device)
    except WeightsError as error:
        print(f"error: {error}\n(for timing only, add --random-weights)", file=sys.stderr)
        return 2
    trainer = None

    def setup():
        nonlocal trainer
        trainer = SpliceTrainer(structure, appearance, config)

    setup_s = timed(setup, device)

    def regular_step():
        if trainer.step % config.full_image_every == 0:
            trainer.step += 1  # step 0 would be a full-image step: skip its index, nothing else changes
        trainer.train_step()

    def full_image_step():
        trainer.step = (trainer.step // config.full_image_every + 1) * config.full_image_every
        trainer.train_step()

    for _ in range(args.warmup):
        regular_step()
    if args.warmup:
        full_image_step()
        trainer.evaluate()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = [timed(regular_step, device) for _ in range(args.steps)]
    full_times = [timed(full_image_step, device) for _ in range(args.repeats)]
    eval_times = [timed(trainer.evaluate, device) for _ in range(args.repeats)]

    step_s = statistics.median(step_times)
    full_s = statistics.median(full_times)
    eval_s = statistics.median(eval_times)
    preset = VIT_PRESETS[vit_name]
    if args.vit_weights:
        weights = f"from {args.vit_weights}"
    elif preset.url is None:
        weights = "RANDOM (seeded; NOT DINO: timing only, speed does not depend on weight values)"
    else:
        weights = "official DINO (torch hub cache)"
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = [
        ("device", f"{device} ({name}{threads})"),
        (
            "vit",
            f"{vit_name}: {preset.embed_dim}-d, {preset.depth} blocks, {preset.num_heads} heads, "
            f"patch {preset.patch_size}",
        ),
        ("vit weights", weights),
        ("judge vit", judge_name or "none"),
        ("images", f"{args.size}x{args.size} synthetic; ViT input {args.vit_size}x{args.vit_size}"),
        ("bf16 autocast / compile", f"{uses_amp(config.amp, device)} (--amp {args.amp}) / {args.compile}"),
        ("params", f"generator {count(trainer.generator):,}; ViT {count(trainer.features):,} (frozen)"),
        ("ViT build", f"{build_s:.3f} s"),
        ("setup (baselines)", f"{setup_s:.3f} s"),
        (
            "regular step",
            f"{step_s * 1e3:,.1f} ms median of {args.steps} "
            f"(min {min(step_times) * 1e3:,.1f}, max {max(step_times) * 1e3:,.1f})",
        ),
        ("steps/s", f"{1 / step_s:.2f}"),
        (
            "full-image step",
            f"{full_s * 1e3:,.1f} ms median of {args.repeats} ({(full_s - step_s) * 1e3:+,.1f} ms vs a regular step)",
        ),
        ("eval", f"{eval_s * 1e3:,.1f} ms median of {args.repeats}"),
        (
            "2000-step run",
            f"~{(2000 * step_s + 2000 // 75 * (full_s - step_s) + 20 * eval_s) / 60:.1f} min "
            f"(paper schedule at this size: full image every 75 steps, eval every 100)",
        ),
        ("peak memory", peak_memory(device, rss_at_start)),
        # Other processes on the machine inflate CPU timings: a load above the thread count means noise.
        ("load average", " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"),
    ]
    width = max(len(label) for label, _ in rows)
    print("splice_model training-step benchmark")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
