r"""Multi-head latent attention (MLA, DeepSeek-V2, 2024): cache one small latent per token.

Multi-head attention caches, per token and layer, a key and a value for every head:
``2 · H · d_h`` numbers. Grouped-query and multi-query attention share keys and values between
heads to shrink that. MLA instead **compresses**: each token's hidden state ``x`` is projected
down to one latent vector ``c = W_DKV x`` of ``d_c`` numbers (512 in DeepSeek-V2, against
``2 · 128 · 128 = 32 768`` for its 128 heads), and the keys and values of every head are
projected *up* from it, ``k_h = W_UK_h c``, ``v_h = W_UV_h c``. Only ``c`` is cached.

RoPE does not survive that: a rotation that depends on the position sits between ``q`` and
``W_UK``. So MLA adds a small **decoupled** part: ``d_R`` extra query dims per head and ``d_R``
key dims shared by all heads (``k_R = RoPE(W_KR x)``), rotated as usual and cached too. A
token's cache entry is ``d_c + d_R`` numbers (576 in DeepSeek-V2), whatever the number of heads.

.. math::

   \text{score}_{h}(i, j) = \frac{q_{h,i}^{\text{C}} \cdot W_{UK,h}\, c_j
                                  + q_{h,i}^{\text{R}} \cdot k^{\text{R}}_j}{\sqrt{d_h + d_R}},
   \qquad o_{h,i} = \sum_j p_{h}(i, j)\, W_{UV,h}\, c_j .

**Weight absorption.** ``q · (W_UK c) = (W_UKᵀ q) · c``: fold ``W_UK`` into the query, and
attention runs directly on the cached latents — every head attends to the *same* keys
``[c; k_R]`` (one shared key head, as in multi-query attention) with values ``c``; ``W_UV`` is
applied once to the weighted sum of latents. No per-head key or value is ever built at decoding
time. :class:`MultiHeadLatentAttention` computes both forms (``absorbed=False/True``); the tests
prove them equal, and equal to transformers' ``DeepseekV2Attention`` with the same weights.

>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> mla = MultiHeadLatentAttention(d_model=64, num_heads=4, kv_rank=16, q_rank=24, nope_dim=8,
...                                rope_dim=4, v_dim=8)
>>> x = torch.randn(2, 10, 64)
>>> torch.allclose(mla(x), mla(x, absorbed=True), atol=1e-5)
True
>>> cache = mla.new_cache(batch=2, max_len=10)
>>> steps = [mla(x[:, t : t + 1], cache=cache, absorbed=True) for t in range(10)]
>>> torch.allclose(torch.cat(steps, 1), mla(x), atol=1e-5), cache.bytes_per_token()  # (16 + 4) x 4
(True, 80)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from course_utils.attention import causal_mask, scaled_dot_product_attention
from course_utils.checks import (
    check_bool,
    check_device,
    check_dtype,
    check_float_tensor,
    check_instance,
    check_int,
    check_module_input,
    check_optional_sizes,
    check_positive_int,
    check_real,
    check_same_device,
    check_same_dtype,
    check_same_size,
    check_shape,
    check_sizes,
)
from course_utils.kv_cache import KVCacheBase
from course_utils.positional import RotaryEmbedding

__all__ = [
    "DEEPSEEK_V2",
    "LatentKVCache",
    "MLAConfig",
    "MultiHeadLatentAttention",
    "kv_cache_bytes_per_token",
]


@dataclass(frozen=True)
class MLAConfig:
    """The attention sizes of a model: what its KV cache per token depends on."""

    d_model: int
    num_heads: int
    head_dim: int  # d_h: per-head key/value size of the MHA/GQA/MQA variants; MLA's nope_dim
    kv_rank: int  # d_c: the cached latent
    rope_dim: int  # d_R: the decoupled RoPE key, shared by the heads, cached too
    q_rank: int | None
    num_layers: int

    def __post_init__(self) -> None:
        check_sizes(d_model=self.d_model, num_heads=self.num_heads, head_dim=self.head_dim,
                    kv_rank=self.kv_rank, rope_dim=self.rope_dim, num_layers=self.num_layers)
        check_optional_sizes(q_rank=self.q_rank)


#: DeepSeek-V2 (DeepSeek-AI, 2024, arXiv:2405.04434, section 2.1 and appendix; the released
#: ``config.json``): hidden size 5120, 128 heads of 128 dims, d_c = 512, d'_c = 1536, d_R = 64,
#: 60 layers.
DEEPSEEK_V2 = MLAConfig(
    d_model=5120, num_heads=128, head_dim=128, kv_rank=512, rope_dim=64, q_rank=1536, num_layers=60
)


def kv_cache_bytes_per_token(
    kind: str, config: MLAConfig, kv_heads: int | None = None, bytes_per_number: int = 2
) -> int:
    """KV-cache bytes per token for all layers (DeepSeek-V2's Table 1, in bytes).

    * ``"mha"``: ``2 · H · d_h`` numbers per layer (a key and a value per head);
    * ``"gqa"``: ``2 · kv_heads · d_h`` (``kv_heads`` groups share a key/value head);
    * ``"mqa"``: ``2 · d_h`` (one key/value head for all);
    * ``"mla"``: ``d_c + d_R`` (the latent and the shared RoPE key).

    >>> kv_cache_bytes_per_token("mla", DEEPSEEK_V2) // DEEPSEEK_V2.num_layers   # (512 + 64) x 2
    1152
    """
    check_instance("config", config, MLAConfig)
    check_positive_int("bytes_per_number", bytes_per_number)
    c = config
    per_layer = {
        "mha": 2 * c.num_heads * c.head_dim,
        "gqa": 2 * (kv_heads or 0) * c.head_dim,
        "mqa": 2 * c.head_dim,
        "mla": c.kv_rank + c.rope_dim,
    }
    if kind not in per_layer:
        raise ValueError(f"kind must be one of {', '.join(per_layer)}, got {kind!r}")
    if kind == "gqa":
        check_positive_int("kv_heads", kv_heads)
    return per_layer[kind] * c.num_layers * bytes_per_number


class LatentKVCache(KVCacheBase):
    """MLA's cache: per layer, the latents ``c (B, 1, L, d_c)`` and the RoPE keys
    ``k_R (B, 1, L, d_R)``.

    The interface of :class:`~course_utils.kv_cache.KVCache`, with the latent in the role of the
    key and the RoPE key in the role of the value: ``update(layer, c_new, kr_new) -> (c, k_R)``.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        kv_rank: int,
        rope_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(num_layers=num_layers, batch=batch, kv_rank=kv_rank, rope_dim=rope_dim,
                    max_len=max_len)
        check_dtype("dtype", dtype)
        device = None if device is None else check_device("device", device)
        self.latents = [
            torch.empty(batch, 1, max_len, kv_rank, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]
        self.rope_keys = [
            torch.empty(batch, 1, max_len, rope_dim, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]
        self._len = [0] * num_layers
        self.num_layers, self.max_len = num_layers, max_len

    def length(self, layer: int = 0) -> int:
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        return self._len[layer]

    def reset(self) -> None:
        self._len = [0] * self.num_layers

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length`` (at every layer): decode again from there
        (speculative decoding rolls back rejected tokens the same way; timing loops reuse a cache).
        """
        check_int("length", length, low=0, high=self.max_len)
        self._len = [min(n, length) for n in self._len]

    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in self.latents + self.rope_keys)

    def bytes_per_token(self) -> int:
        """Bytes one token adds to the cache (all layers, one batch row)."""
        return self.nbytes() // (self.latents[0].size(0) * self.max_len)

    def update(
        self, layer: int, c_new: torch.Tensor, kr_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_update(layer, c_new, kr_new)
        start, t = self._len[layer], c_new.size(2)
        if start + t > self.max_len:
            raise ValueError(
                f"latent cache full: {start} + {t} new positions > max_len={self.max_len}"
            )
        self.latents[layer][:, :, start : start + t] = c_new
        self.rope_keys[layer][:, :, start : start + t] = kr_new
        self._len[layer] = end = start + t
        return self.latents[layer][:, :, :end], self.rope_keys[layer][:, :, :end]

    def _check_update(self, layer: int, c_new: torch.Tensor, kr_new: torch.Tensor) -> None:
        """``layer`` in range; ``c_new (B, 1, T, d_c)`` and ``kr_new (B, 1, T, d_R)`` shaped,
        typed and placed as the cache's buffers, with one number of new tokens ``T``."""
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        for name, t, buf in (("c_new", c_new, self.latents[0]), ("kr_new", kr_new,
                                                                 self.rope_keys[0])):
            b, h, _, d = buf.shape
            check_float_tensor(name, t, dims=4)
            check_shape(name, t, (b, h, None, d), what=f"(B, 1, T, {d}) = {(b, h, 'T', d)} (the "
                        f"cache holds B={b} sequences)")
            check_same_dtype(**{name: t, "cache": buf})
            check_same_device(**{name: t, "cache": buf})
        check_same_size(2, "the new tokens", c_new=c_new, kr_new=kr_new)


class MultiHeadLatentAttention(nn.Module):
    """Causal multi-head latent attention (DeepSeek-V2), naive or weight-absorbed.

    ``forward(x (B, T, d_model), cache=None, layer=0, absorbed=False) -> (B, T, d_model)``.
    With a :class:`LatentKVCache` (``new_cache``), ``x`` holds the new tokens; their latents and
    RoPE keys are appended and attention covers everything cached.

    Projections (the paper's names; transformers' in brackets): ``w_dq`` [q_a_proj] and
    ``q_norm`` then ``w_uq`` / ``w_qr`` [q_b_proj] for the queries (``q_rank=None``: ``w_uq`` /
    ``w_qr`` read ``x`` directly); ``w_dkv`` and ``w_kr`` [kv_a_proj_with_mqa], ``kv_norm``
    [kv_a_layernorm], ``w_uk`` and ``w_uv`` [kv_b_proj]; ``w_o`` [o_proj]. RoPE is the course's
    :class:`~course_utils.positional.RotaryEmbedding` ("rotate half"; DeepSeek's interleaved
    pairs are the same rotation up to a fixed reordering of the RoPE dims).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        kv_rank: int,
        q_rank: int | None,
        nope_dim: int,
        rope_dim: int,
        v_dim: int,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_sizes(d_model=d_model, num_heads=num_heads, kv_rank=kv_rank, nope_dim=nope_dim,
                    rope_dim=rope_dim, v_dim=v_dim)
        check_optional_sizes(q_rank=q_rank)
        check_real("eps", eps, 0.0, low_open=True)
        self.d_model, self.num_heads, self.kv_rank, self.q_rank = (
            d_model,
            num_heads,
            kv_rank,
            q_rank,
        )
        self.nope_dim, self.rope_dim, self.v_dim = nope_dim, rope_dim, v_dim
        h = num_heads
        q_in = d_model if q_rank is None else q_rank
        self.w_dq = None if q_rank is None else nn.Linear(d_model, q_rank, bias=False)
        self.q_norm = None if q_rank is None else nn.RMSNorm(q_rank, eps=eps)
        self.w_uq = nn.Linear(q_in, h * nope_dim, bias=False)  # content part of the queries
        self.w_qr = nn.Linear(q_in, h * rope_dim, bias=False)  # decoupled RoPE queries
        self.w_dkv = nn.Linear(d_model, kv_rank, bias=False)  # down to the latent c (cached)
        self.kv_norm = nn.RMSNorm(kv_rank, eps=eps)
        self.w_kr = nn.Linear(d_model, rope_dim, bias=False)  # the shared RoPE key (cached)
        self.w_uk = nn.Linear(kv_rank, h * nope_dim, bias=False)  # latent -> per-head keys
        self.w_uv = nn.Linear(kv_rank, h * v_dim, bias=False)  # latent -> per-head values
        self.w_o = nn.Linear(h * v_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(rope_dim)
        self.scale = 1.0 / math.sqrt(nope_dim + rope_dim)

    def to_transformers(self) -> nn.Module:
        """transformers' ``DeepseekV2Attention`` holding a copy of these weights (eager attention).

        Call it as ``hf(x, attention_mask=causal_float_mask, position_embeddings=freqs)`` with
        ``freqs = DeepseekV2RotaryEmbedding(hf.config)(x, positions[None])``. DeepSeek's RoPE
        rotates the pairs of dims ``(2i, 2i + 1)`` where the course rotates ``(i, i + d_R/2)``:
        the RoPE rows of the copied weights are reordered to match, which changes no score.
        Needs ``q_rank`` (transformers' layer always compresses the queries when it is set).
        """
        from transformers.models.deepseek_v2 import configuration_deepseek_v2, modeling_deepseek_v2

        h, nope, rope, v = self.num_heads, self.nope_dim, self.rope_dim, self.v_dim
        config = configuration_deepseek_v2.DeepseekV2Config(
            hidden_size=self.d_model,
            num_attention_heads=h,
            num_key_value_heads=h,
            q_lora_rank=self.q_rank,
            kv_lora_rank=self.kv_rank,
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=v,
            attention_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope.base},
            rms_norm_eps=self.kv_norm.eps,
        )
        config._attn_implementation = "eager"
        hf = modeling_deepseek_v2.DeepseekV2Attention(config, layer_idx=0)
        hf = hf.to(dtype=self.w_o.weight.dtype, device=self.w_o.weight.device).eval()
        # course RoPE dim i pairs with i + rope/2; DeepSeek's dim 2i with 2i + 1
        to_hf = torch.cat([torch.arange(0, rope, 2), torch.arange(1, rope, 2)]).argsort()
        with torch.no_grad():
            if self.w_dq is not None:
                hf.q_a_proj.weight.copy_(self.w_dq.weight)
                hf.q_a_layernorm.weight.copy_(self.q_norm.weight)
                q_b = hf.q_b_proj
            else:
                q_b = hf.q_proj
            q_rope = self.w_qr.weight.view(h, rope, -1)[:, to_hf]
            q_b.weight.copy_(
                torch.cat([self.w_uq.weight.view(h, nope, -1), q_rope], 1).flatten(0, 1)
            )
            hf.kv_a_proj_with_mqa.weight.copy_(
                torch.cat([self.w_dkv.weight, self.w_kr.weight[to_hf]])
            )
            hf.kv_a_layernorm.weight.copy_(self.kv_norm.weight)
            kv_b = torch.cat(
                [self.w_uk.weight.view(h, nope, -1), self.w_uv.weight.view(h, v, -1)], 1
            )
            hf.kv_b_proj.weight.copy_(kv_b.flatten(0, 1))
            hf.o_proj.weight.copy_(self.w_o.weight)
        return hf

    def new_cache(self, batch: int, max_len: int, num_layers: int = 1) -> LatentKVCache:
        w = self.w_dkv.weight
        return LatentKVCache(
            num_layers, batch, self.kv_rank, self.rope_dim, max_len, dtype=w.dtype, device=w.device
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: LatentKVCache | None = None,
        layer: int = 0,
        absorbed: bool = False,
    ) -> torch.Tensor:
        self._check_input(x, cache, absorbed)
        b, t, _ = x.shape
        h = self.num_heads
        start = 0 if cache is None else cache.length(layer)
        positions = torch.arange(start, start + t, device=x.device)

        cq = x if self.w_dq is None else self.q_norm(self.w_dq(x))  # (B, T, q_rank)
        q_c = self.w_uq(cq).view(b, t, h, self.nope_dim).transpose(1, 2)  # (B, H, T, d_h)
        q_r = self.rope(self.w_qr(cq).view(b, t, h, self.rope_dim).transpose(1, 2), positions)
        c = self.kv_norm(self.w_dkv(x))[:, None]  # (B, 1, T, d_c): the latent
        k_r = self.rope(self.w_kr(x)[:, None], positions)  # (B, 1, T, d_R): shared by all heads
        if cache is not None:
            c, k_r = cache.update(layer, c, k_r)  # (B, 1, L, d_c), (B, 1, L, d_R)
        mask = causal_mask(t, c.size(2), device=x.device, offset=c.size(2) - t)  # (T, L)

        if absorbed:
            out = self._absorbed(q_c, q_r, c, k_r, mask)
        else:
            out = self._naive(q_c, q_r, c, k_r, mask)
        return self.w_o(out.transpose(1, 2).reshape(b, t, h * self.v_dim))

    def _check_input(self, x: torch.Tensor, cache: LatentKVCache | None, absorbed: bool) -> None:
        """``x (B, T, d_model)`` with the layer's dtype and device (and the cache's ``B``)."""
        check_bool("absorbed", absorbed)
        if cache is None:
            check_module_input("x", x, self.w_dkv.weight, (None, None, self.d_model),
                               what=f"(B, T, d_model={self.d_model})")
            return
        check_instance("cache", cache, LatentKVCache)
        b = cache.latents[0].size(0)
        check_module_input("x", x, self.w_dkv.weight, (b, None, self.d_model),
                           what=f"(B={b}, T, d_model={self.d_model}) (B from the cache)")

    def _naive(self, q_c, q_r, c, k_r, mask):
        """Up-project every cached latent into per-head keys and values, then attend."""
        b, h, length = q_c.size(0), self.num_heads, c.size(2)
        k_c = self.w_uk(c[:, 0]).view(b, length, h, self.nope_dim).transpose(1, 2)  # (B, H, L, d_h)
        v = self.w_uv(c[:, 0]).view(b, length, h, self.v_dim).transpose(1, 2)  # (B, H, L, d_v)
        q = torch.cat([q_c, q_r], dim=-1)  # (B, H, T, d_h + d_R)
        k = torch.cat(
            [k_c, k_r.expand(b, h, length, self.rope_dim)], dim=-1
        )  # (B, H, L, d_h + d_R)
        return scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def _absorbed(self, q_c, q_r, c, k_r, mask):
        """Fold W_UK into the queries and W_UV after the weighted sum: attend on the latents."""
        h = self.num_heads
        w_uk = self.w_uk.weight.view(h, self.nope_dim, self.kv_rank)  # (H, d_h, d_c)
        w_uv = self.w_uv.weight.view(h, self.v_dim, self.kv_rank)  # (H, d_v, d_c)
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_c, w_uk)  # W_UKᵀ q: (B, H, T, d_c)
        q = torch.cat([q_lat, q_r], dim=-1)  # (B, H, T, d_c + d_R)
        k = torch.cat([c, k_r], dim=-1)  # (B, 1, L, d_c + d_R): ONE key head shared by all heads
        o_lat = scaled_dot_product_attention(
            q, k, c, attn_mask=mask, scale=self.scale
        )  # (B, H, T, d_c)
        return torch.einsum("bhtc,hvc->bhtv", o_lat, w_uv)  # W_UV applied once: (B, H, T, d_v)
