"""The course's Vision Transformer (Dosovitskiy et al., 2021), built from ``course_utils`` blocks.

An image is cut into ``patch_size × patch_size`` patches; each patch becomes a token (a linear
map of its pixels — :class:`PatchEmbedding`); a learned class token is put in front; learned
position embeddings are added; a pre-LN :class:`~course_utils.transformer.TransformerEncoder`
mixes the tokens; the class token's final state goes through a linear head::

    x (B, C, H, W) -> [optional conv stem (B, C', H, W)] -> patches (B, N, C·p·p) -> tokens (B, N, dim) -> [cls; tokens] + pos (B, 1+N, dim)
      -> encoder (B, 1+N, dim) -> norm -> z[:, 0] (B, dim) -> head (B, num_classes)

Also here:

* :class:`ConvStem` — a few 3×3 convolutions *before* the patch embedding (Xiao et al., 2021,
  "Early convolutions help transformers see better"): ``ViT(..., conv_stem=(32, 32))``. The model
  stays a ViT — patches, class token, positions, attention — but its tokens start from local
  features instead of raw pixels, which is what a transformer trained on little data lacks;
* :func:`patchify` — the patches themselves (for pictures and for the unfold+linear embedding);
* :func:`attention_rollout` — Abnar & Zuidema (2020): how much each input token flows into each
  output token through all layers;
* :meth:`ViT.from_transformers` — copy the weights of a Hugging Face ``ViTModel`` /
  ``ViTForImageClassification`` so the outputs match (tested to 1e-5);
* :class:`TokenMixingMLP` — the "no attention" ablation: MLP-Mixer token mixing in place of
  self-attention (``ViT(..., token_mixing="mlp")``);
* :func:`random_shift` — augmentation for digits: small shifts with zero padding, no flips.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import (
    check_finite,
    check_float_tensor,
    check_like_module,
    check_non_negative_int,
    check_one_of,
    check_positive_int,
    check_probability,
    check_real,
    check_shape,
    check_tensor,
    describe,
)
from course_utils.positional import LearnedPositionalEmbedding
from course_utils.transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "ConvStem",
    "PatchEmbedding",
    "TokenMixingMLP",
    "ViT",
    "attention_rollout",
    "count_parameters",
    "patchify",
    "random_shift",
]


def _check_images(x: object, channels: int, size: int, weight: torch.Tensor) -> None:
    """The images ``x``: float ``(B, C, H, W)`` with the dtype and device of the first layer."""
    check_float_tensor("images", x)
    check_shape("images", x, (None, channels, size, size), what=f"(B, {channels}, {size}, {size})")
    check_like_module("images", x, weight)


def _check_sizes(**sizes: int) -> None:
    for name, n in sizes.items():
        check_positive_int(name, n)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``(B, C, H, W)`` images into non-overlapping patches ``(B, N, C·p·p)``, row by row.

    Each patch is flattened channel-first, then row, then column: the order of
    ``Conv2d.weight.flatten(1)``, so a linear layer on these patches equals a strided conv.

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> patchify(x, 2)[0]            # 4 patches of 2×2 pixels
    tensor([[ 0.,  1.,  4.,  5.],
            [ 2.,  3.,  6.,  7.],
            [ 8.,  9., 12., 13.],
            [10., 11., 14., 15.]])
    """
    check_float_tensor("images", images, dims=4)
    check_positive_int("patch_size", patch_size)
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"images of size {h}×{w} are not divisible by patch_size={patch_size} (H and W "
                         f"must be multiples of it), got {describe(images)}")
    cols = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (B, C·p·p, N)
    return cols.transpose(1, 2)  # (B, N, C·p·p)


class PatchEmbedding(nn.Module):
    """Patches to tokens: a ``Conv2d`` with kernel = stride = ``patch_size`` (``proj``).

    ``forward(x, method="conv")`` runs the convolution; ``method="unfold"`` cuts the patches with
    :func:`patchify` and applies the *same* weights as a linear layer — the two are equal,
    because a conv whose stride equals its kernel sees each pixel exactly once.

    >>> emb = PatchEmbedding(image_size=8, patch_size=4, in_channels=1, dim=16)
    >>> x = torch.randn(2, 1, 8, 8)
    >>> emb(x).shape                 # (B, N, dim), N = (8 / 4)²
    torch.Size([2, 4, 16])
    >>> torch.allclose(emb(x, method="conv"), emb(x, method="unfold"), atol=1e-6)
    True
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        _check_sizes(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim)
        if image_size % patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size, got {image_size} and {patch_size}"
            )
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor, method: str = "conv") -> torch.Tensor:
        check_one_of("method", method, ("conv", "unfold"))
        _check_images(x, self.in_channels, self.image_size, self.proj.weight)
        if method == "conv":
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, dim, g, g) -> (B, N, dim)
        weight = self.proj.weight.flatten(1)  # (dim, C·p·p)
        return F.linear(patchify(x, self.patch_size), weight, self.proj.bias)  # (B, N, dim)


class ConvStem(nn.Sequential):
    """Early convolutions (Xiao et al., 2021): 3×3 conv → BatchNorm → GELU, once per entry of ``channels``.

    Stride 1 and padding 1 keep the image size, so the patch embedding that follows cuts the
    same patch grid; only the number of channels changes, from ``in_channels`` to
    ``channels[-1]``. The convolutions have no bias (the BatchNorm that follows has one).
    Module names are ``0, 1, 2, ...`` (conv, norm, activation per layer), as an
    ``nn.Sequential`` written out by hand.

    >>> stem = ConvStem(1, (16, 32))
    >>> stem(torch.randn(2, 1, 8, 8)).shape      # (B, channels[-1], H, W)
    torch.Size([2, 32, 8, 8])
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] | list[int]) -> None:
        check_positive_int("in_channels", in_channels)
        if isinstance(channels, (int, str)) or not hasattr(channels, "__iter__") or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels
        ):
            raise ValueError(f"conv stem channels must be a sequence of positive ints, got {channels!r}")
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.GELU()]
            in_channels = c
        super().__init__(*layers)


class TokenMixingMLP(nn.Module):
    """MLP-Mixer's token mixing (Tolstikhin et al., 2021): an MLP *across tokens*, no attention.

    Each channel is mixed over the ``num_tokens`` positions with weights that depend on the
    position only, never on the content. It has the call signature of
    :class:`~course_utils.attention.MultiHeadAttention` (returns ``(out, None)``), so it can
    replace ``self_attn`` in a :class:`~course_utils.transformer.TransformerEncoderLayer`.

    >>> mix = TokenMixingMLP(num_tokens=5, hidden_dim=8)
    >>> out, w = mix(torch.randn(2, 5, 16))
    >>> out.shape, w
    (torch.Size([2, 5, 16]), None)
    """

    def __init__(self, num_tokens: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(num_tokens=num_tokens, hidden_dim=hidden_dim)
        check_probability("dropout", dropout)
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(num_tokens, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_tokens)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, None]:
        check_float_tensor("query", query)
        check_like_module("query", query, self.fc1.weight)
        if query.dim() != 3 or query.size(1) != self.num_tokens:
            raise ValueError(
                f"query must have shape (B, T={self.num_tokens}, E), got {tuple(query.shape)}"
            )
        x = query.transpose(1, 2)  # (B, E, T): mix along the tokens
        x = self.fc2(self.dropout(F.gelu(self.fc1(x))))  # (B, E, T)
        return x.transpose(1, 2), None  # (B, T, E)


class ViT(nn.Module):
    """A Vision Transformer: patch embedding, class token, learned positions, pre-LN encoder, head.

    ``ViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_dim,
    dropout=0.0)``. ``forward(x (B, C, H, W)) -> logits (B, num_classes)``;
    ``forward_features`` gives the normalised tokens ``(B, 1 + N, dim)`` (token 0 is the class
    token). ``num_classes=0`` makes the head the identity (the model returns the class token's
    features). Keyword-only extras: ``layer_norm_eps``, ``token_mixing="mlp"`` (the
    no-attention ablation: :class:`TokenMixingMLP` instead of self-attention) and
    ``conv_stem=(c1, c2, ...)`` (a :class:`ConvStem` before the patch embedding, which then
    embeds ``c_last``-channel patches; default ``()``: patches of raw pixels, as the paper).

    >>> model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=10,
    ...             dim=32, depth=2, heads=4, mlp_dim=64)
    >>> model(torch.randn(3, 1, 8, 8)).shape
    torch.Size([3, 10])
    >>> model.attention_maps(torch.randn(3, 1, 8, 8)).shape   # (depth, B, heads, 1+N, 1+N)
    torch.Size([2, 3, 4, 5, 5])
    >>> hybrid = ViT(image_size=8, patch_size=2, in_channels=1, num_classes=10, dim=32, depth=1,
    ...              heads=4, mlp_dim=64, conv_stem=(16,))
    >>> hybrid(torch.randn(3, 1, 8, 8)).shape, hybrid.patch_embed.in_channels
    (torch.Size([3, 10]), 16)
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        layer_norm_eps: float = 1e-6,
        token_mixing: str = "attention",
        conv_stem: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        _check_sizes(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim,
                     depth=depth, heads=heads, mlp_dim=mlp_dim)
        check_non_negative_int("num_classes", num_classes)
        check_probability("dropout", dropout)
        check_real("layer_norm_eps", layer_norm_eps, 0.0, low_open=True)
        check_one_of("token_mixing", token_mixing, ("attention", "mlp"))
        if isinstance(conv_stem, (int, str)) or not hasattr(conv_stem, "__len__"):
            raise TypeError(f"conv_stem must be a sequence of channel counts such as (32, 32), or () for "
                            f"none, got {describe(conv_stem)}")
        self.config = dict(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                           num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                           mlp_dim=mlp_dim, dropout=dropout, layer_norm_eps=layer_norm_eps,
                           token_mixing=token_mixing, conv_stem=tuple(conv_stem))
        self.in_channels, self.image_size = in_channels, image_size
        # no stem: the identity, so that a plain ViT has exactly the parameters of the paper's
        self.stem = ConvStem(in_channels, conv_stem) if len(conv_stem) else nn.Identity()
        embed_channels = conv_stem[-1] if len(conv_stem) else in_channels
        self.patch_embed = PatchEmbedding(image_size, patch_size, embed_channels, dim)
        self.num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = LearnedPositionalEmbedding(self.num_tokens, dim)  # N(0, 0.02²)
        self.dropout = nn.Dropout(dropout)
        layer = TransformerEncoderLayer(dim, heads, dim_feedforward=mlp_dim, dropout=dropout,
                                        activation="gelu", layer_norm_eps=layer_norm_eps,
                                        norm_first=True)
        if token_mixing == "mlp":
            layer.self_attn = TokenMixingMLP(self.num_tokens, mlp_dim, dropout)
        self.encoder = TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim, eps=layer_norm_eps))
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # as in ViT/timm: truncated normal, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` to the encoder's input tokens ``(B, 1 + N, dim)``."""
        first = self.stem[0].weight if isinstance(self.stem, ConvStem) else self.patch_embed.proj.weight
        _check_images(x, self.in_channels, self.image_size, first)  # the image shape, not the stem's
        x = self.stem(x)  # (B, C', H, W); the identity without a conv stem
        # (B, N, dim); under autocast the conv returns bf16/fp16: the residual stream stays in the
        # parameters' dtype (the encoder's layers cast their own matmuls)
        tokens = self.patch_embed(x).to(self.cls_token.dtype)
        cls = self.cls_token.expand(x.size(0), -1, -1)  # (B, 1, dim)
        return self.dropout(self.pos_embed(torch.cat([cls, tokens], dim=1)))  # (B, 1+N, dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised output tokens ``(B, 1 + N, dim)``; token 0 is the class token."""
        return self.encoder(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])  # (B, num_classes)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer's attention weights ``(depth, B, heads, 1 + N, 1 + N)`` for images ``x``."""
        attns = [layer.self_attn for layer in self.encoder.layers]
        if not all(hasattr(a, "last_attn_weights") for a in attns):
            raise ValueError("this model has no attention (token_mixing='mlp'): no attention maps")
        for a in attns:
            a.store_weights = True
        try:
            self.forward_features(x)
            return torch.stack([a.last_attn_weights for a in attns])
        finally:
            for a in attns:
                a.store_weights = False
                a.last_attn_weights = None

    # -- interop with Hugging Face transformers --

    @classmethod
    def from_transformers(cls, hf_model: nn.Module) -> ViT:
        """A :class:`ViT` holding a copy of a ``transformers`` ViT's weights (outputs match).

        ``hf_model`` is a ``ViTModel`` (then ``num_classes=0``: the head is the identity, and
        ``forward_features`` equals its ``last_hidden_state``) or a ``ViTForImageClassification``
        (the classifier becomes ``head``; logits match). Works with the module names of
        transformers 4.x (``encoder.layer.N.attention.attention.query``) and 5.x
        (``layers.N.attention.q_proj``). The pooler of a ``ViTModel``, if any, is not copied.
        """
        cfg = getattr(hf_model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) != "vit":
            raise TypeError(
                f"hf_model must be a transformers ViTModel or ViTForImageClassification, got "
                f"{type(hf_model).__name__}"
            )
        if cfg.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' is supported, got {cfg.hidden_act!r}")
        if not getattr(cfg, "qkv_bias", True):
            raise ValueError("only qkv_bias=True is supported")
        image_size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        patch_size = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        state = hf_model.state_dict()
        classifier = state.get("classifier.weight")
        num_classes = 0 if classifier is None else classifier.size(0)
        model = cls(image_size, patch_size, cfg.num_channels, num_classes, cfg.hidden_size,
                    cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
                    dropout=cfg.hidden_dropout_prob, layer_norm_eps=cfg.layer_norm_eps)
        model.load_state_dict(_convert_hf_state_dict(state, cfg.num_hidden_layers))
        ref = next(hf_model.parameters())
        return model.to(device=ref.device, dtype=ref.dtype)


def _convert_hf_state_dict(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Rename a transformers ViT state dict to ours (both 4.x and 5.x layouts)."""
    prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
    out = {
        "cls_token": state[f"{prefix}embeddings.cls_token"],
        "pos_embed.weight": state[f"{prefix}embeddings.position_embeddings"][0],
        "patch_embed.proj.weight": state[f"{prefix}embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state[f"{prefix}embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": state[f"{prefix}layernorm.weight"],
        "encoder.norm.bias": state[f"{prefix}layernorm.bias"],
    }
    v5 = f"{prefix}layers.0.attention.q_proj.weight" in state
    ours_to_theirs = (
        {"self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
         "self_attn.v_proj": "attention.v_proj", "self_attn.out_proj": "attention.o_proj",
         "linear1": "mlp.fc1", "linear2": "mlp.fc2"}
        if v5 else
        {"self_attn.q_proj": "attention.attention.query", "self_attn.k_proj": "attention.attention.key",
         "self_attn.v_proj": "attention.attention.value", "self_attn.out_proj": "attention.output.dense",
         "linear1": "intermediate.dense", "linear2": "output.dense"}
    )
    ours_to_theirs |= {"norm1": "layernorm_before", "norm2": "layernorm_after"}
    layers = f"{prefix}layers" if v5 else f"{prefix}encoder.layer"
    for i in range(depth):
        for ours, theirs in ours_to_theirs.items():
            for p in ("weight", "bias"):
                out[f"encoder.layers.{i}.{ours}.{p}"] = state[f"{layers}.{i}.{theirs}.{p}"]
    if "classifier.weight" in state:
        out["head.weight"], out["head.bias"] = state["classifier.weight"], state["classifier.bias"]
    return out


def attention_rollout(attentions: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema, 2020): attention flow from inputs to outputs.

    ``attentions`` is ``(depth, B, heads, T, T)`` (as :meth:`ViT.attention_maps` returns) or
    ``(depth, B, T, T)``. Heads are averaged; the residual connection is modelled by mixing in the
    identity, :math:`\hat A_l = (1 - r) A_l + r I` (rows renormalised); the layers are multiplied,
    :math:`R = \hat A_L \cdots \hat A_1`. Returns ``R`` ``(B, T, T)``; every row sums to 1.
    ``R[:, 0, 1:]`` is how much each patch contributes to the class token. (A query row with no
    weight at all — fully masked, with ``residual=0`` — stays a row of zeros, never NaN.)

    >>> att = torch.softmax(torch.randn(2, 3, 4, 5, 5), dim=-1)   # (depth, B, heads, T, T)
    >>> r = attention_rollout(att)
    >>> r.shape, torch.allclose(r.sum(-1), torch.ones(3, 5))
    (torch.Size([3, 5, 5]), True)
    """
    _check_rollout_inputs(attentions, residual)
    if attentions.dim() == 5:
        attentions = attentions.mean(dim=2)  # average the heads: (depth, B, T, T)
    if attentions.dtype != torch.float64:
        attentions = attentions.float()  # (bf16/fp16 weights: multiply the layers in fp32)
    eye = torch.eye(attentions.size(-1), dtype=attentions.dtype, device=attentions.device)
    rollout = eye.expand_as(attentions[0]).clone()  # (B, T, T)
    for a in attentions:  # first layer first
        a_hat = (1.0 - residual) * a + residual * eye
        # a query row with no weight at all (fully masked, residual 0) stays zero, not 0/0 = NaN
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a_hat.dtype).tiny)
        rollout = a_hat @ rollout  # later layers multiply from the left
    return rollout


def _check_rollout_inputs(attentions: torch.Tensor, residual: float) -> None:
    check_float_tensor("attentions", attentions, dims=(4, 5))
    if attentions.size(0) == 0:
        raise ValueError(f"attentions must hold at least one layer (depth >= 1), got {describe(attentions)}")
    if attentions.size(-1) != attentions.size(-2):
        raise ValueError(f"attentions must be (depth, B, heads, T, T) or (depth, B, T, T) with square "
                         f"T × T weights, got {tuple(attentions.shape)}")
    check_real("residual", residual, 0.0, 1.0)
    check_finite("attentions", attentions)
    if attentions.numel() and attentions.device.type != "meta" and float(attentions.min()) < 0:
        raise ValueError(f"attentions must be attention weights (>= 0, rows summing to 1), got a minimum "
                         f"of {float(attentions.min()):.3g}")


def random_shift(images: torch.Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros (no flips).

    Digits are not symmetric (a flipped 2 is not a 2), so shifts are the safe augmentation.

    >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 1] = 1.0
    >>> y = random_shift(x, max_shift=1, generator=torch.Generator().manual_seed(0))
    >>> y.shape, y.sum().item()          # same size, the pixel moved by at most one
    (torch.Size([1, 1, 4, 4]), 1.0)
    """
    check_tensor("images", images, dims=4)
    check_non_negative_int("max_shift", max_shift)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    m = max_shift
    padded = F.pad(images, (m, m, m, m))  # (B, C, H + 2m, W + 2m)
    dy = torch.randint(0, 2 * m + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * m + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=images.device))  # (B, W)
    idx_b = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {describe(model)}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

