"""`make demo`: a search of the example pairs, then each pair's winner rendered and the report.

With real ViT weights it searches the real photo pairs of `examples/real/demo.csv` with the `cpu_real` space
(a real ViT, 450 steps at 224 px: about 6 minutes on 2 cores). The weights are the first of:

1. `--vit-weights FILE` (`make demo VIT_WEIGHTS=FILE`; `VIT=PRESET` names its architecture, default
   dinov2_vits14; e.g. `VIT=dino_vits16` for DINO's `dino_deitsmall16_pretrain.pth`);
2. the file named by the environment variable SPLICE_TUNE_VIT_WEIGHTS (with SPLICE_TUNE_VIT for the preset);
3. the official DINOv2 ViT-S/14 or DINO ViT-S/16 checkpoint in torch hub's cache;
4. the official DINOv2 ViT-S/14, downloaded into that cache (88 MB), where the network allows.

Without any, it says so in one line and runs the random-weight demo instead: the `quick` space on the drawn
pairs of `examples/pairs.csv` (NOT DINO: it shows the machinery, not Splice).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "splice-tune"
HUB_PRESETS = ("dinov2_vits14", "dino_vits16")  # small enough for a CPU demo, in order of preference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit-weights", default="", help="real ViT weights file (empty: look elsewhere)")
    parser.add_argument("--vit", default="", help="the weights' preset (default dinov2_vits14)")
    parser.add_argument("--out-dir", default="splice-runs/demo-best", help="where the winners are rendered")
    args = parser.parse_args(argv)

    preset, weights, why_not = real_weights(args.vit_weights, args.vit)
    if weights is None:
        print(f"demo: {why_not}; running the random-weight demo (NOT DINO: the machinery, not Splice)", flush=True)
        search = ["search", str(EXAMPLES / "pairs.csv"), "--space", "quick"]
    else:
        print(f"demo: real ViT {preset} from {weights}: searching the real photo pairs (about 6 minutes)", flush=True)
        search = ["search", str(EXAMPLES / "real" / "demo.csv"), "--space", "cpu_real", "--set", f"vit={preset}"]
        search += ["--set", f"vit_weights={weights}"]
    for command in (
        [*search, "--warm-start", "auto"],
        ["best", "--all", "--out-dir", args.out_dir],
        ["report"],
    ):
        print("$ splice-tune " + " ".join(command), flush=True)
        code = subprocess.call([str(CLI), *command])
        if code != 0:
            return code
    return 0


def real_weights(weights: str, preset: str) -> tuple[str, Path | None, str]:
    """(preset, weights file, "") for the first real weights found, else ("", None, why none was used)."""
    environ = os.environ
    for given, given_preset, source in (
        (weights, preset, "VIT_WEIGHTS"),
        (environ.get("SPLICE_TUNE_VIT_WEIGHTS", ""), environ.get("SPLICE_TUNE_VIT", ""), "SPLICE_TUNE_VIT_WEIGHTS"),
    ):
        if given:
            path = Path(given).expanduser().resolve()
            if not path.is_file():
                return "", None, f"{source}={given}: no such file"
            return given_preset or HUB_PRESETS[0], path, ""
    from splice_model.vit import WeightsError, hub_cache_path, official_checkpoint

    for name in HUB_PRESETS:
        cached = hub_cache_path(name)
        if cached.is_file():
            return name, cached, ""
    print(f"demo: no real ViT weights at hand; downloading the official {HUB_PRESETS[0]} (88 MB) to torch hub's cache")
    try:
        return HUB_PRESETS[0], official_checkpoint(HUB_PRESETS[0]), ""
    except WeightsError:
        places = ", ".join(str(hub_cache_path(name)) for name in HUB_PRESETS)
        return (
            "",
            None,
            (
                f"no real ViT weights (none given with VIT_WEIGHTS=FILE or SPLICE_TUNE_VIT_WEIGHTS, none in "
                f"torch hub's cache: {places}, and the download failed)"
            ),
        )


if __name__ == "__main__":
    sys.exit(main())
