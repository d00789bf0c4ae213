"""Exercises of notebook 11 (Vision Transformer).

* ``11.1`` (predict) — the notebook's ViT cuts 8×8 digits into 2×2 patches. With 1×1 patches
  instead, by what factor does the number of attention weights it computes per image grow?
  The checker measures it with :meth:`~course_utils.vit.ViT.attention_maps`.
* ``11.2`` (implement) — attention rollout from the formula of section 7:
  ``fn(attentions (layers, B, heads, T, T)) -> (B, T, T)``.
* ``11.3`` (extend) — a padding-aware ViT: ``fn(model, images, pad (B, N)) -> logits`` where
  ``pad`` marks patches that are padding; they must be invisible to every token.
* ``11.4`` (debug) — a hand-written ViT forward pass with two silent bugs (tokens scrambled by a
  reshape that should be a transpose; the class token read before the final LayerNorm):
  ``fn(model, images) -> logits`` equal to ``model(images)``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("11.1", "11.2", "11.3", "11.4"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_utils.vit import ViT, attention_rollout

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _as_tensor, _close, _diagnose, _first_difference, _gap, _same

__all__ = ["check_attention_growth", "check_fixed_vit_forward", "check_padded_vit", "check_rollout"]

# The notebook's ViT (section 3), without its conv stem: the stem does not change the tokens.
_NOTEBOOK_VIT = dict(image_size=8, in_channels=1, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128)


# --------------------------------------------------------------------------------------------
# 11.1 predict: how the number of attention weights grows when the patches shrink
# --------------------------------------------------------------------------------------------


def _attention_weights_per_image(patch_size: int) -> int:
    """Measured: every layer's and head's (1+N) × (1+N) weights for one 8×8 image."""
    torch.manual_seed(0)
    model = ViT(patch_size=patch_size, **_NOTEBOOK_VIT).eval()
    return model.attention_maps(torch.rand(1, 1, 8, 8)).numel()  # (depth, 1, heads, T, T)


def _solution_attention_growth() -> float:
    tokens_p2 = (8 // 2) ** 2 + 1  # 16 patches and the class token: T = 17
    tokens_p1 = (8 // 1) ** 2 + 1  # 64 patches and the class token: T = 65
    # every layer and every head holds a T × T matrix: depth and heads cancel in the ratio
    return (tokens_p1 / tokens_p2) ** 2  # (65 / 17)² ≈ 14.6


@exercise(
    "11.1",
    title="Predict: how many more attention weights with 1×1 patches?",
    hint="Count the tokens first (patches and the class token), then ask what attention stores per "
    "layer and head: one weight for every (query, key) pair.",
    solution=_solution_attention_growth,
    solution_args=lambda: (_solution_attention_growth(),),
    kind="predict",
    minutes=5,
    difficulty=1,
    mistakes=[
        Mistake("forgets the class token", (16.0,), "class token"),
        Mistake("linear in the number of patches", (4.0,), "every pair"),
        Mistake("the growth of the number of tokens", (65 / 17,), "its square"),
        Mistake("linear in the patch side", (2.0,), "patch side"),
    ],
)
def check_attention_growth(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (a growth factor)")
    before, after = _attention_weights_per_image(2), _attention_weights_per_image(1)
    measured = after / before
    said = (f"You predicted {pred:.3g}×; measured with attention_maps: {before:,} weights per image "
            f"with 2×2 patches, {after:,} with 1×1 patches, {measured:.3g}×")
    if _close(pred, measured, 0.02):
        return ok(f"Correct! {said}. The tokens grow 65/17 ≈ 3.8× and attention holds one weight per "
                  "pair of tokens, so (65/17)² ≈ 14.6×: this quadratic growth is why ViTs use 16×16 "
                  "patches on 224×224 images (197 tokens) and not single pixels (50,177 tokens).")
    known = [
        (16.0, "That is (64/16)², without the class token: the sequence is the patches *and* the class "
               "token, T = N + 1 = 17 → 65, so (65/17)² ≈ 14.6"),
        (4.0, "That is the growth of the number of patches (16 → 64); attention compares every pair "
              "of tokens, so the weights grow with the square"),
        (65 / 17, "That is the growth of the number of tokens (17 → 65); each layer and head stores a "
                  "T × T matrix, so the weights grow with its square"),
        (2.0, "That is how much the patch side shrinks; the number of patches grows with the square "
              "of that (×4), and the weights with the square of the number of tokens"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Count the tokens for each patch "
                "size, including the class token, then the weights one layer and head store.")


# --------------------------------------------------------------------------------------------
# 11.2 implement: attention rollout
# --------------------------------------------------------------------------------------------


def _solution_rollout(attentions: torch.Tensor) -> torch.Tensor:
    a = attentions.mean(dim=2)  # average the heads: (depth, B, T, T)
    eye = torch.eye(a.size(-1))
    rollout = eye.expand_as(a[0])
    for layer in a:  # first layer first
        a_hat = 0.5 * layer + 0.5 * eye  # the residual connection keeps half of each token
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        rollout = a_hat @ rollout  # a later layer multiplies from the left
    return rollout


def _rollout_variant(order: str = "later-left", residual: float = 0.5, renormalise: bool = True,
                     heads: str = "mean", add_identity: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(attentions: torch.Tensor) -> torch.Tensor:
        a = attentions.mean(2) if heads == "mean" else attentions.amax(2)
        eye = torch.eye(a.size(-1))
        rollout = eye.expand_as(a[0])
        for layer in a:
            a_hat = layer + eye if add_identity else (1 - residual) * layer + residual * eye
            if renormalise:
                a_hat = a_hat / a_hat.sum(-1, keepdim=True)
            rollout = a_hat @ rollout if order == "later-left" else rollout @ a_hat
        return rollout
    return fn


def _rollout_per_head(attentions: torch.Tensor) -> torch.Tensor:
    return torch.stack([attention_rollout(attentions[:, :, h]) for h in range(attentions.size(2))], 1)


def _rollout_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(3, 2, 4, 5, 5, generator=g) * 2, dim=-1)  # (depth, B, heads, T, T)


@exercise(
    "11.2",
    title="Attention rollout",
    hint="average the heads, add the identity (0.5·A + 0.5·I), renormalise the rows, and multiply "
    "the layers with the later one on the left: R = Â_L ··· Â_1.",
    solution=_solution_rollout,
    kind="implement",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("layers multiplied in the wrong order", (_rollout_variant(order="earlier-left"),), "wrong order"),
        Mistake("no residual", (_rollout_variant(residual=0.0),), "residual connection"),
        Mistake("A + I, rows not renormalised", (_rollout_variant(add_identity=True, renormalise=False),),
                "do not sum to 1"),
        Mistake("max over the heads", (_rollout_variant(heads="max"),), "average the heads"),
        Mistake("one rollout per head", (_rollout_per_head,), "average the heads (dim 2)"),
    ],
)
def check_rollout(fn: Callable[..., Any]) -> CheckResult:
    att = _rollout_input()
    expected = attention_rollout(att)
    got = _as_tensor(fn(att), "your rollout")
    if isinstance(got, CheckResult):
        return got
    if got.shape != expected.shape:
        return fail("shape", f"expected (B, T, T) = {tuple(expected.shape)}, got {tuple(got.shape)}: average "
                    "the heads (dim 2) and multiply the layers (dim 0) away")
    if _same(got, expected):
        return ok("Correct: your rollout matches course_utils.vit.attention_rollout.")
    known = _diagnose(got, [
        ("values", attention_rollout(att.flip(0)), "you multiplied the layers in the wrong order: a later "
         "layer acts on the output of an earlier one, so it goes on the left (R = Â_L ··· Â_1)"),
        ("values", attention_rollout(att, residual=0.0), "you left out the residual connection: each layer "
         "also passes every token on unchanged, so use 0.5·A + 0.5·I"),
        ("values", _rollout_variant(add_identity=True, renormalise=False)(att), "the rows of your Â do "
         "not sum to 1: A + I has rows summing to 2; renormalise them (which gives 0.5·A + 0.5·I)"),
        ("values", _rollout_variant(heads="max")(att), "you took the maximum over the heads: average the "
         "heads (every head writes into the same residual stream)"),
    ])
    if known is not None:
        return known
    if not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4):
        return fail("values", "the rows of your rollout do not sum to 1: renormalise the rows of each Â")
    return fail("values", "your rollout differs from course_utils.vit.attention_rollout, first "
                + _first_difference(got, expected, axes="b, i, j"))


# --------------------------------------------------------------------------------------------
# 11.3 extend: a padding-aware ViT
# --------------------------------------------------------------------------------------------


def _solution_padded_vit(model: ViT, images: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    z = model.embed(images)  # (B, 1+N, dim): class token, then the patches
    cls_is_real = torch.zeros(pad.size(0), 1, dtype=torch.bool, device=pad.device)
    key_padding = torch.cat([cls_is_real, pad], dim=1)  # (B, 1+N), True = ignore this key
    z = model.encoder(z, src_key_padding_mask=key_padding)  # padded patches: keys no one reads
    return model.head(z[:, 0])  # (B, num_classes)


def _padded_case() -> tuple[ViT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=2, in_channels=1, num_classes=10, dim=32, depth=2, heads=4,
                mlp_dim=64).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 8, 8, generator=g)
    pad = torch.zeros(4, 4, 4, dtype=torch.bool)  # (B, grid rows, grid cols)
    pad[0, :, 3] = True  # a digit 6 pixels wide: the last column of patches is padding
    pad[1, 2:, :] = True  # 4 pixels high: the lower half is padding
    pad[2] = True
    pad[2, 0, 0] = False  # a 2×2 image in the corner: one real patch
    return model, images, pad.flatten(1)  # pad (B, N=16); image 3 has no padding


def _mask_variant(where: str) -> Callable[..., torch.Tensor]:
    def fn(model: ViT, images: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        cls = torch.zeros(pad.size(0), 1, dtype=torch.bool)
        masks = {"inverted": torch.cat([cls, ~pad], 1), "appended": torch.cat([pad, cls], 1),
                 "class masked": torch.cat([~cls, pad], 1)}
        z = model.encoder(model.embed(images), src_key_padding_mask=masks[where])
        return model.head(z[:, 0])
    return fn


def _zero_padded_pixels(model: ViT, images: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    return model(images * (1.0 - _pixels(pad, model)))


def _ignore_padding(model: ViT, images: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    return model(images)


@exercise(
    "11.3",
    title="Extend: a padding-aware ViT",
    hint="model.embed(images) gives the encoder's input (B, 1+N, dim); the course's encoder takes "
    "src_key_padding_mask (B, 1+N) with True = ignore this key. Token 0 is the class token.",
    solution=_solution_padded_vit,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("padding ignored", (_ignore_padding,), "still visible"),
        Mistake("mask polarity inverted", (_mask_variant("inverted"),), "polarity"),
        Mistake("mask without the class token, appended at the end", (_mask_variant("appended"),),
                "shifted by one"),
        Mistake("the class token masked too", (_mask_variant("class masked"),), "class token itself"),
        Mistake("padded pixels zeroed instead of masked", (_zero_padded_pixels,), "zero patch"),
    ],
)
def check_padded_vit(fn: Callable[..., Any]) -> CheckResult:
    model, images, pad = _padded_case()
    with torch.no_grad():
        expected = _solution_padded_vit(model, images, pad)
        got = _as_tensor(fn(model, images, pad), "your logits")
        if isinstance(got, CheckResult):
            return got
        if got.shape != expected.shape:
            return fail("shape", f"expected logits (B, num_classes) = {tuple(expected.shape)}, got "
                        f"{tuple(got.shape)}")
        # what lies under the padding must not matter
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
        noisy = images + 5.0 * _pixels(pad, model) * noise  # changes only what lies under the padding
        invariant = _same(fn(model, noisy, pad), got, atol=1e-5)
        if _same(got, expected) and invariant:
            return ok("Correct: padded patches are keys no token reads, so the class token (and the "
                      "logits) ignore whatever lies under the padding. They still pass through the "
                      "layers as queries; their outputs are simply never read.")
        known = _diagnose(got, [
            ("masking", _ignore_padding(model, images, pad), "the padding is still visible: every token "
             "attends to the padded patches; pass src_key_padding_mask to model.encoder"),
            ("masking", _mask_variant("inverted")(model, images, pad), "your mask has the wrong polarity: "
             "in a key_padding_mask True means *ignore this key*, so the real patches were hidden and "
             "the padding was read"),
            ("masking", _mask_variant("appended")(model, images, pad), "your mask is shifted by one: "
             "token 0 is the class token, so the mask is [False, pad], not [pad, False]"),
            ("masking", _mask_variant("class masked")(model, images, pad), "you masked the class token "
             "itself: it is a real token (the head reads it), so its column of the mask is False"),
            ("masking", _zero_padded_pixels(model, images, pad), "zeroing the padded pixels is not "
             "enough: a zero patch still becomes a token (the embedding's bias plus a position "
             "embedding) that every token attends to; mask it as a key instead"),
        ])
        if known is not None:
            return known
        if not invariant:
            return fail("masking", "your logits change when the pixels under the padding change: the "
                        "padded patches are still visible somewhere")
    return fail("values", "your logits differ from the padding-aware reference, first "
                + _first_difference(got, expected, axes="image, class"))


def _pixels(pad: torch.Tensor, model: ViT) -> torch.Tensor:
    p, g = model.patch_embed.patch_size, model.patch_embed.grid_size
    return pad.view(-1, 1, g, g).repeat_interleave(p, 2).repeat_interleave(p, 3).float()  # (B, 1, H, W)


# --------------------------------------------------------------------------------------------
# 11.4 debug: a hand-written forward pass with two silent bugs
# --------------------------------------------------------------------------------------------


def buggy_vit_logits(model: ViT, images: torch.Tensor) -> torch.Tensor:
    """The broken forward pass the notebook hands over (it runs, and its shapes are right)."""
    b = images.size(0)
    tokens = model.patch_embed.proj(model.stem(images))  # (B, dim, g, g)
    tokens = tokens.flatten(2).reshape(b, -1, tokens.size(1))  # (B, N, dim)
    cls = model.cls_token.expand(b, -1, -1)  # (B, 1, dim)
    z = model.pos_embed(torch.cat([cls, tokens], dim=1))  # (B, 1+N, dim)
    for layer in model.encoder.layers:
        z = layer(z)
    return model.head(z[:, 0])  # (B, num_classes)


def _solution_fixed_vit_forward(model: ViT, images: torch.Tensor) -> torch.Tensor:
    b = images.size(0)
    tokens = model.patch_embed.proj(model.stem(images))  # (B, dim, g, g)
    tokens = tokens.flatten(2).transpose(1, 2)  # fix 1: (B, dim, N) -> (B, N, dim) is a transpose
    cls = model.cls_token.expand(b, -1, -1)  # (B, 1, dim)
    z = model.pos_embed(torch.cat([cls, tokens], dim=1))  # (B, 1+N, dim)
    for layer in model.encoder.layers:
        z = layer(z)
    z = model.encoder.norm(z)  # fix 2: pre-LN ends with a LayerNorm before the head
    return model.head(z[:, 0])  # (B, num_classes)


def _forward_variant(transpose: bool, final_norm: bool, pool: str = "cls") -> Callable[..., torch.Tensor]:
    def fn(model: ViT, images: torch.Tensor) -> torch.Tensor:
        b = images.size(0)
        tokens = model.patch_embed.proj(model.stem(images))
        tokens = tokens.flatten(2).transpose(1, 2) if transpose else tokens.flatten(2).reshape(b, -1, tokens.size(1))
        z = model.pos_embed(torch.cat([model.cls_token.expand(b, -1, -1), tokens], dim=1))
        for layer in model.encoder.layers:
            z = layer(z)
        if final_norm:
            z = model.encoder.norm(z)
        return model.head(z[:, 0] if pool == "cls" else z[:, 1:].mean(1))
    return fn


def _debug_case() -> tuple[ViT, torch.Tensor]:
    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=2, in_channels=1, num_classes=10, dim=32, depth=2, heads=4,
                mlp_dim=64).eval()
    with torch.no_grad():  # trained-looking LayerNorm parameters, so that leaving one out shows
        model.encoder.norm.weight.uniform_(0.5, 1.5)
        model.encoder.norm.bias.normal_(0.0, 0.3)
    return model, torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@exercise(
    "11.4",
    title="Debug: two silent bugs in a hand-written ViT forward pass",
    hint="Compare every line with the equations of section 3 and with the shapes in the comments: "
    "does (B, dim, N) become (B, N, dim) by moving data or by relabelling it? And what is "
    "applied to z_L before the head reads the class token?",
    solution=_solution_fixed_vit_forward,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (buggy_vit_logits,), "both bugs"),
        Mistake("only the transpose fixed", (_forward_variant(True, False),), "final LayerNorm"),
        Mistake("only the final norm fixed", (_forward_variant(False, True),), "scrambled"),
        Mistake("mean of the patch tokens instead of the class token", (_forward_variant(True, True, "mean"),),
                "class token"),
    ],
)
def check_fixed_vit_forward(fn: Callable[..., Any]) -> CheckResult:
    model, images = _debug_case()
    with torch.no_grad():
        expected = model(images)
        got = _as_tensor(fn(model, images), "your logits")
        if isinstance(got, CheckResult):
            return got
        if got.shape != expected.shape:
            return fail("shape", f"expected logits (B, num_classes) = {tuple(expected.shape)}, got {tuple(got.shape)}")
        if _same(got, expected):
            return ok("Correct: both bugs fixed. reshape only relabels memory, so (B, dim, N) reshaped to "
                      "(B, N, dim) mixes features of different patches into each token; and a pre-LN "
                      "encoder's residual stream is never normalised until the final LayerNorm.")
        known = _diagnose(got, [
            ("values", buggy_vit_logits(model, images), "both bugs are still there: the tokens are "
             "scrambled by a reshape, and the head reads the class token before the final LayerNorm"),
            ("values", _forward_variant(True, False)(model, images), "the tokens are right now, but the "
             "head reads z_L before the encoder's final LayerNorm (model.encoder.norm): pre-LN layers "
             "normalise only their inputs, never the residual stream itself"),
            ("values", _forward_variant(False, True)(model, images), "the final LayerNorm is in, but the "
             "tokens are still scrambled: reshape(B, N, dim) of a (B, dim, N) tensor relabels memory "
             "instead of moving it, so each token mixes features of several patches; use transpose(1, 2)"),
            ("values", _forward_variant(True, True, "mean")(model, images), "you average the patch tokens; "
             "this ViT's head reads the class token z_L[:, 0], which gathered the patches through attention"),
        ])
        if known is not None:
            return known
    return fail("values", "your logits differ from model(images), first "
                + _first_difference(got, expected, axes="image, class"))
