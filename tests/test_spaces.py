"""Search spaces: the shipped ones load, sampling maps onto SpliceConfig, and every mistake is one line
naming file, line and field (or the --set that caused it), with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import splice_tune.spaces.shipped
from splice_model.config import SpliceConfig
from splice_tune.errors import BadInput
from splice_tune.spaces import Budget, Sampler, SearchSpace, load_space, shipped_spaces

SMALL = """\
description: a small test space
fixed:
  vit: random_tiny8
  steps: 60
  eval_every: 20
params:
  alpha: {type: float, low: 0.02, high: 0.5, log: true}
  blur_p: {type: float, low: 0.0, high: 0.5, step: 0.05}
  max_side: {type: int, low: 64, high: 128, step: 32}
  vit_size: {type: categorical, choices: [64, 96]}
  beta: {type: int, low: 0, high: 1}
budget:
  trials_per_pair: 3
"""


def listing(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in root.rglob("*"))


def write_space(folder: Path, text: str, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(name_or_path: str | Path, overrides: list[str] = (), folder: Path | None = None) -> list[str]:
    """The problem lines `load_space` raises, checking that it wrote nothing into `folder`."""
    before = listing(folder) if folder else None
    with pytest.raises(BadInput) as raised:
        load_space(name_or_path, overrides)
    if folder:
        assert listing(folder) == before
    problems = raised.value.problems
    assert problems and all("\n" not in line for line in problems)
    return problems


# ---------------------------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", ["default", "quick", "paper", "cpu_real"])
def test_shipped_spaces_load(name: str) -> None:
    space = load_space(name)
    assert space.path == splice_tune.spaces.SPACES_DIR / f"{name}.yaml"
    assert space.description and "\n" not in space.description
    space.config_for({n: d.low if hasattr(d, "low") else d.choices[0] for n, d in space.distributions().items()})


def test_shipped_spaces_listing() -> None:
    spaces = shipped_spaces()
    assert set(spaces) == {"default", "quick", "paper", "cpu_real"} and all(spaces.values())


def test_paper_space_is_the_paper() -> None:
    space = load_space("paper")
    assert space.params == {} and space.budget.trials_per_pair == 1 and space.scheduler.type == "none"
    assert space.config_for({}) == SpliceConfig()


def test_quick_space_is_small() -> None:
    space = load_space("quick")
    config = space.config_for({"alpha": 0.1, "beta": 0.1, "lr": 1e-3, "jitter_strength": 1.0, "blur_p": 0.2})
    assert (config.vit, config.steps, config.eval_every, config.max_side, config.vit_size) == (
        "random_tiny8",
        60,
        20,
        96,
        64,
    )
    assert space.budget == Budget(trials_per_pair=3, max_concurrent=2)
    assert space.min_image_side() == 32  # two patches of the 16-px judge (random_tiny16)


def test_default_space_is_the_gpu_search() -> None:
    space = load_space("default")
    assert space.fixed["vit"] == "dino_vitb8" and space.fixed["steps"] == 2000
    assert space.budget.trials_per_pair == 16 and space.budget.max_concurrent is None
    assert (space.scheduler.type, space.scheduler.grace_period, space.scheduler.reduction_factor) == ("asha", 3, 2)
    paper = SpliceConfig()
    for name, spec in space.params.items():  # every range contains the paper's point
        assert spec.low <= getattr(paper, name) <= spec.high, name


def test_path_to_a_shipped_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(splice_tune.spaces.SPACES_DIR.parent)
    assert load_space("search_spaces/quick.yaml").params == load_space("quick").params


# ---------------------------------------------------------------------------------------------- behaviour


def test_distributions(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, SMALL))
    d = space.distributions()
    assert d["alpha"] == FloatDistribution(0.02, 0.5, log=True)
    assert d["blur_p"] == FloatDistribution(0.0, 0.5, step=0.05)
    assert d["max_side"] == IntDistribution(64, 128, step=32)
    assert d["vit_size"] == CategoricalDistribution((64, 96))
    assert d["beta"] == IntDistribution(0, 1)


def test_defaults_for_missing_sections(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, "params:\n  alpha: {type: float, low: 0.05, high: 0.2}\n"))
    assert space.fixed == {} and space.description == ""
    assert space.budget == Budget(trials_per_pair=8, max_concurrent=None)
    assert (space.scheduler.type, space.scheduler.grace_period, space.scheduler.reduction_factor) == ("asha", 1, 2)
    assert space.sampler == Sampler("tpe", 0, None)
    assert (space.objective.metric, space.objective.mode) == ("splice_score", "min")


def test_config_for_merges_defaults_fixed_and_sampled(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, SMALL))
    config = space.config_for({"alpha": 0.3, "blur_p": 0.25, "max_side": 96, "vit_size": 96, "beta": 1})
    assert config == SpliceConfig(
        vit="random_tiny8",
        steps=60,
        eval_every=20,  # fixed
        alpha=0.3,
        blur_p=0.25,
        max_side=96,
        vit_size=96,
        beta=1.0,
    )  # sampled
    assert isinstance(config.beta, float)  # an int range on a float setting still gives a float
    with pytest.raises(ValueError):
        space.config_for({"alpha": 0.3})
    with pytest.raises(ValueError):
        space.config_for({"alpha": 0.3, "blur_p": 0.25, "max_side": 96, "vit_size": 96, "beta": 1, "lr": 1.0})


def test_yaml_12_floats_and_int_as_float(tmp_path: Path) -> None:
    space = load_space(
        write_space(tmp_path, "fixed: {lr: 5e-4, alpha: 1, steps: 10, eval_every: 5}\nbudget: {trials_per_pair: 1}\n")
    )
    assert space.fixed["lr"] == 5e-4 and space.fixed["alpha"] == 1.0 and isinstance(space.fixed["alpha"], float)


def test_vit_weights_resolved_against_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vit.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    space = load_space(write_space(tmp_path, "fixed: {vit_weights: weights/vit.pth}\nbudget: {trials_per_pair: 1}\n"))
    assert space.fixed["vit_weights"] == str(tmp_path / "weights" / "vit.pth")


def test_sampler_seed_per_pair() -> None:
    sampler = Sampler(seed=0)
    assert sampler.seed_for("cows") == Sampler(seed=0).seed_for("cows") != sampler.seed_for("horses")
    assert sampler.seed_for("cows") != Sampler(seed=1).seed_for("cows")
    assert Sampler(seed=None).seed_for("cows") is None


def test_values_a_setting_can_take(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, SMALL))
    assert space.values("alpha") == (0.02, 0.5) and space.values("max_side") == (64, 128)  # a range: its bounds
    assert space.values("vit_size") == (64, 96)  # categorical: its choices
    assert space.values("steps") == (60,) and space.values("lr") == (SpliceConfig.lr,)  # fixed, default
    assert space.lowest_config() == space.config_for(
        {"alpha": 0.02, "blur_p": 0.0, "max_side": 64, "vit_size": 64, "beta": 0}
    )


def test_min_image_side_follows_the_largest_patch(tmp_path: Path) -> None:
    text = "params:\n  vit: {type: categorical, choices: [dino_vitb8, dino_vitb16]}\n"
    assert load_space(write_space(tmp_path, text)).min_image_side() == 32
    assert load_space("paper").min_image_side() == 16


def test_to_dict_round_trips(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, SMALL))
    again = load_space(write_space(tmp_path, yaml.safe_dump(space.to_dict()), "again.yaml"))
    assert again.to_dict() == space.to_dict()


# ---------------------------------------------------------------------------------------------- overrides


def test_overrides(tmp_path: Path) -> None:
    space = load_space(
        write_space(tmp_path, SMALL),
        [
            "steps=50",
            "vit_weights=null",
            "budget.trials_per_pair=5",
            "scheduler.type=none",
            "alpha=0.2",
            "fixed.seed=3",
        ],
    )
    assert space.fixed["steps"] == 50 and space.fixed["vit_weights"] is None and space.fixed["seed"] == 3
    assert space.budget.trials_per_pair == 5 and space.scheduler.type == "none"
    assert "alpha" not in space.params and space.fixed["alpha"] == 0.2  # setting a sampled parameter pins it


def test_pinning_a_sampled_parameter_says_so(tmp_path: Path) -> None:
    path = write_space(tmp_path, SMALL)
    space = load_space(path, ["alpha=1e6", "steps=50"])
    assert space.notes == (
        f"--set alpha=1e6: alpha is sampled by {path}; it is now fixed at 1e6 for every trial and no longer searched",
    )
    assert load_space(path, ["steps=50"]).notes == ()  # a fixed setting changes silently, as asked


def test_with_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit.pth").write_bytes(b"x")
    space = load_space("quick").with_overrides({"steps": 40, "vit_weights": "vit.pth", "budget.max_concurrent": 1})
    assert space.fixed["steps"] == 40 and space.budget.max_concurrent == 1
    assert space.fixed["vit_weights"] == str(tmp_path / "vit.pth")  # --set paths start at the working folder
    with pytest.raises(BadInput, match=r"--set steps=0: fixed.steps: must be > 0"):
        space.with_overrides({"steps": 0})


BAD_OVERRIDES = [
    ("steps=abc", "--set steps=abc: fixed.steps: must be a whole number"),
    ("nokey=1", "--set nokey=1: 'nokey' is not a setting"),
    ("stpes=5", "did you mean 'steps'?"),
    ("budget.trails_per_pair=5", "did you mean 'budget.trials_per_pair'?"),
    ("junk", "--set junk: expected key=value"),
    ("lr=[", "--set lr=[: the value is not valid YAML"),
    ("budget.trials_per_pair=0", "--set budget.trials_per_pair=0: budget.trials_per_pair: must be a whole number >= 1"),
    ("vit=dino_vitb9", "unknown ViT preset 'dino_vitb9'; did you mean 'dino_vitb8'?"),
    ("flip_p=1.5", "--set flip_p=1.5: fixed.flip_p: is a probability"),
    ("vit_weights=nope.pth", "weights file 'nope.pth' not found"),
    ("objective.mode=max", "must be min"),
]


@pytest.mark.parametrize("override, words", BAD_OVERRIDES, ids=[case[0] for case in BAD_OVERRIDES])
def test_bad_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, words: str) -> None:
    monkeypatch.chdir(tmp_path)
    problems = problems_of("quick", [override], folder=tmp_path)
    assert any(words in p for p in problems), problems


# ---------------------------------------------------------------------------------------------- mistakes


BAD_SPACES = [
    # (id, YAML text, line of the problem, words the message must contain)
    ("not-yaml", "fixed:\n  steps: 10\n params: [\n", 3, "not valid YAML"),
    ("tab-indent", "fixed:\n\tsteps: 10\n", 2, "not valid YAML"),
    ("two-documents", "fixed: {}\n---\nfixed: {}\n", 2, "not valid YAML"),
    ("top-level-list", "- fixed\n- params\n", 1, "the top level must be a mapping"),
    ("unknown-section", "fixed: {}\nparmas: {}\n", 2, "parmas: is not a known section; did you mean 'params'?"),
    ("section-not-mapping", "fixed: [1, 2]\n", 1, "fixed: must be a mapping"),
    ("duplicate-key", "fixed:\n  steps: 10\n  steps: 20\n", 3, "fixed.steps: given twice (first on line 2)"),
    ("multi-line-description", "description: |\n  one\n  two\n", 1, "description: must be one line"),
    ("unknown-fixed", "fixed:\n  stpes: 10\n", 2, "fixed.stpes: is not a Splice setting; did you mean 'steps'?"),
    ("fixed-string-number", "fixed:\n  lr: '0.1'\n", 2, "got the text '0.1'; remove the quotes"),
    ("fixed-bool-for-number", "fixed:\n  steps: true\n", 2, "must be a whole number, got true"),
    ("fixed-float-for-int", "fixed:\n  steps: 100.0\n", 2, "got 100.0; write 100"),
    ("fixed-invalid-value", "fixed:\n  blur_p: 2.0\n", 2, "fixed.blur_p: is a probability"),
    ("fixed-cross-field", "fixed:\n  vit_size: 512\n", 1, "fixed.vit_max_side: must be >= vit_size (512)"),
    ("unknown-vit", "fixed:\n  vit: dino_vitb9\n", 2, "unknown ViT preset 'dino_vitb9'; did you mean 'dino_vitb8'?"),
    ("missing-weights", "fixed:\n  vit_weights: nope.pth\n", 2, "weights file 'nope.pth' not found"),
    ("unknown-param", "params:\n  alfa: {type: float, low: 0.1, high: 0.2}\n", 2, "did you mean 'alpha'?"),
    (
        "fixed-and-sampled",
        "fixed: {alpha: 0.1}\nparams:\n  alpha: {type: float, low: 0.1, high: 0.2}\n",
        3,
        "params.alpha: is both fixed and sampled",
    ),
    ("param-not-mapping", "params:\n  alpha: 0.1\n", 2, "params.alpha: must be a mapping like"),
    ("param-no-type", "params:\n  alpha: {low: 0.1, high: 0.2}\n", 2, "params.alpha.type: is missing"),
    ("param-bad-type", "params:\n  alpha: {type: flaot, low: 0.1, high: 0.2}\n", 2, "did you mean 'float'?"),
    (
        "param-unknown-option",
        "params:\n  alpha: {type: float, low: 0.1, hihg: 0.2}\n",
        2,
        "params.alpha.hihg: is not an option of a float parameter; did you mean 'high'?",
    ),
    ("param-missing-high", "params:\n  alpha: {type: float, low: 0.1}\n", 2, "params.alpha.high: is missing"),
    (
        "low-above-high",
        "params:\n  alpha:\n    type: float\n    low: 0.5\n    high: 0.02\n",
        4,
        "params.alpha.low: low (0.5) must be below high (0.02)",
    ),
    ("low-equals-high", "params:\n  alpha: {type: float, low: 0.1, high: 0.1}\n", 2, "move it to fixed"),
    (
        "log-nonpositive",
        "params:\n  alpha: {type: float, low: 0.0, high: 0.5, log: true}\n",
        2,
        "must be > 0 when log: true",
    ),
    (
        "log-not-bool",
        "params:\n  alpha: {type: float, low: 0.1, high: 0.5, log: 'yes'}\n",
        2,
        "params.alpha.log: must be true or false",
    ),
    (
        "step-with-log",
        "params:\n  alpha: {type: float, low: 0.1, high: 0.5, log: true, step: 0.1}\n",
        2,
        "params.alpha.step: cannot be combined with log",
    ),
    (
        "step-not-multiple",
        "params:\n  alpha: {type: float, low: 0.1, high: 0.5, step: 0.3}\n",
        2,
        "is not a multiple of step 0.3",
    ),
    ("step-negative", "params:\n  alpha: {type: float, low: 0.1, high: 0.5, step: -0.1}\n", 2, "must be > 0"),
    (
        "string-bound",
        "params:\n  alpha: {type: float, low: low, high: 0.5}\n",
        2,
        "params.alpha.low: must be a number, got text 'low'",
    ),
    ("bool-bound", "params:\n  alpha: {type: float, low: false, high: 0.5}\n", 2, "must be a number, got false"),
    (
        "int-param-float-bounds",
        "params:\n  steps: {type: int, low: 10.5, high: 20}\n",
        2,
        "params.steps.low: must be a whole number, got 10.5",
    ),
    ("float-param-int-setting", "params:\n  steps: {type: float, low: 10, high: 20}\n", 2, "use type: int"),
    ("range-on-text-setting", "params:\n  vit: {type: int, low: 1, high: 2}\n", 2, "use type: categorical"),
    (
        "bound-invalid-value",
        "params:\n  flip_p: {type: float, low: 0.0, high: 1.5}\n",
        2,
        "params.flip_p.high: is a probability, must be in [0, 1], got 1.5",
    ),
    ("empty-categorical", "params:\n  vit_size: {type: categorical, choices: []}\n", 2, "has 0 choice(s)"),
    ("categorical-not-list", "params:\n  vit_size: {type: categorical, choices: 64}\n", 2, "must be a list"),
    (
        "categorical-duplicates",
        "params:\n  vit_size:\n    type: categorical\n    choices:\n      - 64\n      - 64\n",
        6,
        "params.vit_size.choices[1]: 64 is listed twice",
    ),
    (
        "categorical-bad-vit",
        "params:\n  vit: {type: categorical, choices: [dino_vits8, dino_vitx8]}\n",
        2,
        "unknown ViT preset 'dino_vitx8'",
    ),
    (
        "categorical-wrong-type",
        "params:\n  vit_size: {type: categorical, choices: [64, big]}\n",
        2,
        "params.vit_size.choices[1]: must be a whole number, got text 'big'",
    ),
    (
        "categorical-invalid-value",
        "params:\n  blur_p: {type: categorical, choices: [0.1, 3.0]}\n",
        2,
        "params.blur_p.choices[1]: is a probability",
    ),
    ("trials-zero", "budget:\n  trials_per_pair: 0\n", 2, "budget.trials_per_pair: must be a whole number >= 1"),
    ("trials-negative", "budget: {trials_per_pair: -2}\n", 1, "must be a whole number >= 1"),
    ("concurrent-zero", "budget:\n  max_concurrent: 0\n", 2, "budget.max_concurrent: must be a whole number >= 1"),
    ("unknown-budget-key", "budget:\n  trials: 3\n", 2, "budget.trials: is not a budget setting"),
    ("no-params-many-trials", "fixed: {steps: 10}\nbudget:\n  trials_per_pair: 4\n", 3, "nothing is sampled"),
    ("unknown-scheduler", "scheduler:\n  type: hyperband\n", 2, "scheduler.type: 'hyperband' is not known"),
    ("grace-zero", "scheduler:\n  grace_period: 0\n", 2, "scheduler.grace_period: must be a whole number >= 1"),
    ("reduction-one", "scheduler:\n  reduction_factor: 1\n", 2, "scheduler.reduction_factor: must be >= 2"),
    ("unknown-sampler", "sampler:\n  type: tpee\n", 2, "did you mean 'tpe'?"),
    ("unknown-metric", "objective:\n  metric: splice\n", 2, "did you mean 'splice_score'?"),
    ("mode-max", "objective:\n  mode: max\n", 2, "objective.mode: must be min"),
]


@pytest.mark.parametrize("text, line, words", [case[1:] for case in BAD_SPACES], ids=[case[0] for case in BAD_SPACES])
def test_bad_spaces_name_file_line_and_field(tmp_path: Path, text: str, line: int, words: str) -> None:
    if "params" not in text and "budget" not in text:
        text += "budget: {trials_per_pair: 1}\n"  # keep "nothing is sampled" out of unrelated cases
    path = write_space(tmp_path, text)
    problems = problems_of(path, folder=tmp_path)
    assert any(p.startswith(f"{path}:{line}: ") and words in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_space(
        tmp_path,
        "fixed:\n  stpes: 10\nparams:\n  flip_p: {type: float, low: 0.0, high: 1.5}\n"
        "budget:\n  trials_per_pair: 0\nsampler: {type: tpee}\n",
    )
    problems = problems_of(path, ["steps=abc"], folder=tmp_path)
    assert [p.split(": ")[0] for p in problems] == [
        f"{path}:2",
        "--set steps=abc",
        f"{path}:4",
        f"{path}:6",
        f"{path}:7",
    ]


@pytest.mark.parametrize("content, words", [("", "is empty"), (b"fixed:\n  vit: caf\xe9\n", "is not UTF-8")])
def test_unreadable_files(tmp_path: Path, content: str | bytes, words: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    assert words in problems_of(path, folder=tmp_path)[0]


def test_missing_and_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml")[0].startswith(f"{tmp_path / 'nope.yaml'}: no such file")
    (tmp_path / "dir.yaml").mkdir()
    assert "is a directory" in problems_of(tmp_path / "dir.yaml")[0]


def test_unknown_shipped_name() -> None:
    assert "did you mean 'quick'?" in problems_of("quik")[0]
    assert "shipped spaces are cpu_real, default, paper, quick" in problems_of("zzzzzz")[0]


def test_install_without_shipped_spaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice_tune.spaces.shipped, "SPACES_DIR", tmp_path / "missing")
    assert "pass the path of a .yaml file" in problems_of("quick")[0]


def test_search_space_is_frozen() -> None:
    space = load_space("quick")
    assert isinstance(space, SearchSpace)
    with pytest.raises(AttributeError):
        space.budget = Budget()


def test_no_params_reports_the_default_budget_once(tmp_path: Path) -> None:
    path = write_space(tmp_path, "fixed:\n  steps: 10\n")
    assert problems_of(path) == [
        f"{path}:1: budget.trials_per_pair: is 8 (the default) but nothing is sampled "
        f"(params is empty), so every trial would be the same run; set it to 1 or add params"
    ]
    path = write_space(tmp_path, "fixed:\n  steps: 10\nbudget:\n  trials_per_pair: 0\n")
    assert len(problems_of(path)) == 1  # the invalid value only, not also "nothing is sampled"


def test_installed_spaces_are_found_under_the_prefix(tmp_path: Path) -> None:
    """A wheel install has no search_spaces/ beside the package: PREFIX/share/splice-tune/search_spaces."""
    from splice_tune.spaces import shipped_spaces_dir

    repo, installed = (
        tmp_path / "repo" / "search_spaces",
        tmp_path / "prefix" / "share" / "splice-tune" / "search_spaces",
    )
    installed.mkdir(parents=True)
    assert shipped_spaces_dir(repo, [tmp_path / "elsewhere", tmp_path / "prefix"]) == installed
    repo.mkdir(parents=True)
    assert shipped_spaces_dir(repo, [tmp_path / "prefix"]) == repo  # a checkout's own folder comes first
    assert shipped_spaces_dir(tmp_path / "none", [tmp_path / "nowhere"]) == tmp_path / "none"


# ------------------------------------------------------------------------------ SpliceConfig.validate


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_config_accepts_device_spellings_without_checking_the_hardware(device: str) -> None:
    assert SpliceConfig(device=device).validate() == []


@pytest.mark.parametrize("device", ["foo", "gpu", "", "cuda:x", "CPU"])
def test_config_refuses_unknown_devices(device: str) -> None:
    [problem] = SpliceConfig(device=device).validate()
    assert problem.startswith(f"device: {device!r} is not a device")


def test_config_refuses_unknown_vit() -> None:
    [problem] = SpliceConfig(vit="dino_vitz99").validate()
    assert problem.startswith("vit: unknown ViT preset 'dino_vitz99'") and "random_tiny8" in problem


def test_device_problems_name_the_yaml_line_or_the_override(tmp_path: Path) -> None:
    assert problems_of("quick", ["device=foo"]) == [
        "--set device=foo: fixed.device: 'foo' is not a device; use auto, cpu, cuda, cuda:N (a GPU index) or mps"
    ]
    path = write_space(tmp_path, "fixed:\n  vit: random_tiny8\n  device: gpu\nbudget:\n  trials_per_pair: 1\n")
    assert problems_of(path, folder=tmp_path) == [
        f"{path}:3: fixed.device: 'gpu' is not a device; use auto, cpu, cuda, cuda:N (a GPU index) or mps"
    ]
    assert load_space("quick", ["device=cuda:3"]).fixed["device"] == "cuda:3"  # no GPU needed to plan it
    # An unknown ViT is reported once (by the space's own check, which suggests the closest name).
    [problem] = problems_of("quick", ["vit=random_tiny9"])
    assert "did you mean 'random_tiny8'?" in problem
