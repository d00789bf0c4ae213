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


# ------------------------------------------------------------------ defaults, pinned to the references


def test_defaults_match_the_papers_code_and_transformers_vitconfig():
    transformers = pytest.importorskip("transformers")
    import inspect

    hf = transformers.ViTConfig()
    sig = inspect.signature(ViT).parameters
    # dropout: 0.0 in ViTConfig (hidden and attention-probability dropout) and in ours
    assert sig["dropout"].default == hf.hidden_dropout_prob == hf.attention_probs_dropout_prob == 0.0
    # LayerNorm eps: 1e-6, as the paper's code (flax nn.LayerNorm in google-research/vision_transformer)
    # and timm. transformers' ViTConfig defaults to 1e-12 instead; from_transformers copies the
    # config's value, so both load exactly (tested below with ViTConfig's own default).
    assert sig["layer_norm_eps"].default == 1e-6 and hf.layer_norm_eps == 1e-12
    assert sig["token_mixing"].default == "attention" and tuple(sig["conv_stem"].default) == ()
    model = ViT(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=96, depth=2, heads=4,
                mlp_dim=384)
    layer = model.encoder.layers[0]
    assert layer.norm_first and model.encoder.norm is not None  # pre-LN, final LayerNorm
    assert layer.norm1.eps == model.encoder.norm.eps == 1e-6
    # GELU, the exact (erf) one as ViTConfig's hidden_act="gelu", not the tanh approximation
    assert hf.hidden_act == "gelu"
    h = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(layer.activation(h), nn.functional.gelu(h), rtol=0, atol=0)
    # query/key/value with biases (ViTConfig.qkv_bias=True)
    assert hf.qkv_bias and layer.self_attn.q_proj.bias is not None
    # initialisation: truncated normal, std = ViTConfig.initializer_range = 0.02; zero biases
    torch.manual_seed(0)
    big = ViT(image_size=64, patch_size=4, in_channels=3, num_classes=10, dim=256, depth=1, heads=4,
              mlp_dim=1024)
    for w in (big.encoder.layers[0].linear1.weight, big.cls_token, big.pos_embed.weight):
        assert abs(w.std().item() - hf.initializer_range) < 0.002
    # (trunc_normal_'s default bounds are ±2 in absolute terms, 100 std here, as transformers and
    # timm call it: in effect a plain normal, whose largest of 262k draws is about 4.6 std)
    assert 3.5 * 0.02 < big.encoder.layers[0].linear1.weight.abs().max() < 6 * 0.02
    assert torch.all(big.encoder.layers[0].linear1.bias == 0)


def test_from_transformers_keeps_vitconfigs_default_eps():
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    _randomise(ref, std=1.0)
    ours = ViT.from_transformers(ref).eval()
    assert ours.config["layer_norm_eps"] == cfg.layer_norm_eps == 1e-12
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref(pixel_values=x).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ bad input


def test_patchify_bad_input():
    with pytest.raises(ValueError, match="patch_size must be a positive int, got 0"):
        patchify(torch.zeros(1, 1, 4, 4), 0)  # was a ZeroDivisionError
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        patchify(torch.zeros(1, 1, 4, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="images must have 4 dims"):
        patchify(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        patchify(torch.zeros(1, 1, 4, 4), 3)
    with pytest.raises(TypeError, match="images must be a torch.Tensor, got list"):
        patchify([[0.0]], 1)


def test_rollout_bad_and_edge_input():
    ones = torch.ones(1, 1, 3, 3)
    with pytest.raises(TypeError, match="attentions must be a floating-point tensor"):
        attention_rollout(torch.ones(1, 1, 3, 3, dtype=torch.long))  # was a silent rollout of zeros
    with pytest.raises(ValueError, match="residual must be a real number in"):
        attention_rollout(ones / 3, residual=1.5)
    with pytest.raises(ValueError, match="attentions contains NaN"):
        attention_rollout(torch.full((1, 1, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="attention weights"):
        attention_rollout(-ones)
    with pytest.raises(ValueError, match="square"):
        attention_rollout(torch.ones(1, 1, 3, 4) / 4)
    with pytest.raises(ValueError, match="attentions must have 4 or 5 dims"):
        attention_rollout(torch.ones(3, 3) / 3)
    # a fully masked query row (zero weights, the course's convention) with residual 0: zeros, not NaN
    a = torch.softmax(torch.randn(2, 1, 4, 4), -1)
    a[:, :, 2] = 0.0
    r = attention_rollout(a, residual=0.0)
    assert torch.isfinite(r).all() and torch.all(r[:, 2] == 0)
    one_layer = attention_rollout(a[:1], residual=0.0)  # the other rows still sum to 1
    torch.testing.assert_close(one_layer[:, [0, 1, 3]].sum(-1), torch.ones(1, 3))
    # bf16 weights: multiplied in float32
    assert attention_rollout(a.to(torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("change, error, says", [
    ({"depth": 0}, ValueError, "depth must be a positive int, got 0"),
    ({"heads": -1}, ValueError, "heads must be a positive int"),
    ({"dim": 2.5}, ValueError, "dim must be a positive int"),
    ({"num_classes": -1}, ValueError, "num_classes must be a non-negative int"),
    ({"dropout": 1.5}, ValueError, "dropout must be a real number in [0.0, 1.0)"),
    ({"layer_norm_eps": 0.0}, ValueError, "layer_norm_eps must be a real number in (0.0, inf)"),
    ({"conv_stem": 32}, TypeError, "conv_stem must be a sequence of channel counts"),
    ({"conv_stem": (32, 0)}, ValueError, "conv stem channels must be a sequence of positive ints"),
    ({"token_mixing": "conv"}, ValueError, "token_mixing must be one of 'attention', 'mlp'"),
    ({"dim": 30}, ValueError, "divisible"),
])
def test_vit_constructor_names_the_bad_argument(change, error, says):
    with pytest.raises(error) as info:
        ViT(**{**SMALL, **change})
    assert says in str(info.value)


def test_forward_bad_images():
    model = ViT(**SMALL)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\), got \(2, 8, 8\)"):
        model(torch.zeros(2, 8, 8))
    emb = PatchEmbedding(8, 4, 1, 16)
    with pytest.raises(ValueError, match="method must be one of 'conv', 'unfold'"):
        emb(torch.zeros(1, 1, 8, 8), method="fold")
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        PatchEmbedding(8, 0, 1, 16)
    with pytest.raises(ValueError, match="num_tokens must be a positive int"):
        TokenMixingMLP(0, 8)
    with pytest.raises(ValueError, match="dropout must be a real number"):
        TokenMixingMLP(4, 8, dropout=-0.1)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        ConvStem(0, (8,))


def test_random_shift_and_count_parameters_bad_input():
    with pytest.raises(ValueError, match="max_shift must be a non-negative int, got -1"):
        random_shift(torch.zeros(1, 1, 4, 4), max_shift=-1)
    with pytest.raises(ValueError, match="images must have 4 dims"):
        random_shift(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        random_shift(torch.zeros(1, 1, 4, 4), generator=0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        count_parameters([torch.zeros(3)])


def test_exercises_of_notebook_11_think_beyond_the_cells():
    from course_utils.exercises import check, exercises

    mine = {i: ex for i, ex in exercises().items() if i.startswith("11.")}
    assert len(mine) >= 3 and sum(ex.kind in ("predict", "derive", "debug", "extend") for ex in mine.values()) >= 2
    assert all(len(ex.mistakes) >= 3 and ex.minutes and ex.difficulty for ex in mine.values())
    assert check("11.1", None).kind == "not attempted"  # the notebook's placeholder prediction
    # the fallback names where the first difference is

    def nudged(a):
        r = attention_rollout(a).clone()
        r[1, 2, 3] += 1e-2  # rows still sum to 1
        r[1, 2, 4] -= 1e-2
        return r

    off = check("11.2", nudged)
    assert not off.passed and "first at (b=1, i=2, j=3)" in off.message
