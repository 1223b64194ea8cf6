"""The training loop: it learns, it is reproducible, it spends exactly the ViT passes it should, its scores
mean what docs/design.md says, and it stops/raises/evaluates when a caller relies on it.

All with the random_tiny8 ViT (NOT DINO) on tiny images (see conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from splice_model import (
    EvalEvent,
    NearDuplicatePairError,
    NonFiniteLossError,
    PairScorer,
    SpliceTrainer,
    StepEvent,
    build_vit,
    load_features,
    train_pair,
)
from splice_model.images import as_image_tensor


@pytest.fixture
def trainer(structure_image, appearance_image, tiny_config) -> SpliceTrainer:
    return SpliceTrainer(structure_image, appearance_image, tiny_config)


def test_loss_decreases(structure_image, appearance_image, tiny_config):
    """A few dozen steps must make progress on a real pair: lower losses and a better splice_score."""
    config = tiny_config.replace(steps=30, eval_every=10, full_image_every=1000)  # full image only at step 0
    totals, evals = [], []

    def record(event):
        if isinstance(event, StepEvent):
            totals.append(event.losses["loss/total"])
        else:
            evals.append(event.scores["splice_score"])

    train_pair(structure_image, appearance_image, config, callback=record)
    regular = totals[1:]  # step 0 also carries the full-image terms
    assert sum(regular[-5:]) / 5 < 0.7 * sum(regular[:5]) / 5, totals
    assert evals[-1] < evals[0], evals


# --- scores -------------------------------------------------------------------------------------------


@pytest.fixture
def features(tiny_config):
    return load_features(tiny_config)


def tensors(config, *images):
    return [as_image_tensor(image, config.max_side) for image in images]


def test_structure_image_scores_zero_structure_and_one_splice(features, tiny_config, structure_image, appearance_image):
    """Copying the structure image is a trivial output: perfect structure, appearance = baseline -> 1.0."""
    structure, appearance = tensors(tiny_config, structure_image, appearance_image)
    scorer = PairScorer(features, structure, appearance, tiny_config.vit_size, tiny_config.vit_max_side)
    scores = scorer.score(structure)
    assert scores["structure_score"] < 1e-7
    assert scores["appearance_score"] == pytest.approx(scorer.baselines["appearance_base"], rel=1e-5)
    assert scores["splice_score"] == pytest.approx(1.0, abs=1e-5)


def test_appearance_image_scores_one_splice(features, tiny_config, structure_image, appearance_image_structure_size):
    """Copying the appearance image (same size as the structure image) is the other trivial output -> 1.0."""
    structure, appearance = tensors(tiny_config, structure_image, appearance_image_structure_size)
    scorer = PairScorer(features, structure, appearance, tiny_config.vit_size, tiny_config.vit_max_side)
    scorer.check_baselines()  # two different images: no error
    scores = scorer.score(appearance)
    assert scores["appearance_score"] < 1e-6
    assert scores["structure_score"] == pytest.approx(scorer.baselines["structure_base"], rel=1e-5)
    assert scores["splice_score"] == pytest.approx(1.0, abs=1e-5)


def test_same_image_twice_is_refused(features, tiny_config, structure_image):
    (structure,) = tensors(tiny_config, structure_image)
    scorer = PairScorer(features, structure, structure.clone(), tiny_config.vit_size, tiny_config.vit_max_side)
    with pytest.raises(NearDuplicatePairError, match="cows"):
        scorer.check_baselines("cows")


# --- gradients and ViT passes ---------------------------------------------------------------------------


def test_gradients_reach_only_the_generator(trainer):
    trainer.train_step()
    assert all(p.grad is not None for p in trainer.generator.parameters())
    vit_params = list(trainer.features.parameters())
    assert vit_params and all(p.grad is None and not p.requires_grad for p in vit_params)


def test_vit_forward_passes_per_phase(structure_image, appearance_image, tiny_config):
    """The cost model of docs/design.md ("ViT pass budget"): setup 2 no-grad passes; a regular step 1 no-grad
    (targets) + 1 with grad (outputs), both batches of 2; a full-image step one more grad pass; an eval 1 no-grad
    pass."""
    features = build_vit(tiny_config.vit)  # own instance: the hook must not leak into the shared cache
    calls = []
    features.register_forward_pre_hook(lambda module, args: calls.append((torch.is_grad_enabled(), len(args[0]))))

    trainer = SpliceTrainer(structure_image, appearance_image, tiny_config.replace(full_image_every=2), features)
    assert [grad for grad, _ in calls] == [False, False]

    def phase(run):
        calls.clear()
        run()
        return sorted(calls)

    assert trainer.step % 2 == 0
    assert phase(trainer.train_step) == [(False, 2), (True, 1), (True, 2)]  # step 0: full-image step
    assert phase(trainer.train_step) == [(False, 2), (True, 2)]  # step 1: regular
    assert phase(trainer.evaluate) == [(False, 1)]


def test_full_image_terms_only_on_full_image_steps(trainer):
    every = trainer.config.full_image_every
    for step in range(every + 1):
        has_full = "loss/full_structure" in trainer.train_step()
        assert has_full == (step % every == 0), step


# --- determinism -------------------------------------------------------------------------------------------


def run(structure_image, appearance_image, config):
    result = train_pair(structure_image, appearance_image, config)
    return result.generator.state_dict(), result.scores, result.evaluations


def test_same_seed_is_bit_identical_other_seed_differs(structure_image, appearance_image, tiny_config):
    config = tiny_config.replace(steps=6, eval_every=3, full_image_every=4)
    weights_a, scores_a, evals_a = run(structure_image, appearance_image, config)
    weights_b, scores_b, evals_b = run(structure_image, appearance_image, config)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert scores_a == scores_b and evals_a == evals_b

    weights_c, scores_c, _ = run(structure_image, appearance_image, config.replace(seed=1))
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    assert scores_a != scores_c


def event_log(trainer: SpliceTrainer) -> list[tuple]:
    return [
        (type(event).__name__, event.step, getattr(event, "losses", None) or getattr(event, "scores", None))
        for event in trainer.events()
    ]


def test_lagged_readout_gives_the_same_events_in_the_same_order(structure_image, appearance_image, tiny_config):
    """Reading a step's losses once the next step is queued (the CUDA default: no host sync per step) changes
    neither the values nor the order: each EvalEvent still follows its own step's StepEvent."""
    config = tiny_config.replace(steps=7, eval_every=3, full_image_every=4)
    synced = event_log(SpliceTrainer(structure_image, appearance_image, config, lagged_readout=False))
    lagged = event_log(SpliceTrainer(structure_image, appearance_image, config, lagged_readout=True))
    assert lagged == synced
    assert [(kind, step) for kind, step, _ in synced if kind == "EvalEvent"] == [("EvalEvent", s) for s in (3, 6, 7)]


def test_lagged_readout_still_stops_a_diverging_run_at_its_step(
    monkeypatch, structure_image, appearance_image, tiny_config
):
    calls = iter(range(100))
    from splice_model.losses import structure_loss as real

    monkeypatch.setattr(
        "splice_model.train.structure_loss",
        lambda output, target: real(output, target) * (float("nan") if next(calls) == 3 else 1.0),
    )
    trainer = SpliceTrainer(
        structure_image, appearance_image, tiny_config.replace(full_image_every=100), lagged_readout=True
    )
    seen = []
    with pytest.raises(NonFiniteLossError) as error:
        for event in trainer.events():
            seen.append(event.step)
    assert error.value.step == 3 and seen == [1, 2]  # calls 0, 1: step 1 (a full-image step); 3: step 3


# --- control flow: stopping, divergence, evaluation cadence ------------------------------------------------


def test_callback_stops_at_an_eval(structure_image, appearance_image, tiny_config):
    seen = []

    def stop_at_first_eval(event):
        seen.append(event)
        return isinstance(event, EvalEvent)

    result = train_pair(structure_image, appearance_image, tiny_config, callback=stop_at_first_eval)
    assert result.stopped
    assert result.steps_done == tiny_config.eval_every < tiny_config.steps
    assert isinstance(seen[-1], EvalEvent) and len(seen) == tiny_config.eval_every + 1
    assert result.scores == seen[-1].scores  # the reported result is the one evaluated at the stop


def test_callback_stops_between_evals(structure_image, appearance_image, tiny_config):
    """Stopped on a plain step: the result is evaluated at the weights it stopped with."""
    result = train_pair(
        structure_image,
        appearance_image,
        tiny_config,
        callback=lambda event: isinstance(event, StepEvent) and event.step == 3,
    )
    assert result.stopped and result.steps_done == 3
    assert set(result.scores) == {"structure_score", "appearance_score", "splice_score"}
    assert result.output.shape == (3, 50, 64)


def test_non_finite_loss_raises_and_keeps_weights(monkeypatch, trainer):
    """A diverging run (e.g. too high lr) fails loudly instead of training on NaN, before touching weights."""
    monkeypatch.setattr("splice_model.train.structure_loss", lambda output, target: output.sum() * float("nan"))
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train_step()
    assert error.value.step == 1 and "nan" in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in trainer.generator.state_dict().items())


def test_non_finite_loss_surfaces_from_train_pair(monkeypatch, structure_image, appearance_image, tiny_config):
    monkeypatch.setattr("splice_model.train.appearance_loss", lambda output, target: output.sum() * float("inf"))
    with pytest.raises(NonFiniteLossError):
        train_pair(structure_image, appearance_image, tiny_config)


@pytest.mark.parametrize("steps, eval_every, expected", [(12, 5, [5, 10, 12]), (4, 2, [2, 4])])
def test_eval_cadence_and_output_shape(structure_image, appearance_image, tiny_config, steps, eval_every, expected):
    """Evals every eval_every steps plus the last step (once, even when it is a multiple); outputs have the
    structure image's size after the max_side cap (72x56 -> 64x50)."""
    events = []
    result = train_pair(
        structure_image,
        appearance_image,
        tiny_config.replace(steps=steps, eval_every=eval_every),
        callback=events.append,
    )
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [e.step for e in evals] == expected
    assert [e.final for e in evals] == [False] * (len(expected) - 1) + [True]
    assert [e.step for e in events if isinstance(e, StepEvent)] == list(range(1, steps + 1))
    for event in evals:
        assert event.output.shape == (3, 50, 64)
        assert event.output.min() >= 0 and event.output.max() <= 1
    assert not result.stopped and result.steps_done == steps
    assert [e["step"] for e in result.evaluations] == expected
    assert result.scores == evals[-1].scores


# --- precision ----------------------------------------------------------------------------------------


def _linear_input_dtypes(trainer: SpliceTrainer) -> set[torch.dtype]:
    """The dtypes the ViT's first linear layer computes in during one training step."""
    seen = set()
    handle = trainer.features.model.blocks[0].attn.qkv.register_forward_hook(
        lambda module, inputs, output: seen.add(output.dtype)
    )
    trainer.train_step()
    handle.remove()
    return seen


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_amp_auto_follows_the_device(monkeypatch, structure_image, appearance_image, tiny_config, native):
    """amp="auto" trains in bf16 exactly where the device computes bf16 natively, in fp32 elsewhere."""
    import splice_model.train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    trainer = SpliceTrainer(structure_image, appearance_image, tiny_config.replace(amp="auto"))
    assert _linear_input_dtypes(trainer) == {torch.bfloat16 if native else torch.float32}


def test_amp_false_is_exact_fp32_and_true_forces_bf16(monkeypatch, structure_image, appearance_image, tiny_config):
    import splice_model.train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)
    exact = SpliceTrainer(structure_image, appearance_image, tiny_config.replace(amp=False))
    assert _linear_input_dtypes(exact) == {torch.float32}
    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    forced = SpliceTrainer(structure_image, appearance_image, tiny_config.replace(amp=True))
    assert _linear_input_dtypes(forced) == {torch.bfloat16}
    # Scores and losses leave the trainer as fp32 numbers either way.
    scores, output = forced.evaluate()
    assert output.dtype == torch.float32 and all(isinstance(v, float) for v in scores.values())


@pytest.mark.parametrize(
    "amp, problem", [("auto", None), (True, None), (False, None), ("bf16", "amp: must be"), (1, "amp: must be")]
)
def test_amp_values(tiny_config, amp, problem):
    problems = tiny_config.replace(amp=amp).validate()
    assert (problems == []) if problem is None else problems[0].startswith(problem)
