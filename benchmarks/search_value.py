"""Does the search pay? The paper's point against the winner of a k-trial search, on real photo pairs.

    python benchmarks/search_value.py              # 6 real pairs, k = 4, 300 steps, one pair at 3x (~45 min, 2 cores)
    python benchmarks/search_value.py --pairs all --trials 16 --steps 2000 --vit dinov2_vitb14   # a GPU machine
    python benchmarks/search_value.py --quick      # 1 pair, 2 trials, 6 steps: the smoke test (a test)

Per pair, two arms with the same fixed settings (ViT, sizes, steps, seed):

- paper: a real `splice-tune search` of the shipped `paper` space: one training per pair at the paper's
  point (alpha = beta = 0.1, lr = 2e-3, the paper's augmentations);
- search: a real `splice-tune search` (local Ray, Optuna TPE, ASHA, MLflow) over the `default` space's ranges
  with its scheduler and sampler, k trials per pair, the warm start off (so the paper's point is not given to
  it), ranked by the training ViT's `splice_score` (the only real ViT at hand; the default space's DINO judge
  ViT is not). Its winner is the best finished trial.

Both arms run their trials on local Ray, one CPU each (two at once on 2 cores), and both winners are
re-rendered from their logged checkpoints, so the two are measured the same way.

Each arm's output is measured three ways: (a) the training ViT's `splice_score` (what the search optimised);
(b) a held-out judge from another network family, EfficientNet-Lite0 (an ImageNet CNN, `cnn_judge.py`), as
`judge_ratio` = judge_structure / its copy baseline + judge_appearance / its copy baseline (1.0 = no better
than copying an input, like `splice_score`); before it is trusted, each pair's copies must be separated (the
"judge check" table); (c) a contact sheet per pair: inputs | paper's point | winner. One pair (`--long-pair`)
runs both arms again at `--long-factor` x the steps, to show how the answer depends on the steps.

Prints progress and two tables (judge check, results), and writes them with the sheets under `--out`.
Needs real ViT weights (`--vit-weights`, or the preset's official file in torch hub's cache) and the
`bench` extra (`pip install -e '.[bench]'`) for the judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, like the other benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from cnn_judge import CnnJudge, JudgeWeightsError, separation_check  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from splice_model import WeightsError, build_vit, load_checkpoint, render  # noqa: E402
from splice_model.images import load_image, to_pil  # noqa: E402
from splice_tune import results  # noqa: E402
from splice_tune.best import CHECKPOINT_ARTIFACT  # noqa: E402
from splice_tune.contact_sheet import _font  # noqa: E402
from splice_tune.pairs import read_pairs  # noqa: E402
from splice_tune.spaces.shipped import shipped_spaces_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_PAIRS = REPO / "examples" / "real" / "pairs.csv"
# The real DINOv2 ViT-S/14 beside this project's checkouts (tests and benchmarks only; never shipped).
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "dinov2_vits14_imgfocus.pth"
DEFAULT_PAIRS = "animals,mountains,flowers,lakes,leaves,forests"
THUMB = (220, 165)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = selected_pairs(args)
    try:
        build_vit(args.vit, args.vit_weights)  # fail now, not after the paper arm
        judge = CnnJudge()
    except (WeightsError, JudgeWeightsError) as error:
        sys.exit(f"search_value: {error}")
    fixed = fixed_settings(args)
    print(f"search_value: {len(pairs)} pairs, k = {args.trials} trials, {args.steps} steps, ViT {args.vit}", flush=True)
    print(f"  fixed: {json.dumps(fixed)}", flush=True)

    images = {pair.name: (load_image(pair.structure, args.max_side), load_image(pair.appearance)) for pair in pairs}
    checks = {name: separation_check(*images[name], judge=judge) for name in images}
    print_judge_check(checks)
    if not all(check["separates"] for check in checks.values()):
        print("  WARNING: the judge does not separate the copies of every pair; read its column with care")

    runs = [(pair, args.steps) for pair in pairs]
    if args.long_pair:
        runs.append((next(p for p in pairs if p.name == args.long_pair), args.steps * args.long_factor))
    rows = []
    for steps in sorted({steps for _, steps in runs}):
        group = [pair for pair, s in runs if s == steps]
        settings = {**fixed, "steps": steps, "eval_every": max(1, steps // 6)}
        paper = run_arm("paper", group, settings, args, judge, images, checks, started)
        search = run_arm("search", group, settings, args, judge, images, checks, started)
        for pair in group:
            row = {"pair": pair.name, "steps": steps, "paper": paper[pair.name], "search": search[pair.name]}
            rows.append(row)
            contact_sheet(row, images[pair.name], args.out / f"{pair.name}_{steps}.png")
    elapsed = time.perf_counter() - started
    report(rows, checks, args, fixed, elapsed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs-csv", type=Path, default=REAL_PAIRS, help="pairs file (default: examples/real)")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma-separated pair names, or 'all'")
    parser.add_argument("--trials", type=int, default=4, help="k: the search's trials per pair")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every trial and of the paper arm")
    parser.add_argument("--long-pair", default="animals", help="this pair also runs at --long-factor x the steps")
    parser.add_argument("--long-factor", type=int, default=3)
    parser.add_argument("--vit", default="dinov2_vits14", help="ViT preset (real weights needed)")
    parser.add_argument(
        "--vit-weights",
        type=Path,
        default=SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else None,
        help="checkpoint for --vit (default: ../shared/weights' DINOv2-S/14 if present, else torch hub's cache)",
    )
    parser.add_argument("--max-side", type=int, default=224, help="long side of the training images")
    parser.add_argument("--vit-size", type=int, default=168, help="ViT input short side")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "splice-runs" / "search-value", help="results folder")
    parser.add_argument("--quick", action="store_true", help="1 pair, 2 trials, 6 steps, 64 px: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.trials, args.steps, args.long_pair = args.pairs.split(",")[0], 2, 6, ""
        args.max_side, args.vit_size = 64, 56
    return args


def selected_pairs(args: argparse.Namespace) -> list:
    pairs = read_pairs(args.pairs_csv, min_side=2 * 14, max_side=None)
    if args.pairs != "all":
        wanted = args.pairs.split(",")
        unknown = sorted(set(wanted) - {pair.name for pair in pairs})
        if unknown:
            sys.exit(f"search_value: {args.pairs_csv} has no pair {', '.join(unknown)}")
        pairs = [pair for pair in pairs if pair.name in wanted]
    if args.long_pair and args.long_pair not in {pair.name for pair in pairs}:
        sys.exit(f"search_value: --long-pair {args.long_pair} is not among --pairs")
    return pairs


def fixed_settings(args: argparse.Namespace) -> dict:
    """What both arms share; the search arm gets it as its space's `fixed` block."""
    return {
        "vit": args.vit,
        "vit_weights": str(args.vit_weights) if args.vit_weights else None,
        "max_side": args.max_side,
        "vit_size": args.vit_size,
        "vit_max_side": 2 * args.vit_size,
        "device": args.device,
        "seed": 0,
    }


def judge_ratio(scores: dict, check: dict) -> float:
    """judge_structure / base + judge_appearance / base: 1.0 = no better than copying an input, 0 = perfect."""
    return scores["judge_structure"] / check["judge_structure_base"] + scores["judge_appearance"] / max(
        check["judge_appearance_base"], 1e-6
    )


def measured(output: torch.Tensor, scores: dict, name: str, images, judge: CnnJudge, check: dict) -> dict:
    """One arm's output (8-bit, as a user gets it) with its training-ViT scores and the judge's."""
    output = torch.from_numpy(np.array(to_pil(output))).permute(2, 0, 1).float() / 255
    judged = judge.score(output, *images[name])
    return {
        "splice_score": scores["splice_score"],
        "structure_score": scores["structure_score"],
        "appearance_score": scores["appearance_score"],
        **judged,
        "judge_ratio": judge_ratio(judged, check),
        "output": output,
    }


def run_arm(arm: str, pairs: list, settings: dict, args, judge, images, checks, started: float) -> dict:
    """One real search over `pairs` (Ray, Optuna, MLflow): `arm` "paper" runs the shipped `paper` space (one
    trial per pair, nothing sampled), "search" the `default` space's ranges, scheduler (ASHA) and sampler
    (TPE) with k trials per pair. Each pair's winner is re-rendered from its logged checkpoint and measured."""
    from splice_tune.driver import SearchRequest, run_search

    steps = settings["steps"]
    folder = args.out / f"{arm}-{steps}"
    folder.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load((shipped_spaces_dir() / f"{'paper' if arm == 'paper' else 'default'}.yaml").read_text())
    fixed = {name: value for name, value in settings.items() if value is not None}
    space.update(description=f"search_value: {arm} arm, {steps} steps", objective={"metric": "splice_score"})
    if arm == "paper":
        space["fixed"].update(fixed)
    else:
        space.update(fixed=fixed, budget={"trials_per_pair": args.trials, "max_concurrent": None})
        space["sampler"]["startup_trials"] = min(space["sampler"]["startup_trials"], max(1, args.trials // 2))
    (folder / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    rows = ["pair,structure,appearance"] + [f"{p.name},{p.structure},{p.appearance}" for p in pairs]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    request = SearchRequest(
        pairs_csv=folder / "pairs.csv",
        space=str(folder / "space.yaml"),
        name=f"search-value-{arm}-{steps}-{int(time.time())}",
        root=folder / "splice-runs",
        no_warm_start=True,  # the search arm must not be handed the paper's point
        quiet=args.quick,
    )
    begun = time.perf_counter()
    summary = run_search(request)
    seconds = time.perf_counter() - begun
    client, _ = results.open_store(summary.tracking_uri, request.root)
    measured_rows = {}
    for pair in summary.pairs:
        run = client.get_run(pair.run_id)
        generator, _, _ = load_checkpoint(results.download(client, run, CHECKPOINT_ARTIFACT, folder / pair.pair))
        row = measured(
            render(generator, images[pair.pair][0]), pair.scores, pair.pair, images, judge, checks[pair.pair]
        )
        row.update(
            trial=results.trial_name(run),
            params={name: float(value) for name, value in pair.params.items()},
            counts={state: count for state, count in pair.counts.items() if count},
        )
        measured_rows[pair.pair] = row
        print(
            f"[{clock(started)}] {arm:<6} {pair.pair:<10} {steps} steps: splice {row['splice_score']:.3f}  "
            f"judge {row['judge_ratio']:.3f}  (winner {row['trial']}; {row['counts']})",
            flush=True,
        )
    print(f"[{clock(started)}] {arm} arm at {steps} steps took {seconds / 60:.1f} min", flush=True)
    return measured_rows


def contact_sheet(row: dict, images, path: Path) -> None:
    """inputs | paper's point | the search's winner, with the two measures under each output."""
    structure, appearance = images
    tiles = [
        (to_pil(structure), ["structure (input)", ""]),
        (to_pil(appearance), ["appearance (input)", ""]),
    ]
    for arm, label in (("paper", "paper's point"), ("search", f"search winner ({row['search']['trial']})")):
        scores = row[arm]
        tiles.append(
            (
                to_pil(scores["output"]),
                [label, f"splice {scores['splice_score']:.3f}  judge {scores['judge_ratio']:.3f}"],
            )
        )
    pad, line = 10, 16
    title = f"{row['pair']}: {row['steps']} steps (lower is better; judge = EfficientNet-Lite0, held out)"
    sheet = Image.new("RGB", (len(tiles) * (THUMB[0] + pad) + pad, THUMB[1] + 3 * line + 4 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill="black", font=_font(14))
    for index, (image, lines) in enumerate(tiles):
        left, top = pad + index * (THUMB[0] + pad), 2 * pad + line
        thumbnail = ImageOps.contain(image, THUMB)
        sheet.paste(thumbnail, (left + (THUMB[0] - thumbnail.width) // 2, top + (THUMB[1] - thumbnail.height) // 2))
        for number, text in enumerate(lines):
            draw.text((left, top + THUMB[1] + 4 + number * line), text, fill="black", font=_font(12))
    sheet.save(path)


def print_judge_check(checks: dict) -> None:
    print("\njudge check (EfficientNet-Lite0): each copy of an input must fail the other term", flush=True)
    print(f"  {'pair':<10} {'copy structure: struct / app':>30} {'copy appearance: struct / app':>31}  separates")
    for name, check in checks.items():
        s, a = check["structure_copy"], check["appearance_copy"]
        print(
            f"  {name:<10} {s['judge_structure']:>14.4f} / {s['judge_appearance']:.4f}"
            f" {a['judge_structure']:>15.4f} / {a['judge_appearance']:.4f}  {'yes' if check['separates'] else 'NO'}"
        )
    print(flush=True)


def report(rows: list[dict], checks: dict, args, fixed: dict, elapsed: float) -> None:
    lines = [
        f"search_value: k = {args.trials} trials per pair, ViT {args.vit}, images {args.max_side} px long side, "
        f"ViT input {args.vit_size} px; {elapsed / 60:.1f} min on this machine",
        "",
        "| pair | steps | splice: paper | splice: winner | judge: paper | judge: winner | winner's params |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        paper, search = row["paper"], row["search"]
        params = ", ".join(f"{name} {value:.3g}" for name, value in sorted(search["params"].items()))
        lines.append(
            f"| {row['pair']} | {row['steps']} | {paper['splice_score']:.3f} | {search['splice_score']:.3f} | "
            f"{paper['judge_ratio']:.3f} | {search['judge_ratio']:.3f} | {params} |"
        )
    base = [row for row in rows if row["steps"] == args.steps]
    for measure, key in (("splice", "splice_score"), ("judge", "judge_ratio")):
        diffs = [row["search"][key] - row["paper"][key] for row in base]
        better = sum(d < 0 for d in diffs)
        lines.append(
            f"\n{measure}: median paper {statistics.median(r['paper'][key] for r in base):.3f}, median winner "
            f"{statistics.median(r['search'][key] for r in base):.3f}, "
            f"median winner - paper {statistics.median(diffs):+.3f}; "
            f"the winner is better on {better} of {len(base)} pairs"
        )
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (args.out / "search_value.md").write_text(text + "\n")
    document = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "fixed": fixed,
        "seconds": elapsed,
        "judge_check": {name: {k: v for k, v in check.items()} for name, check in checks.items()},
        "rows": [
            {**row, **{arm: {k: v for k, v in row[arm].items() if k != "output"} for arm in ("paper", "search")}}
            for row in rows
        ],
    }
    (args.out / "search_value.json").write_text(json.dumps(document, indent=1, default=str))
    print(f"wrote {args.out / 'search_value.md'}, search_value.json and one contact sheet per pair and steps")


def clock(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":
    main()
