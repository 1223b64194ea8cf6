"""The U-Net generator renders any image size, matches the paper's architecture, and round-trips through
checkpoints that are safe to load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splice_model import CheckpointError, SpliceConfig, SpliceGenerator, load_checkpoint, render, save_checkpoint
from splice_model.images import to_tensor
from splice_model.rendering import CHECKPOINT_FORMAT


@pytest.fixture(scope="module")
def generator() -> SpliceGenerator:
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing other tests' global RNG
        torch.manual_seed(0)
        return SpliceGenerator()


# Odd sizes (not multiples of 32), a tiny one whose padding would reach a 1x1 bottleneck, square, and HD.
SIZES = [(37, 53), (33, 65), (224, 224), (31, 31), (5, 7), (1080, 1920)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_renders_any_size(generator, size):
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = generator(image)
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_output_depends_on_input(generator):
    """A generator that ignored its input (e.g. a broken skip/crop) would still pass the shape checks."""
    a, b = torch.rand(2, 1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(generator(a), generator(b))


def test_gradients_reach_every_parameter():
    """Every layer is trainable and connected to the output (no dead branch, e.g. an unused skip)."""
    model = SpliceGenerator()
    model(torch.rand(1, 3, 48, 48)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_layer_channels_follow_paper_a1(generator):
    """Encoder 3 -> 16 -> 32 -> 64 -> 128 -> 128 (paper A.1); decoder mirrors it; 1x1 conv to RGB."""
    channels = [16, 32, 64, 128, 128]
    convs = [[m for m in level.modules() if isinstance(m, nn.Conv2d)] for level in generator.down]
    assert [level[0].in_channels for level in convs] == [3, *channels[:-1]]
    assert [level[-1].out_channels for level in convs] == channels
    assert all(level[0].stride == (2, 2) and level[0].kernel_size == (3, 3) for level in convs)
    decoder_out = [[m for m in level.modules() if isinstance(m, nn.Conv2d)][-1].out_channels for level in generator.up]
    assert decoder_out == channels
    skips = [next(m for m in s.modules() if isinstance(m, nn.Conv2d)) for s in generator.skip]
    assert all(conv.kernel_size == (1, 1) for conv in skips)
    assert [conv.in_channels for conv in skips] == [3, *channels[:-1]]
    assert (generator.to_rgb.in_channels, generator.to_rgb.out_channels) == (16, 3)
    assert generator.to_rgb.kernel_size == (1, 1)


def _convs(generator: SpliceGenerator) -> list[nn.Conv2d]:
    return [m for m in generator.modules() if isinstance(m, nn.Conv2d)]


def test_parameter_count_is_the_released_generators(generator):
    assert sum(p.numel() for p in generator.parameters()) == 1_037_523


def test_conv_weights_start_at_the_released_init_scale(generator):
    """xavier_normal_(gain=0.02), zero bias: each conv's weight std within 1.5x of the released init's.
    PyTorch's default init (kaiming-uniform, a=sqrt(5)) is 7-35x larger and fails this."""
    for conv in _convs(generator):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        released_std = 0.02 * (2.0 / (fan_in + fan_out)) ** 0.5
        ratio = conv.weight.std().item() / released_std
        assert 1 / 1.5 < ratio < 1.5, (conv, ratio)
        assert torch.count_nonzero(conv.bias) == 0


def test_batchnorm_weights_start_near_one(generator):
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in norms])
    assert abs(weights.mean().item() - 1.0) < 0.005
    assert 0.01 < weights.std().item() < 0.03  # N(1, 0.02), not PyTorch's constant 1
    assert all(torch.count_nonzero(m.bias) == 0 for m in norms)


def test_convolutions_pad_with_zeros(generator):
    assert all(conv.padding_mode == "zeros" for conv in _convs(generator))
    assert all(conv.padding == (conv.kernel_size[0] // 2,) * 2 for conv in _convs(generator))


def test_first_output_is_flat_grey(generator):
    """The released generator's first picture is a flat grey (0.50 +- 0.005); a default-init one is
    coloured noise (channel means 0.47 / 0.67 / 0.55, std 0.12)."""
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = generator(image)
    assert (out.mean(dim=(0, 2, 3)) - 0.5).abs().max() < 0.005
    assert out.std() < 0.01  # ~0.005 here, 0.12 with the default init


def test_render_pil_and_path(generator, structure_image, image_paths):
    structure_path, _ = image_paths
    expected = generator(to_tensor(structure_image)[None])[0].detach()
    from_pil = render(generator, structure_image)
    from_path = render(generator, structure_path)
    width, height = structure_image.size
    assert from_pil.shape == (3, height, width)
    torch.testing.assert_close(from_pil, expected)
    torch.testing.assert_close(from_path, expected)  # PNG is lossless


def test_render_caps_long_side(generator, structure_image):
    out = render(generator, structure_image, max_side=36)
    assert out.shape == (3, 28, 36)  # 72x56 scaled by 0.5


def test_checkpoint_round_trip(tmp_path, generator):
    config = SpliceConfig(alpha=0.3, lr=1e-3, vit="random_tiny8", seed=7)
    path = save_checkpoint(tmp_path / "sub" / "gen.pt", generator, config, step=42, scores={"splice_score": 0.5})
    loaded, loaded_config, meta = load_checkpoint(path)
    image = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(loaded(image), generator(image))
    assert loaded_config == config
    assert meta == {"step": 42, "scores": {"splice_score": 0.5}}
    assert not loaded.training


class NotATensor:
    """Stands in for arbitrary pickled code: weights_only loading must refuse it."""


def test_checkpoint_with_custom_object_is_refused(tmp_path, generator):
    path = tmp_path / "evil.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "generator": generator.state_dict(),
            "config": SpliceConfig().to_dict(),
            "step": 1,
            "scores": {},
            "extra": NotATensor(),
        },
        path,
    )
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)  # a readable file, but not ours
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(other)


def test_widest_activation_is_the_largest_tensor_the_generator_makes():
    """Counted on the meta device (no memory): every module's inputs and outputs, the concatenations included."""
    from splice_model.generator import widest_activation

    with torch.device("meta"):
        model = SpliceGenerator()
    sizes = []
    for module in model.modules():
        module.register_forward_pre_hook(lambda m, args: sizes.extend(a.numel() for a in args))
        module.register_forward_hook(lambda m, args, out: sizes.append(out.numel()))
    for height, width in [(100, 70), (1080, 1920), (31, 31)]:
        sizes.clear()
        model(torch.empty(1, 3, height, width, device="meta"))
        assert max(sizes) == widest_activation(height, width), (height, width)


def test_renders_too_large_for_cuda_kernels_go_to_the_cpu():
    """CUDA's pad and conv kernels index with 32 bits: a ~60 MP render (36 channels x H x W >= 2**31) goes
    to the CPU instead of failing after the training."""
    from splice_model.rendering import render_device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert render_device(cuda, 7000, 7000) == cuda  # 36 x 7008 x 7008 = 1.77e9 elements
    assert render_device(cuda, 6000, 10000) == cpu  # 36 x 6016 x 10016 = 2.17e9
    assert render_device(cpu, 20000, 20000) == cpu
