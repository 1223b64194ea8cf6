"""The generator's start and the seed's noise floor, at CPU-scale steps: released init vs PyTorch's default.

    python benchmarks/generator_init.py                 # 4 real pairs x 3 runs, 300 steps (~15 min, 2 cores)
    python benchmarks/generator_init.py --steps 900 --pairs animals

The released code initialises every conv with xavier_normal_(gain=0.02) and BatchNorm weights from N(1, 0.02)
(`splice_model/generator.py`), so its first output is a flat grey; PyTorch's default init gives convs 7-35x
larger weights. Three runs per pair at the paper's point (SpliceConfig's defaults): the released init with
seed 0 and with seed 1 (the noise floor: how far the seed alone moves a score), and PyTorch's init with seed 0,
all with the same fixed settings as `search_value.py` (a real DINOv2 ViT-S/14, 224-px images, ViT input 168 px), and
scored by the training ViT (`splice_score`) and by the held-out EfficientNet-Lite0 judge (`judge_ratio`, as in
`search_value.py`). Lower is better; 1.0 is no better than copying an input. Two trainings run at once, one
torch thread each.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_value import REAL_PAIRS, SHARED_WEIGHTS  # noqa: E402

RUNS = {
    ("released", 0): "released init, seed 0",
    ("released", 1): "released init, seed 1",
    ("pytorch", 0): "PyTorch init, seed 0",
}


def train_one(task: tuple) -> dict:
    """One training in a worker process: (pair name, (init, seed), structure, appearance, settings)."""
    import torch

    import splice_model.generator as generator
    from splice_model import SpliceConfig, train_pair

    torch.set_num_threads(1)
    name, run, structure, appearance, settings = task
    init, seed = run
    # The pool's workers run one task after another: keep the released init to put back.
    released = generator.__dict__.setdefault("_released_init_kept", generator._released_init)
    generator._released_init = (lambda module: None) if init == "pytorch" else released
    started = time.perf_counter()
    result = train_pair(structure, appearance, SpliceConfig(**settings, seed=seed))
    return {
        "pair": name,
        "init": RUNS[run],
        "scores": result.scores,
        "output": result.output,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="animals,flowers,lakes,forests")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--vit-weights", type=Path, default=SHARED_WEIGHTS)
    args = parser.parse_args(argv)

    from cnn_judge import CnnJudge, separation_check
    from search_value import judge_ratio

    from splice_model.images import load_image
    from splice_tune.pairs import read_pairs

    pairs = [p for p in read_pairs(REAL_PAIRS, min_side=28, max_side=None) if p.name in args.pairs.split(",")]
    settings = dict(
        vit="dinov2_vits14", vit_weights=str(args.vit_weights), max_side=224, vit_size=168, vit_max_side=336,
        steps=args.steps, eval_every=args.steps // 6, device="cpu",
    )  # fmt: skip
    tasks = [(p.name, run, str(p.structure), str(p.appearance), settings) for p in pairs for run in RUNS]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        done = []
        for result in pool.imap_unordered(train_one, tasks):
            done.append(result)
            print(f"[{time.perf_counter() - started:5.0f} s] {result['pair']:<10} {result['init']:<22} splice "
                  f"{result['scores']['splice_score']:.3f} ({result['seconds']:.0f} s)", flush=True)  # fmt: skip
    judge = CnnJudge()
    rows = {}
    for result in done:
        pair = next(p for p in pairs if p.name == result["pair"])
        structure, appearance = load_image(pair.structure, 224), load_image(pair.appearance)
        judged = judge.score(result["output"], structure, appearance)
        ratio = judge_ratio(judged, separation_check(structure, appearance, judge=judge))
        rows.setdefault(pair.name, {})[result["init"]] = (result["scores"]["splice_score"], ratio)
    print(f"\n{args.steps} steps at the paper's point; splice_score / judge_ratio (lower is better)\n")
    print("| pair | " + " | ".join(RUNS.values()) + " |\n| --- |" + " --- |" * len(RUNS))
    for name, row in rows.items():
        print(
            f"| {name} | " + " | ".join(f"{row[label][0]:.3f} / {row[label][1]:.3f}" for label in RUNS.values()) + " |"
        )
    for index, measure in ((0, "splice_score"), (1, "judge_ratio")):
        medians = ", ".join(
            f"{label} {statistics.median(row[label][index] for row in rows.values()):.3f}" for label in RUNS.values()
        )
        print(f"median {measure}: {medians}")
    print(f"took {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
