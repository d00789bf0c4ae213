"""Transformer encoder and decoder blocks, built from :class:`MultiHeadAttention`.

Same constructor arguments, same submodule names and same forward arguments as
``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` / ``TransformerEncoder`` /
``TransformerDecoder`` — so weights copy across (``from_torch``) and the tests can prove the
outputs equal. Differences, on purpose:

* ``batch_first=True`` by default (``(B, T, E)``, as in every notebook of the course);
* masks follow the course convention: a **boolean** mask means ``True`` = *may attend*
  (PyTorch's ``nn.Transformer*`` use ``True`` = *not allowed*: pass ``~mask``); float masks are
  added to the scores in both; ``*_key_padding_mask`` is ``True`` = padding in both;
* ``is_causal=True`` really builds the causal mask (in PyTorch it is only a hint that the
  mask you pass is causal);
* no fused "fast path": one readable code path.

Post-LN or pre-LN? The paper (Vaswani et al., 2017) normalises *after* each residual addition
("post-LN": ``x = norm(x + sublayer(x))``, ``norm_first=False``). Xiong et al. (2020, "On Layer
Normalization in the Transformer Architecture") show that with post-LN the gradients near the
output are large at initialisation, so it needs a learning-rate warm-up; normalising *inside*
the residual branch ("pre-LN": ``x = x + sublayer(norm(x))``, ``norm_first=True``) keeps an
identity path from input to output and trains stably without warm-up. GPT-2, ViT and most
modern models are pre-LN; they then add a final LayerNorm (``norm=`` of the stacks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.attention import MultiHeadAttention
from course_utils.checks import (
    check_bools,
    check_divisible,
    check_instance,
    check_instances,
    check_optional_padding_mask,
    check_positive_int,
    check_probability,
    check_real,
    check_sequences,
    check_sizes,
)
from course_utils.kv_cache import KVCache, KVCacheBase

__all__ = [
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]

Activation = str | Callable[[torch.Tensor], torch.Tensor]
Sublayer = Callable[[torch.Tensor], torch.Tensor]
_NORM = (nn.Module, type(None))  # a final norm of a stack, or none


def _get_activation(activation: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu  # the exact (erf) GELU, as in torch and BERT
    if callable(activation):
        return activation
    raise ValueError(f'activation must be "relu", "gelu" or a callable, got {activation!r}')


def _check_layer_args(d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                      layer_norm_eps: float, **flags: bool) -> None:
    check_divisible("d_model", d_model, "nhead", nhead)
    check_sizes(dim_feedforward=dim_feedforward)
    check_probability("dropout", dropout)
    check_real("layer_norm_eps", layer_norm_eps, 0.0, low_open=True)
    check_bools(**flags)


def _torch_activation(module: nn.Module) -> Activation:
    act = module.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    return act


class TransformerEncoderLayer(nn.Module):
    r"""One encoder block: self-attention, then a position-wise feed-forward network.

    post-LN (``norm_first=False``, the paper)::

        x = norm1(x + dropout1(self_attn(x)))
        x = norm2(x + dropout2(linear2(dropout(activation(linear1(x))))))

    pre-LN (``norm_first=True``)::

        x = x + dropout1(self_attn(norm1(x)))
        x = x + dropout2(linear2(dropout(activation(linear1(norm2(x))))))

    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``; ``src`` is
    ``(B, T, E)`` (``(T, B, E)`` if ``batch_first=False``); ``src_mask`` bool (True = may
    attend) or float, ``(T, T)``, ``(B, T, T)`` or ``(B, H, T, T)``.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    >>> ours = TransformerEncoderLayer.from_torch(ref).eval()
    >>> x = torch.randn(2, 5, 16)
    >>> causal = torch.ones(5, 5, dtype=torch.bool).tril()       # True = may attend
    >>> torch.allclose(ours(x, src_mask=causal), ref(x, src_mask=~causal), atol=1e-5)
    True
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_layer_args(d_model, nhead, dim_feedforward, dropout, layer_norm_eps,
                          batch_first=batch_first, norm_first=norm_first, bias=bias)
        self.d_model, self.nhead = d_model, nhead
        self.batch_first, self.norm_first = batch_first, norm_first
        # inside the layer we always work batch-first; forward() transposes if needed
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias)
        # the feed-forward network: d_model -> dim_feedforward -> d_model, at every position
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _get_activation(activation)

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        check_sequences(self.linear1.weight, self.batch_first, flags={"is_causal": is_causal},
                        src=(src, self.d_model))
        x = src if self.batch_first else src.transpose(0, 1)  # (B, T, E)
        check_optional_padding_mask("src_key_padding_mask", src_key_padding_mask, x)
        if self.norm_first:  # pre-LN: normalise inside the residual branch
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:  # post-LN (the paper): normalise after the residual addition
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x if self.batch_first else x.transpose(0, 1)

    def _sa_block(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        x, _ = self.self_attn(
            x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal
        )
        return self.dropout1(x)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)

    @classmethod
    def from_torch(cls, module: nn.TransformerEncoderLayer) -> TransformerEncoderLayer:
        """Copy the configuration and weights of a ``torch.nn.TransformerEncoderLayer``.

        Remember to invert boolean masks: torch's ``src_mask`` True = *not* allowed.
        """
        check_instance("module", module, nn.TransformerEncoderLayer)
        return _copy_layer(cls, module, ["self_attn"], n_norms=2)


class TransformerDecoderLayer(nn.Module):
    r"""One decoder block: masked self-attention, cross-attention to ``memory``, feed-forward.

    post-LN (``norm_first=False``, the paper)::

        x = norm1(x + dropout1(self_attn(x)))                # usually causal
        x = norm2(x + dropout2(multihead_attn(x, memory)))   # queries x, keys/values memory
        x = norm3(x + dropout3(ff(x)))

    pre-LN (``norm_first=True``): ``x = x + dropoutN(sublayer(normN(x)))`` for each.

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)``.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> layer = TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
    >>> tgt, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)   # (B, T, E), (B, S, E)
    >>> layer(tgt, memory, tgt_is_causal=True).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_layer_args(d_model, nhead, dim_feedforward, dropout, layer_norm_eps,
                          batch_first=batch_first, norm_first=norm_first, bias=bias)
        self.d_model, self.nhead = d_model, nhead
        self.batch_first, self.norm_first = batch_first, norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias)
        self.multihead_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, bias=bias)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _get_activation(activation)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        flags = {"tgt_is_causal": tgt_is_causal, "memory_is_causal": memory_is_causal}
        check_sequences(self.linear1.weight, self.batch_first, flags=flags,
                        tgt=(tgt, self.d_model), memory=(memory, self.d_model))
        x = tgt if self.batch_first else tgt.transpose(0, 1)  # (B, T, E)
        mem = memory if self.batch_first else memory.transpose(0, 1)  # (B, S, E)
        check_optional_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, x)
        check_optional_padding_mask("memory_key_padding_mask", memory_key_padding_mask, mem)

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                                  is_causal=tgt_is_causal)[0]

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            # queries from the decoder, keys and values from the encoder output
            return self.multihead_attn(h, mem, mem, attn_mask=memory_mask,
                                       key_padding_mask=memory_key_padding_mask,
                                       is_causal=memory_is_causal)[0]

        x = self._blocks(x, self_attention, cross_attention)
        return x if self.batch_first else x.transpose(0, 1)

    def step(
        self,
        tgt: torch.Tensor,
        cache: KVCacheBase,
        layer: int,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer on new tokens only: ``tgt (B, T_new, E)`` after the ``cache.length(layer)``
        tokens already decoded. Causal self-attention appends the new keys and values to
        ``cache`` at ``layer`` and reads the rest from it; cross-attention uses ``memory_kv``,
        the memory's keys and values projected once by :meth:`project_memory`. The result
        equals the last ``T_new`` rows of ``forward(whole_prefix, memory, tgt_is_causal=True)``.
        """
        if self.training:
            raise RuntimeError("cached decoding is for inference: call model.eval() first")
        check_sequences(self.linear1.weight, self.batch_first, tgt=(tgt, self.d_model))
        check_instances(cache=(cache, KVCacheBase), memory_kv=(memory_kv, (tuple, list)))
        x = tgt if self.batch_first else tgt.transpose(0, 1)  # (B, T_new, E)

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, is_causal=True, cache=cache, layer=layer)[0]

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            return self.multihead_attn(h, projected_kv=memory_kv,
                                       key_padding_mask=memory_key_padding_mask)[0]

        x = self._blocks(x, self_attention, cross_attention)
        return x if self.batch_first else x.transpose(0, 1)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of ``memory``, ``(B, H, S, D)`` each."""
        check_sequences(self.linear1.weight, self.batch_first, memory=(memory, self.d_model))
        mem = memory if self.batch_first else memory.transpose(0, 1)  # (B, S, E)
        return self.multihead_attn.project_kv(mem)

    def _blocks(self, x: torch.Tensor, self_attention: Sublayer, cross_attention: Sublayer
                ) -> torch.Tensor:
        """The three residual sub-layers, pre-LN or post-LN, on ``x (B, T, E)``."""
        if self.norm_first:  # pre-LN
            x = x + self.dropout1(self_attention(self.norm1(x)))
            x = x + self.dropout2(cross_attention(self.norm2(x)))
            x = x + self._ff_block(self.norm3(x))
        else:  # post-LN (the paper)
            x = self.norm1(x + self.dropout1(self_attention(x)))
            x = self.norm2(x + self.dropout2(cross_attention(x)))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout3(x)

    @classmethod
    def from_torch(cls, module: nn.TransformerDecoderLayer) -> TransformerDecoderLayer:
        """Copy the configuration and weights of a ``torch.nn.TransformerDecoderLayer``.

        Remember to invert boolean masks: torch's ``tgt_mask``/``memory_mask`` True = *not*
        allowed.
        """
        check_instance("module", module, nn.TransformerDecoderLayer)
        return _copy_layer(cls, module, ["self_attn", "multihead_attn"], n_norms=3)


def _copy_layer(cls: type[nn.Module], module: nn.Module, attentions: list[str], n_norms: int):
    """A layer of class ``cls`` with the configuration and weights of torch's ``module``."""
    new = cls(
        module.self_attn.embed_dim,
        module.self_attn.num_heads,
        dim_feedforward=module.linear1.out_features,
        dropout=module.dropout.p,
        activation=_torch_activation(module),
        layer_norm_eps=module.norm1.eps,
        batch_first=module.self_attn.batch_first,
        norm_first=module.norm_first,
        bias=module.linear1.bias is not None,
    )
    for name in attentions:
        attn = MultiHeadAttention.from_torch(getattr(module, name))
        attn.batch_first = True  # our layers transpose once at the top, not inside the attention
        setattr(new, name, attn)
    for name in ["linear1", "linear2"] + [f"norm{i}" for i in range(1, n_norms + 1)]:
        getattr(new, name).load_state_dict(getattr(module, name).state_dict())
    ref = module.linear1.weight
    return new.to(device=ref.device, dtype=ref.dtype)


class TransformerEncoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer``, then an optional ``norm``.

    ``forward(src, mask=None, src_key_padding_mask=None, is_causal=False)`` passes the masks to
    every layer. (A pre-LN stack usually ends with ``norm=nn.LayerNorm(d_model)``.)

    >>> layer = TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
    >>> enc = TransformerEncoder(layer, num_layers=3)
    >>> len(enc.layers), enc.layers[0] is not enc.layers[1]
    (3, True)
    >>> enc(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        check_positive_int("num_layers", num_layers)
        check_instances(encoder_layer=(encoder_layer, TransformerEncoderLayer), norm=(norm, _NORM))
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(
                x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal
            )
        return x if self.norm is None else self.norm(x)

    @classmethod
    def from_torch(cls, module: nn.TransformerEncoder) -> TransformerEncoder:
        """Copy a ``torch.nn.TransformerEncoder`` (every layer and the final norm)."""
        check_instance("module", module, nn.TransformerEncoder)
        layers = [TransformerEncoderLayer.from_torch(layer) for layer in module.layers]
        new = cls(layers[0], len(layers), norm=copy.deepcopy(module.norm))
        new.layers = nn.ModuleList(layers)
        return new


class TransformerDecoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``decoder_layer``, then an optional ``norm``.

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)``: every layer
    attends to the same ``memory`` (the encoder's output).

    Decoding with a KV cache, one token (or a chunk) at a time: :meth:`new_cache` and
    :meth:`project_memory` once per batch, then :meth:`step` on the new tokens only. Each
    step projects only the new tokens' keys and values; the memory's are projected once.

    >>> layer = TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
    >>> dec = TransformerDecoder(layer, num_layers=2, norm=nn.LayerNorm(16)).eval()
    >>> tgt, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    >>> full = dec(tgt, memory, tgt_is_causal=True)                        # (B, T, E)
    >>> cache, memory_kv = dec.new_cache(2, max_len=5), dec.project_memory(memory)
    >>> steps = [dec.step(tgt[:, :2], cache, memory_kv)]                   # a 2-token prefix
    >>> steps += [dec.step(tgt[:, t : t + 1], cache, memory_kv) for t in range(2, 5)]
    >>> torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    True
    """

    def __init__(
        self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        check_positive_int("num_layers", num_layers)
        check_instances(decoder_layer=(decoder_layer, TransformerDecoderLayer), norm=(norm, _NORM))
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(
                x,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=tgt_is_causal,
                memory_is_causal=memory_is_causal,
            )
        return x if self.norm is None else self.norm(x)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty self-attention :class:`~course_utils.kv_cache.KVCache` for ``batch``
        sequences of up to ``max_len`` tokens (dtype and device of the weights by default)."""
        attn, weight = self.layers[0].self_attn, self.layers[0].linear1.weight
        return KVCache(self.num_layers, batch, attn.num_heads, attn.head_dim, max_len,
                       dtype=dtype or weight.dtype, device=device or weight.device)

    def project_memory(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values of ``memory``, computed once."""
        return [layer.project_memory(memory) for layer in self.layers]

    def step(
        self,
        tgt: torch.Tensor,
        cache: KVCacheBase,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        memory_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`TransformerDecoderLayer.step` through every layer (layer ``i`` uses slot ``i``
        of ``cache`` and ``memory_kv[i]``), then ``norm``: the outputs for the new tokens."""
        check_instances(cache=(cache, KVCacheBase), memory_kv=(memory_kv, (list, tuple)))
        if len(memory_kv) != self.num_layers:
            raise ValueError(f"memory_kv must hold one (k, v) pair per layer ({self.num_layers}), "
                             f"got {len(memory_kv)}: use project_memory(memory)")
        x = tgt
        for i, layer in enumerate(self.layers):
            x = layer.step(x, cache, i, memory_kv[i], memory_key_padding_mask)
        return x if self.norm is None else self.norm(x)

    @classmethod
    def from_torch(cls, module: nn.TransformerDecoder) -> TransformerDecoder:
        """Copy a ``torch.nn.TransformerDecoder`` (every layer and the final norm)."""
        check_instance("module", module, nn.TransformerDecoder)
        layers = [TransformerDecoderLayer.from_torch(layer) for layer in module.layers]
        new = cls(layers[0], len(layers), norm=copy.deepcopy(module.norm))
        new.layers = nn.ModuleList(layers)
        return new
