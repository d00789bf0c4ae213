"""The course's ViT: shapes, patch embeddings, equality with transformers' ViT, rollout, ablation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.vit import (
    ConvStem,
    PatchEmbedding,
    TokenMixingMLP,
    ViT,
    attention_rollout,
    count_parameters,
    patchify,
    random_shift,
)

SMALL = dict(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=2, heads=4,
             mlp_dim=64)


def test_shapes():
    torch.manual_seed(0)
    model = ViT(**SMALL)
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 10)
    assert model.forward_features(x).shape == (3, 5, 32)
    assert model.attention_maps(x).shape == (2, 3, 4, 5, 5)
    rgb = ViT(image_size=16, patch_size=4, in_channels=3, num_classes=0, dim=24, depth=1,
              heads=3, mlp_dim=48)
    assert rgb(torch.randn(2, 3, 16, 16)).shape == (2, 24)  # num_classes=0: features


def test_bad_input_messages():
    model = ViT(**SMALL)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        ViT(**{**SMALL, "patch_size": 3})
    with pytest.raises(ValueError, match="token_mixing"):
        ViT(**SMALL, token_mixing="conv")


def test_conv_stem_keeps_the_grid_and_feeds_the_patch_embedding():
    torch.manual_seed(0)
    model = ViT(**{**SMALL, "patch_size": 2}, conv_stem=(8, 16))
    x = torch.randn(3, 1, 8, 8)
    assert model.stem(x).shape == (3, 16, 8, 8)  # stride 1: the same 8×8 grid, 16 channels
    assert model.patch_embed.in_channels == 16 and model.num_tokens == 1 + 16
    assert model(x).shape == (3, 10)
    assert model.attention_maps(x).shape == (2, 3, 4, 17, 17)
    # the stem is conv (no bias) -> BatchNorm -> GELU per layer, with nn.Sequential's names, so a
    # hand-written stem's weights load into it
    by_hand = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(),
                            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.GELU())
    model.stem.load_state_dict(by_hand.state_dict(), strict=True)
    model.eval()
    by_hand.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.stem(x), by_hand(x))
    # without a stem the model has exactly the plain ViT's parameters (nothing extra)
    assert not any(k.startswith("stem.") for k in ViT(**SMALL).state_dict())
    assert count_parameters(model) == count_parameters(ViT(**{**SMALL, "patch_size": 2})) + (
        9 * 8 + 2 * 8 + 9 * 8 * 16 + 2 * 16  # stem convs and norms
        + 32 * (16 - 1) * 4  # the patch embedding now reads 16 channels instead of 1
    )


def test_conv_stem_bad_input_messages():
    with pytest.raises(ValueError, match="positive ints.*32"):
        ConvStem(1, 32)
    with pytest.raises(ValueError, match="positive ints"):
        ViT(**SMALL, conv_stem=(16, 0))
    # a wrong image names the image shape the model expects, not the stem's channels
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\).*\(2, 16, 8, 8\)"):
        ViT(**SMALL, conv_stem=(16,))(torch.randn(2, 16, 8, 8))


@pytest.mark.parametrize("size,patch,channels", [(8, 4, 1), (8, 2, 1), (12, 4, 3)])
def test_conv_and_unfold_patch_embeddings_agree(size, patch, channels):
    torch.manual_seed(0)
    emb = PatchEmbedding(size, patch, channels, dim=16)
    x = torch.randn(4, channels, size, size)
    torch.testing.assert_close(emb(x, method="conv"), emb(x, method="unfold"), atol=1e-5, rtol=1e-5)
    # and against an independent nn.Linear on patches cut by hand (channel, row, column order)
    lin = nn.Linear(channels * patch * patch, 16)
    with torch.no_grad():
        lin.weight.copy_(emb.proj.weight.flatten(1))
        lin.bias.copy_(emb.proj.bias)
    g = size // patch
    manual = x.reshape(4, channels, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(4, g * g, -1)
    torch.testing.assert_close(patchify(x, patch), manual)
    torch.testing.assert_close(lin(manual), emb(x), atol=1e-5, rtol=1e-5)


def _randomise(module: nn.Module, std: float = 0.3) -> None:
    # transformers initialises with std 0.02, which makes many outputs nearly equal; use larger
    # weights so that a wrong mapping (say q and k swapped) cannot hide inside the tolerance
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


@pytest.mark.parametrize("head", [False, True])
def test_equal_to_transformers_vit(head):
    transformers = pytest.importorskip("transformers")
    from transformers import ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    if head:
        ref = transformers.ViTForImageClassification(cfg).eval()
    else:
        ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    _randomise(ref)
    ours = ViT.from_transformers(ref).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        if head:
            expected, got = ref(pixel_values=x).logits, ours(x)
        else:
            expected, got = ref(pixel_values=x).last_hidden_state, ours.forward_features(x)
    # tolerance: float32, two layers, the same operations in a different order
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert count_parameters(ours) == count_parameters(ref)


def test_from_transformers_rejects_other_models():
    with pytest.raises(TypeError, match="ViTModel"):
        ViT.from_transformers(nn.Linear(2, 2))


def test_rollout_rows_sum_to_one_and_identity_case():
    torch.manual_seed(0)
    model = ViT(**SMALL).eval()
    r = attention_rollout(model.attention_maps(torch.randn(3, 1, 8, 8)))
    assert r.shape == (3, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(3, 5))
    assert (r >= 0).all()
    # attention that only looks at itself leaves every token where it is
    eye = torch.eye(5).expand(2, 3, 4, 5, 5)
    torch.testing.assert_close(attention_rollout(eye), torch.eye(5).expand(3, 5, 5))
    # residual=0 and one layer: rollout is the head-averaged attention itself
    a = torch.softmax(torch.randn(1, 2, 4, 5, 5), -1)
    torch.testing.assert_close(attention_rollout(a, residual=0.0), a.mean(2)[0])


def test_token_mixing_ablation_has_no_attention():
    torch.manual_seed(0)
    model = ViT(**SMALL, token_mixing="mlp")
    assert all(isinstance(layer.self_attn, TokenMixingMLP) for layer in model.encoder.layers)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="no attention"):
        model.attention_maps(torch.randn(2, 1, 8, 8))


def test_random_shift_moves_by_at_most_one_and_never_flips():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 2] = 1.0  # one bright pixel
    y = random_shift(x, max_shift=1, generator=torch.Generator().manual_seed(0))
    pos = y[:, 0].flatten(1).argmax(-1)
    rows, cols = pos // 8, pos % 8
    assert ((rows - 3).abs() <= 1).all() and ((cols - 2).abs() <= 1).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 9  # all nine shifts occur
    torch.testing.assert_close(y.sum((1, 2, 3)), torch.ones(64))


@pytest.mark.parametrize("conv_stem", [(), (8,)])
def test_trains_a_little(conv_stem):
    # a few steps on a fixed batch lower the loss (the model is wired so gradients flow)
    torch.manual_seed(0)
    model = ViT(**SMALL, conv_stem=conv_stem)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("token_mixing,conv_stem", [("attention", ()), ("mlp", ()), ("attention", (8,))])
def test_bf16_autocast_forward_and_backward(token_mixing, conv_stem):
    # under CPU autocast the patch conv returns bf16; the model must still run (the residual stream
    # stays fp32) and give logits close to the fp32 ones
    torch.manual_seed(0)
    model = ViT(**SMALL, token_mixing=token_mixing, conv_stem=conv_stem).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(logits.float(), model(x), atol=5e-2, rtol=5e-2)


def test_exercises_09_solutions_pass_and_mistakes_are_named():
    from course_utils.exercises import check, solution_function

    for ex in ("11.1", "11.2"):
        assert check(ex, solution_function(ex)).passed

    def not_done(*args):
        raise NotImplementedError

    assert check("11.1", not_done).kind == "not attempted"
    # pixels of each patch in (row, column, channel) order: the checker names the order
    def channels_last(x, p):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
        return x.reshape(b, -1, c * p * p)

    wrong_order = check("11.1", channels_last)
    assert not wrong_order.passed and "order" in wrong_order.message
    reversed_layers = check("11.2", lambda a: attention_rollout(a.flip(0)))
    assert not reversed_layers.passed and "order" in reversed_layers.message
    no_residual = check("11.2", lambda a: attention_rollout(a, residual=0.0))
    assert "residual" in no_residual.message
