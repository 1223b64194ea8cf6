"""Time the regular Splice training step of two checkouts, or two settings, side by side in one run.

    python benchmarks/compare_step.py --vit dino_vits16 --a-ref 8eac50a          # a commit vs the working tree
    python benchmarks/compare_step.py --vit dino_vits8 --a-set amp=false --b-set amp=auto   # two settings
    python benchmarks/compare_step.py --vit dino_vits16 --a-ref main --b-ref HEAD --rounds 5

Each side runs in its own process with its own `splice_model` (a git ref is exported with `git archive` into
a temporary folder; the default is this working tree) and its settings (`--a-set/--b-set field=value`, YAML
values, over each checkout's own `SpliceConfig` defaults: two checkouts are compared as they ship). Both
processes build their trainer first; then they take turns, `--steps` timed steps each per round, so a busy
machine slows both alike. DINO presets get seeded random weights (speed does not depend on weight values).

Images: the example `cows` pair (or `--structure/--appearance`) resized so the short side is `--short-side`.
Printed: per side, the median/min seconds of a regular step (never a full-image step) over all rounds, and
the speed-up of B over A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "pairs"


def worker(args: argparse.Namespace) -> None:
    """One side: build a trainer, then answer each `run N` line on stdin with N timed steps (JSON)."""
    import dataclasses
    import time

    import torch
    import torch.nn.functional as F
    import yaml

    from splice_model import SpliceConfig, SpliceTrainer, load_image
    from splice_model.vit import VIT_PRESETS

    torch.set_num_threads(args.threads)
    preset = VIT_PRESETS[args.vit]
    vit = args.vit
    if preset.url is not None:
        vit = f"{args.vit}-random-weights"
        VIT_PRESETS[vit] = dataclasses.replace(preset, url=None)

    def short_side(path: str) -> torch.Tensor:
        image = load_image(path)
        scale = args.short_side / min(image.shape[-2:])
        size = [round(side * scale) for side in image.shape[-2:]]
        return F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)

    settings = {
        "vit": vit,
        "max_side": None,
        "device": "cpu",
        "steps": 10**9,
        "eval_every": 10**9,
        "full_image_every": 10**9,
    }
    for item in args.set or []:
        name, _, value = item.partition("=")
        settings[name] = yaml.safe_load(value)
    trainer = SpliceTrainer(short_side(args.structure), short_side(args.appearance), SpliceConfig(**settings))
    trainer.step = 1  # step 0 would be a full-image step
    for _ in range(args.warmup):
        trainer.train_step()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line.split()[1])):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times}), flush=True)


def export(ref: str, into: Path) -> Path:
    """The tree of git `ref` as a folder (committed files only)."""
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    folder = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


def start(side: str, checkout: Path, settings: list[str], args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--vit",
        args.vit,
        "--short-side",
        str(args.short_side),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--structure",
        args.structure,
        "--appearance",
        args.appearance,
    ]
    command += [f"--set={item}" for item in settings]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout)
    reply = process.stdout.readline()
    if not reply:
        raise SystemExit(f"side {side} ({checkout}) failed to start; its error is above")
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vit", default="dino_vits16", help="ViT preset (DINO presets get random weights)")
    parser.add_argument("--short-side", type=int, default=256, help="images resized to this short side")
    parser.add_argument("--structure", default=str(EXAMPLES / "cows_structure.png"))
    parser.add_argument("--appearance", default=str(EXAMPLES / "cows_appearance.png"))
    for side in "ab":
        parser.add_argument(
            f"--{side}-ref", default=None, help=f"git ref for side {side.upper()} (default: this working tree)"
        )
        parser.add_argument(
            f"--{side}-set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help=f"SpliceConfig setting for side {side.upper()} (repeatable)",
        )
    parser.add_argument("--rounds", type=int, default=4, help="turns per side")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the first turn")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per side")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="splice-compare-") as temporary:
        sides = {}
        for side in "ab":
            ref = getattr(args, f"{side}_ref")
            checkout = export(ref, Path(temporary) / side) if ref else REPO
            label = f"{ref or 'working tree'}" + "".join(f" {item}" for item in getattr(args, f"{side}_set"))
            sides[side.upper()] = (label, start(side.upper(), checkout, getattr(args, f"{side}_set"), args))
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, (_, process) in sides.items():
                process.stdin.write(f"run {args.steps}\n")
                process.stdin.flush()
                times[side] += json.loads(process.stdout.readline())["times"]
        for _, process in sides.values():
            process.stdin.close()
            process.wait()

    median = {side: statistics.median(values) for side, values in times.items()}
    print(
        f"regular step, {args.vit} (random weights), cows pair at short side {args.short_side}, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps per side, taking turns"
    )
    for side, (label, _) in sides.items():
        print(
            f"  {side}: {median[side] * 1e3:8,.0f} ms median  (min {min(times[side]) * 1e3:,.0f})  "
            f"{1 / median[side]:.2f} steps/s   {label}"
        )
    print(
        f"  B vs A: {median['A'] / median['B']:.2f}x faster"
        if median["B"] <= median["A"]
        else f"  B vs A: {median['B'] / median['A']:.2f}x slower"
    )
    print(f"  load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
