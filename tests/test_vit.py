"""The ViT feature extractor must give DINO's features from DINO's checkpoints.

The reference below is written from scratch from DINO's `vision_transformer.py` (plain torch, no timm), so
a mismatch in weight loading, normalisation, positional-embedding interpolation, attention or the choice of
features (CLS before the final norm, last block's keys incl. CLS) shows up as a numeric difference.
"""

from __future__ import annotations

import argparse
import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from splice_model.config import SpliceConfig
from splice_model.vit import VIT_PRESETS, VitPreset, WeightsError, build_vit, vit_input_size, vit_resize

# A small architecture registered as a preset for these tests only (cheap to build and to run).
TEST_PRESET = "test_dino_tiny"
EMBED, DEPTH, HEADS, PATCH = 64, 2, 4, 8
GRID = 224 // PATCH  # DINO checkpoints store a 224/p x 224/p positional grid


@pytest.fixture
def test_preset(monkeypatch) -> str:
    monkeypatch.setitem(VIT_PRESETS, TEST_PRESET, VitPreset(EMBED, DEPTH, HEADS, PATCH, url=None))
    return TEST_PRESET


def random_dino_state(
    seed: int = 0, embed: int = EMBED, depth: int = DEPTH, patch: int = PATCH, dinov2: bool = False, registers: int = 0
) -> dict:
    """A state dict with DINO's key names and shapes, random values large enough that every part matters
    (e.g. a strongly varying positional embedding makes any interpolation difference visible).

    `dinov2`: DINOv2's layout instead: the 518-px grid, LayerScale gammas, `mask_token`, and `registers`
    register tokens (`register_tokens`), as in Meta's `dinov2_vit*14[_reg4]_pretrain.pth`."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=gen)

    grid = (518 if dinov2 else 224) // patch
    state = {
        "cls_token": rand(1, 1, embed, scale=0.5),
        "pos_embed": rand(1, 1 + grid**2, embed, scale=0.5),
        "patch_embed.proj.weight": rand(embed, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rand(embed),
        "norm.weight": rand(embed, offset=1.0),
        "norm.bias": rand(embed),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state.update(
            {
                b + "norm1.weight": rand(embed, offset=1.0),
                b + "norm1.bias": rand(embed),
                b + "attn.qkv.weight": rand(3 * embed, embed, scale=0.2),
                b + "attn.qkv.bias": rand(3 * embed),
                b + "attn.proj.weight": rand(embed, embed),
                b + "attn.proj.bias": rand(embed),
                b + "norm2.weight": rand(embed, offset=1.0),
                b + "norm2.bias": rand(embed),
                b + "mlp.fc1.weight": rand(4 * embed, embed),
                b + "mlp.fc1.bias": rand(4 * embed),
                b + "mlp.fc2.weight": rand(embed, 4 * embed),
                b + "mlp.fc2.bias": rand(embed),
            }
        )
        if dinov2:
            state.update(
                {b + "ls1.gamma": rand(embed, scale=0.5, offset=1.0), b + "ls2.gamma": rand(embed, offset=0.5)}
            )
    if dinov2:
        state["mask_token"] = rand(1, embed)  # only DINOv2's masked pretraining uses it
    if registers:
        state["register_tokens"] = rand(1, registers, embed, scale=0.5)
    return state


def dino_reference(state: dict, images: torch.Tensor, patch: int, heads: int) -> dict:
    """DINO's ViT forward, written out: returns the last block's cls (pre-norm), keys and selfsim.

    With DINOv2 keys in `state`: LayerScale scales each residual branch, and register tokens go in after CLS
    once the position embeddings are added (DINOv2's `prepare_tokens_with_masks`); they are left out of the
    keys (not image patches)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images - mean) / std
    B, nc, w, h = x.shape  # DINO's names: its "w" is dim 2
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(B, -1, -1), x], dim=1)

    # DINO's VisionTransformer.interpolate_pos_encoding(x, w, h), verbatim in behaviour
    pos_embed = state["pos_embed"]
    npatch, N = x.shape[1] - 1, pos_embed.shape[1] - 1
    if npatch == N and w == h:
        pos = pos_embed
    else:
        dim = x.shape[-1]
        w0, h0 = w // patch + 0.1, h // patch + 0.1
        grid = pos_embed[:, 1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
        pos = torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    x = x + pos
    registers = state.get("register_tokens")
    if registers is not None:
        x = torch.cat([x[:, :1], registers.expand(B, -1, -1), x[:, 1:]], dim=1)

    d = x.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        y = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        T = y.shape[1]
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(B, T, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
        ls1, ls2 = state.get(f"blocks.{i}.ls1.gamma", 1.0), state.get(f"blocks.{i}.ls2.gamma", 1.0)
        x = x + ls1 * F.linear((attn @ v).transpose(1, 2).reshape(B, T, d), p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(x, (d,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        x = x + ls2 * F.linear(
            F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias")
        )
        keys = k.transpose(1, 2).reshape(B, T, d)  # heads concatenated, CLS included
    if registers is not None:
        keys = torch.cat([keys[:, :1], keys[:, 1 + registers.shape[1] :]], dim=1)
    unit = F.normalize(keys, dim=-1)
    return {"cls": x[:, 0], "keys": keys, "selfsim": unit @ unit.transpose(1, 2)}


def assert_features_match(features, state, images):
    with torch.no_grad():
        got = features(images)
        want = dino_reference(state, images, PATCH, HEADS)
    for name in ("cls", "keys", "selfsim"):
        assert got[name].shape == want[name].shape, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def dino_checkpoint(tmp_path):
    state = random_dino_state()
    path = tmp_path / "dino_plain.pth"
    torch.save(state, path)
    return path, state


# (H, W): square (no interpolation), wide and tall (interpolation), and 224x230: same 28x28 patch grid as
# the checkpoint but non-square pixels, where DINO still interpolates and its conv drops the 6 extra columns.
SIZES = [(224, 224), (224, 304), (160, 224), (224, 230)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_features_match_dino_reference(test_preset, dino_checkpoint, size):
    path, state = dino_checkpoint
    features = build_vit(test_preset, weights=path)
    batch = 2 if size == (160, 224) else 1  # one batched case checks nothing mixes across the batch
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    assert_features_match(features, state, images)


def test_interpolation_is_exercised(dino_checkpoint):
    """Guard for the test above: on non-square inputs DINO's interpolation differs from plain resizing to
    the grid size, so a wrong interpolation could not pass by accident."""
    _, state = dino_checkpoint
    pos = state["pos_embed"][:, 1:].reshape(1, GRID, GRID, EMBED).permute(0, 3, 1, 2)
    dino = F.interpolate(pos, scale_factor=(28.1 / GRID, 38.1 / GRID), mode="bicubic")
    by_size = F.interpolate(pos, size=(28, 38), mode="bicubic")
    assert dino.shape == by_size.shape
    assert (dino - by_size).abs().max() > 1e-3


@pytest.mark.parametrize("wrapper", ["teacher", "student"])
def test_dino_training_checkpoint_loads(tmp_path, test_preset, dino_checkpoint, wrapper):
    """DINO's training checkpoint.pth keeps the backbone under teacher (backbone.*) or student
    (module.backbone.*, DDP), next to its projection head, optimizer state and argparse args."""
    _, state = dino_checkpoint
    prefix = "backbone." if wrapper == "teacher" else "module.backbone."
    network = {prefix + k: v for k, v in state.items()}
    network[prefix.replace("backbone.", "head.") + "last_layer.weight"] = torch.zeros(8, EMBED)
    path = tmp_path / f"checkpoint_{wrapper}.pth"
    torch.save(
        {
            wrapper: network,
            "epoch": 100,
            "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(arch="vit_tiny", patch_size=PATCH, lr=5e-4),
        },
        path,
    )
    features = build_vit(test_preset, weights=path)
    assert_features_match(features, state, torch.rand(1, 3, 224, 304, generator=torch.Generator().manual_seed(2)))


def test_wrong_architecture_checkpoint_names_the_file(tmp_path, test_preset):
    path = tmp_path / "vits16_like.pth"
    torch.save(random_dino_state(embed=32, depth=3, patch=16), path)
    with pytest.raises(WeightsError, match="vits16_like.pth") as error:
        build_vit(test_preset, weights=path)
    assert "does not match" in str(error.value)


def test_missing_weights_file(tmp_path, test_preset):
    with pytest.raises(WeightsError, match="nope.pth"):
        build_vit(test_preset, weights=tmp_path / "nope.pth")


def test_corrupt_weights_file(tmp_path, test_preset):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt.pth"):
        build_vit(test_preset, weights=path)


URL = "https://dl.fbaipublicfiles.com/dino/test_dino_tiny/test_dino_tiny_pretrain.pth"


@pytest.fixture
def hub_preset(monkeypatch, tmp_path):
    """A preset with an official-looking URL and torch hub pointed at an empty temp folder."""
    monkeypatch.setitem(VIT_PRESETS, "test_hub", VitPreset(EMBED, DEPTH, HEADS, PATCH, url=URL))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return "test_hub"


def test_offline_uncached_preset_says_pass_vit_weights(monkeypatch, hub_preset):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match="--vit-weights") as error:
        build_vit(hub_preset)
    assert URL in str(error.value)  # the user needs to know what to download


def test_cached_hub_checkpoint_is_used_without_download(monkeypatch, tmp_path, hub_preset):
    state = random_dino_state(seed=3)
    cached = tmp_path / "hub" / "checkpoints" / URL.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)

    def must_not_download(*args, **kwargs):
        raise AssertionError("a cached checkpoint must not be downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", must_not_download)
    assert_features_match(build_vit(hub_preset), state, torch.rand(1, 3, 160, 224))


def test_first_download_into_fresh_hub_dir(monkeypatch, tmp_path, hub_preset):
    """On a new machine torch hub's checkpoints/ folder does not exist yet; the download must still land."""
    state = random_dino_state(seed=4)
    source = tmp_path / "server.pth"
    torch.save(state, source)

    def fake_download(url, dst, *args, **kwargs):
        assert url == URL
        with open(dst, "wb") as file:  # like torch's, this fails when the folder is missing
            file.write(source.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert_features_match(build_vit(hub_preset), state, torch.rand(1, 3, 224, 224))


def test_vit_is_frozen_and_stays_in_eval_mode(test_preset):
    features = build_vit(test_preset)
    assert all(not p.requires_grad for p in features.parameters())
    features.train()  # e.g. called through a parent module's .train()
    assert not features.training
    assert all(not m.training for m in features.modules())


def test_gradients_flow_to_the_input_only(test_preset):
    """The generator is trained through the ViT: the input gets a gradient, the ViT's weights none."""
    features = build_vit(test_preset)
    images = torch.rand(1, 3, 224, 224, requires_grad=True)
    out = features(images)
    (out["cls"].sum() + out["selfsim"].sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in features.parameters())


def test_random_preset_is_seeded():
    """Offline demos and tests rely on random_tiny8 being the same network in every process."""
    a, b = build_vit("random_tiny8"), build_vit("random_tiny8")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_random_preset_loads_a_matching_checkpoint(tmp_path):
    """random_tiny8 goes through the same loading path as DINO presets (96-d, 4 blocks, 3 heads, p8)."""
    state = random_dino_state(seed=5, embed=96, depth=4, patch=8)
    torch.save(state, tmp_path / "tiny8.pth")
    features = build_vit("random_tiny8", weights=tmp_path / "tiny8.pth")
    images = torch.rand(1, 3, 64, 88)
    with torch.no_grad():
        got, want = features(images), dino_reference(state, images, patch=8, heads=3)
    torch.testing.assert_close(got["selfsim"], want["selfsim"], rtol=1e-4, atol=1e-5)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="random_tiny8"):
        build_vit("dino_vitz99")


@pytest.mark.parametrize(
    "size, expected",
    [
        ((300, 400), (224, 298)),  # short side -> 224; the long side is truncated like torchvision (298.67 -> 298)
        ((400, 300), (298, 224)),
        ((100, 1000), (48, 480)),  # the long side cap wins: 224 x 2240 would not fit 480
        ((1000, 100), (480, 48)),
        ((1080, 1920), (224, 398)),
    ],
)
def test_vit_resize_short_side_and_long_cap(size, expected):
    out = vit_resize(torch.rand(1, 3, *size), 224, 480)
    assert tuple(out.shape[-2:]) == expected


@pytest.mark.parametrize(
    "size",
    [
        (295, 400),
        (400, 295),
        (100, 1000),
        (1000, 100),
        (224, 230),
        (230, 224),
        (37, 53),
        (53, 37),
        (480, 640),
        (1080, 1920),
        (1920, 1080),
        (224, 224),
        (50, 64),
        (7, 3000),
        (3000, 7),
        (333, 333),
    ],
)
def test_vit_resize_matches_torchvision_resize_224_max_480(size):
    """The released Splice code resizes with torchvision's Resize(224, max_size=480): same output size."""
    from torchvision.transforms import Resize
    from torchvision.transforms.functional import _compute_resized_output_size

    assert vit_input_size(*size, 224, 480) == tuple(_compute_resized_output_size(size, [224], 480))
    image = torch.rand(1, 3, *size)
    assert vit_resize(image, 224, 480).shape == Resize(224, max_size=480, antialias=True)(image).shape


@pytest.mark.parametrize(
    "size",
    [(256, 256), (300, 400), (400, 300), (100, 1000), (1000, 100), (1080, 1920), (50, 64)],
    ids=lambda size: f"{size[0]}x{size[1]}",
)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "single"])
def test_vit_resize_values_equal_torchvision_resize(size, batched):
    """The default filter reproduces the released code's `Resize(224, max_size=480)` on tensors (bilinear,
    antialiased) value for value, for square, landscape, portrait and long-side-capped inputs; gradients flow."""
    from torchvision.transforms import Resize

    generator = torch.Generator().manual_seed(sum(size))
    image = torch.rand(2, 3, *size, generator=generator) if batched else torch.rand(3, *size, generator=generator)
    image.requires_grad_(True)
    expected = Resize(224, max_size=480)(image.detach())
    ours = vit_resize(image if batched else image[None], 224, 480)
    ours = ours if batched else ours[0]
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-6
    ours.square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_vit_resize_bicubic_is_a_setting():
    """bicubic (the paper's text) stays available and differs from the default filter."""
    image = torch.rand(1, 3, 300, 400, generator=torch.Generator().manual_seed(0))
    bicubic = vit_resize(image, 224, 480, resample="bicubic")
    expected = F.interpolate(image, size=(224, 298), mode="bicubic", antialias=True)
    assert torch.equal(bicubic, expected)
    assert (bicubic - vit_resize(image, 224, 480)).abs().max() > 1e-3


def test_vit_resample_setting_reaches_the_features(tiny_config, structure_image, appearance_image):
    """SpliceConfig.vit_resample changes what the trainer's ViT sees (targets and baselines alike)."""
    from splice_model import SpliceTrainer

    config = tiny_config.replace(amp=False)
    bilinear = SpliceTrainer(structure_image, appearance_image, config)
    bicubic = SpliceTrainer(structure_image, appearance_image, config.replace(vit_resample="bicubic"))
    assert bilinear.scorer.vit_resample == "bilinear" and bicubic.scorer.vit_resample == "bicubic"
    assert bilinear.baselines != bicubic.baselines
    assert SpliceConfig(vit_resample="lanczos").validate() == [
        "vit_resample: must be one of bilinear, bicubic, got 'lanczos'"
    ]


def test_vit_resize_keeps_right_size_and_is_differentiable():
    image = torch.rand(1, 3, 224, 224)
    assert vit_resize(image, 224, 480) is image
    small = torch.rand(1, 3, 50, 64, requires_grad=True)
    vit_resize(small, 224, 480).sum().backward()
    assert small.grad is not None and small.grad.abs().sum() > 0


def test_features_on_vit_resized_odd_sizes():
    """vit_resize's long side is rarely a multiple of the patch size (e.g. 50x64 -> 224x286): the ViT must
    take it like DINO (the conv drops the remainder) instead of raising."""
    features = build_vit("random_tiny8")
    with torch.no_grad():
        out = features(vit_resize(torch.rand(1, 3, 50, 64), 224, 480))
    assert out["keys"].shape == (1, 1 + 28 * (286 // 8), 96)


def test_not_dino_note_only_for_random_presets():
    from splice_model.vit import not_dino_note

    assert "NOT DINO" in not_dino_note("random_tiny8")
    assert all(not_dino_note(name) is None for name, preset in VIT_PRESETS.items() if preset.url is not None)
    assert not_dino_note("no_such_preset") is None


def test_selfsim_is_fp32_under_bf16_autocast(test_preset):
    """Autocast runs matmuls in bf16 whatever their inputs: the self-similarity that the structure loss and
    scores compare must still be the fp32 cosine similarity of the (fp32) keys."""
    features = build_vit(test_preset)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = features(images)
    unit = F.normalize(got["keys"], dim=-1)
    assert got["selfsim"].dtype == torch.float32
    torch.testing.assert_close(got["selfsim"], unit @ unit.transpose(1, 2), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- DINOv2
V2_PRESET = "test_dinov2_tiny"


@pytest.mark.parametrize("registers", [0, 4], ids=["plain", "reg4"])
@pytest.mark.parametrize("size", [(224, 224), (518, 518), (224, 308), (182, 140)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_dinov2_features_match_reference(monkeypatch, tmp_path, registers, size):
    """A checkpoint in Meta's DINOv2 layout (mask_token included) gives DINOv2's features: LayerScale, the
    37 x 37 grid interpolated by DINO's rule, and registers that take part in attention but not in the keys."""
    preset = VitPreset(EMBED, DEPTH, HEADS, 14, url=None, img_size=518, layer_scale=True, register_tokens=registers)
    monkeypatch.setitem(VIT_PRESETS, V2_PRESET, preset)
    state = random_dino_state(seed=5, patch=14, dinov2=True, registers=registers)
    torch.save(state, tmp_path / "dinov2.pth")
    features = build_vit(V2_PRESET, tmp_path / "dinov2.pth")
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = features(images), dino_reference(state, images, 14, HEADS)
    grid = (size[0] // 14) * (size[1] // 14)
    assert got["keys"].shape == (2, 1 + grid, EMBED)  # CLS and the patches: no registers
    for name in ("cls", "keys", "selfsim"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_registers_change_the_features(monkeypatch, tmp_path):
    """The registers are really in the forward pass (a loader that dropped them would still match shapes)."""
    monkeypatch.setitem(VIT_PRESETS, V2_PRESET, VitPreset(EMBED, DEPTH, HEADS, 14, None, 0, "", 518, True, 4))
    state = random_dino_state(seed=6, patch=14, dinov2=True, registers=4)
    torch.save(state, tmp_path / "a.pth")
    torch.save({**state, "register_tokens": -state["register_tokens"]}, tmp_path / "b.pth")
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a, b = (build_vit(V2_PRESET, tmp_path / name)(images)["cls"] for name in ("a.pth", "b.pth"))
    assert (a - b).abs().max() > 1e-3


def official_dinov2_shapes(embed: int, depth: int, registers: int) -> dict[str, tuple]:
    """Key names and shapes of Meta's `dinov2_vit*14[_reg4]_pretrain.pth` (without mask_token)."""
    shapes = {
        "cls_token": (1, 1, embed),
        "pos_embed": (1, 1 + 37 * 37, embed),
        "patch_embed.proj.weight": (embed, 3, 14, 14),
        "patch_embed.proj.bias": (embed,),
        "norm.weight": (embed,),
        "norm.bias": (embed,),
    }
    if registers:
        shapes["register_tokens"] = (1, registers, embed)
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes.update({b + norm + ".weight": (embed,), b + norm + ".bias": (embed,)})
        shapes.update(
            {
                b + "attn.qkv.weight": (3 * embed, embed),
                b + "attn.qkv.bias": (3 * embed,),
                b + "attn.proj.weight": (embed, embed),
                b + "attn.proj.bias": (embed,),
                b + "ls1.gamma": (embed,),
                b + "mlp.fc1.weight": (4 * embed, embed),
                b + "mlp.fc1.bias": (4 * embed,),
                b + "mlp.fc2.weight": (embed, 4 * embed),
                b + "mlp.fc2.bias": (embed,),
                b + "ls2.gamma": (embed,),
            }
        )
    return shapes


DINOV2 = {"s": (384, 12), "b": (768, 12), "l": (1024, 24)}  # width, depth


@pytest.mark.parametrize("name", [n for n in VIT_PRESETS if n.startswith("dinov2_")])
def test_dinov2_presets_have_the_official_layout_and_url(name):
    """Each preset's network has exactly the official checkpoint's keys and shapes (built on the meta
    device: ViT-L costs nothing) and points at its file in DINOv2's download folder."""
    from splice_model.vit import vit_architecture

    size, registers = name[len("dinov2_vit")], 4 if name.endswith("_reg") else 0
    embed, depth = DINOV2[size]
    preset = VIT_PRESETS[name]
    with torch.device("meta"):
        model = vit_architecture(preset)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_dinov2_shapes(embed, depth, registers)
    arch = f"dinov2_vit{size}14"
    assert (
        preset.url == f"https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{'_reg4' if registers else ''}_pretrain.pth"
    )


@pytest.mark.real_vit
def test_real_dinov2_file_matches_timms_construction(real_vit_weights, real_vit):
    """timm's own `vit_small_patch14_dinov2`, loaded with the same file through timm's checkpoint filter,
    gives the same last-block CLS token and keys on a square 518-px input."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).eval()
    state = torch.load(real_vit_weights, map_location="cpu", weights_only=True)
    reference.load_state_dict(checkpoint_filter_fn(state, reference))
    kept = {}
    reference.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, out: kept.update(keys=out[..., 384:768]))
    images = torch.rand(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = real_vit(images)
        tokens = reference.blocks(reference._pos_embed(reference.patch_embed((images - real_vit.mean) / real_vit.std)))
    torch.testing.assert_close(ours["cls"], tokens[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["keys"], kept["keys"], rtol=0, atol=1e-5)


def test_bf16_weights_give_the_same_features_under_autocast(test_preset):
    """Casting the frozen ViT's Linear/patch weights to bf16 once (instead of autocast re-casting them on every
    call) changes nothing but the work: the features are bit-identical, and the LayerNorms stay fp32."""
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    fp32, bf16 = build_vit(test_preset), build_vit(test_preset, bf16_weights=True)
    assert bf16.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert bf16.model.patch_embed.proj.weight.dtype == torch.bfloat16
    assert bf16.model.blocks[0].norm1.weight.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = fp32(images), bf16(images)
    for name in ("cls", "keys", "selfsim"):
        assert torch.equal(got[name], want[name]), name


def test_load_features_casts_for_amp_and_keeps_fp32_otherwise(tiny_config):
    from splice_model.train import load_features

    cpu = torch.device("cpu")
    exact = load_features(tiny_config.replace(amp=False), cpu)
    autocast = load_features(tiny_config.replace(amp=True), cpu)
    assert exact.model.blocks[0].mlp.fc1.weight.dtype == torch.float32
    assert autocast.model.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert load_features(tiny_config.replace(amp=True), cpu) is autocast  # built once per process


def test_vit_resize_always_hands_the_vit_fp32():
    """An input already at the ViT's size comes back fp32 too: one dtype, so a compiled ViT never recompiles."""
    image = torch.rand(1, 3, 48, 64).to(torch.bfloat16)
    assert vit_resize(image, 48, 96).dtype == torch.float32
    assert vit_resize(image, 40, 96).dtype == torch.float32


def test_exact_fp32_turns_tf32_off_on_cuda():
    """cuDNN convolutions default to TF32 on CUDA; `amp: false` promises exact fp32 (flags only: no GPU needed)."""
    from splice_model.train import exact_fp32_kernels

    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    try:
        exact_fp32_kernels(torch.device("cpu"))
        assert torch.backends.cudnn.conv.fp32_precision == conv  # nothing to do on the CPU
        exact_fp32_kernels(torch.device("cuda"))
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
