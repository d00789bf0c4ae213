"""Our encoder/decoder blocks equal torch.nn.Transformer* (weights copied with from_torch) and
a Hugging Face BERT layer.

How the comparison stays valid:
* eval mode and dropout=0.0, so both sides are deterministic;
* autograd stays enabled and the parameters require grad, which keeps PyTorch off its fused
  inference "fast path" (it checks exactly this), and ``enable_nested_tensor=False`` on
  ``nn.TransformerEncoder`` so padded positions are not dropped from its output;
* boolean masks are inverted for torch (torch: True = NOT allowed; ours: True = may attend);
* padding never covers all keys of a sequence (torch would give NaN for those rows).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import randn
from torch import nn

from course_utils.attention import MultiHeadAttention, causal_mask
from course_utils.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

B, T, S, E, H, FF = 3, 5, 7, 16, 4, 32
ATOL = 1e-5




def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (torch initialises biases and LayerNorms to 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def padding(lengths: list[int], total: int) -> torch.Tensor:
    """(B, total) key padding mask, True = padding, from the true lengths."""
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


def maybe_seq_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


GRID = list(itertools.product([False, True], ["relu", "gelu"], [True, False]))


@pytest.mark.parametrize("norm_first,activation,batch_first", GRID)
def test_encoder_layer_matches_torch(norm_first: bool, activation: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        E, H, FF, dropout=0.0, activation=activation, batch_first=batch_first,
        norm_first=norm_first,
    )  # fmt: skip
    ref = randomise_(ref).eval()
    ours = TransformerEncoderLayer.from_torch(ref).eval()
    assert (ours.norm_first, ours.batch_first) == (norm_first, batch_first)
    x = maybe_seq_first(randn(B, T, E), batch_first)
    pad = padding([5, 3, 4], T)
    mask = torch.rand(T, T, generator=torch.Generator().manual_seed(1)) < 0.7
    mask[:, 0] = True

    cases = [
        (dict(), dict()),
        (dict(src_key_padding_mask=pad), dict(src_key_padding_mask=pad)),
        (dict(src_mask=mask), dict(src_mask=~mask)),
        (dict(is_causal=True, src_key_padding_mask=pad),
         dict(src_mask=~causal_mask(T), is_causal=True, src_key_padding_mask=pad)),
        (dict(src_mask=mask.float().log()), dict(src_mask=mask.float().log())),  # additive
    ]  # fmt: skip
    for our_kwargs, torch_kwargs in cases:
        torch.testing.assert_close(ours(x, **our_kwargs), ref(x, **torch_kwargs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first,activation,batch_first", GRID)
def test_decoder_layer_matches_torch(norm_first: bool, activation: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(
        E, H, FF, dropout=0.0, activation=activation, batch_first=batch_first,
        norm_first=norm_first,
    )  # fmt: skip
    ref = randomise_(ref).eval()
    ours = TransformerDecoderLayer.from_torch(ref).eval()
    tgt = maybe_seq_first(randn(B, T, E), batch_first)
    mem = maybe_seq_first(randn(B, S, E, seed=1), batch_first)
    tgt_pad, mem_pad = padding([5, 2, 4], T), padding([7, 6, 1], S)
    mem_mask = torch.rand(T, S, generator=torch.Generator().manual_seed(2)) < 0.6
    mem_mask[:, 0] = True
    causal = causal_mask(T)

    ours_out = ours(
        tgt, mem, tgt_is_causal=True, memory_mask=mem_mask,
        tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=mem_pad,
    )  # fmt: skip
    ref_out = ref(
        tgt, mem, tgt_mask=~causal, tgt_is_causal=True, memory_mask=~mem_mask,
        tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=mem_pad,
    )  # fmt: skip
    torch.testing.assert_close(ours_out, ref_out, atol=ATOL, rtol=0)
    # float (additive) masks mean the same on both sides
    fmask = randn(T, T, seed=3)
    torch.testing.assert_close(
        ours(tgt, mem, tgt_mask=fmask), ref(tgt, mem, tgt_mask=fmask), atol=ATOL, rtol=0
    )
    # memory_is_causal: cross-attention with a (T, S) causal mask
    torch.testing.assert_close(
        ours(tgt, mem, memory_is_causal=True),
        ref(tgt, mem, memory_mask=~causal_mask(T, S)),
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_stack_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        E, H, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    )
    ref = nn.TransformerEncoder(
        layer, num_layers=3, norm=nn.LayerNorm(E), enable_nested_tensor=False
    )
    ref = randomise_(ref).eval()
    ours = TransformerEncoder.from_torch(ref).eval()
    assert len(ours.layers) == 3 and isinstance(ours.layers[0].self_attn, MultiHeadAttention)
    x, pad = randn(B, T, E), padding([5, 1, 3], T)
    torch.testing.assert_close(
        ours(x, mask=causal_mask(T), src_key_padding_mask=pad),
        ref(x, mask=~causal_mask(T), src_key_padding_mask=pad),
        atol=ATOL,
        rtol=0,
    )
    # built by hand: deep copies of one layer, then the weights loaded one by one
    by_hand = TransformerEncoder(
        TransformerEncoderLayer(E, H, FF, 0.0, "gelu", norm_first=norm_first), 3, nn.LayerNorm(E)
    ).eval()
    assert by_hand.layers[0] is not by_hand.layers[1]
    by_hand.load_state_dict(ours.state_dict())
    torch.testing.assert_close(by_hand(x), ref(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_stack_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(
        E, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    ref = randomise_(nn.TransformerDecoder(layer, num_layers=2, norm=nn.LayerNorm(E))).eval()
    ours = TransformerDecoder.from_torch(ref).eval()
    tgt, mem = randn(B, T, E), randn(B, S, E, seed=1)
    mem_pad = padding([7, 4, 2], S)
    torch.testing.assert_close(
        ours(tgt, mem, tgt_is_causal=True, memory_key_padding_mask=mem_pad),
        ref(tgt, mem, tgt_mask=~causal_mask(T), tgt_is_causal=True,
            memory_key_padding_mask=mem_pad),
        atol=ATOL,
        rtol=0,
    )  # fmt: skip


def test_bert_layer_equals_post_ln_gelu_encoder_layer() -> None:
    """A randomly initialised Hugging Face BertLayer is our post-LN, GELU encoder layer."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )  # fmt: skip
    bert = randomise_(BertLayer(config)).eval()
    ours = TransformerEncoderLayer(
        32, 2, dim_feedforward=64, dropout=0.0, activation="gelu",
        layer_norm_eps=config.layer_norm_eps, norm_first=False,
    ).eval()  # fmt: skip
    pairs = [
        (ours.self_attn.q_proj, bert.attention.self.query),
        (ours.self_attn.k_proj, bert.attention.self.key),
        (ours.self_attn.v_proj, bert.attention.self.value),
        (ours.self_attn.out_proj, bert.attention.output.dense),
        (ours.norm1, bert.attention.output.LayerNorm),
        (ours.linear1, bert.intermediate.dense),
        (ours.linear2, bert.output.dense),
        (ours.norm2, bert.output.LayerNorm),
    ]
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())

    x = randn(2, 6, 32)
    pad = padding([6, 4], 6)
    # BERT's extended attention mask: (B, 1, 1, Lk), 0 where allowed, a large negative where not
    bert_mask = torch.zeros(2, 1, 1, 6).masked_fill(pad[:, None, None, :], torch.finfo().min)
    out = bert(x, attention_mask=bert_mask)
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(ours(x, src_key_padding_mask=pad), out, atol=ATOL, rtol=0)


def test_dropout_active_in_training_only_and_grads_flow() -> None:
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(E, H, FF, dropout=0.5)
    x = randn(B, T, E).requires_grad_()
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def test_post_ln_output_is_normalised_pre_ln_is_not() -> None:
    torch.manual_seed(0)
    x = randn(B, T, E) * 5 + 3
    post = TransformerEncoderLayer(E, H, FF, dropout=0.0, norm_first=False).eval()
    pre = TransformerEncoderLayer(E, H, FF, dropout=0.0, norm_first=True).eval()
    y = post(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(B, T), atol=1e-5, rtol=0)
    assert pre(x).mean(-1).abs().min() > 0.5  # the residual stream keeps its offset


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"d_model=10 and nhead=4"):
        TransformerEncoderLayer(10, 4)
    with pytest.raises(
        ValueError, match=r'activation must be "relu", "gelu" or a callable, got \'tanh\''
    ):
        TransformerEncoderLayer(8, 2, activation="tanh")
    layer = TransformerEncoderLayer(8, 2, dim_feedforward=16)
    with pytest.raises(
        ValueError, match=r"src must have shape \(B, T, E\) with E = 8, got \(2, 5, 6\)"
    ):
        layer(randn(2, 5, 6))
    dec = TransformerDecoderLayer(8, 2, dim_feedforward=16, batch_first=False)
    with pytest.raises(
        ValueError, match=r"memory must have shape \(T, B, E\) with E = 8, got \(4, 2\)"
    ):
        dec(randn(5, 2, 8), randn(4, 2))
    with pytest.raises(ValueError, match=r"num_layers must be a positive int, got 0"):
        TransformerEncoder(layer, 0)
    with pytest.raises(TypeError, match=r"TransformerEncoderLayer, got TransformerDecoderLayer"):
        TransformerEncoderLayer.from_torch(nn.TransformerDecoderLayer(8, 2))


# ---------------------------------------------------------------------------------------------
# The cached decoding step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_step_equals_forward(norm_first: bool, batch_first: bool) -> None:
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.1, norm_first=norm_first,
                                    batch_first=batch_first)
    dec = TransformerDecoder(layer, 3, norm=nn.LayerNorm(16) if norm_first else None).eval()
    tgt, memory = randn(2, 7, 16), randn(2, 5, 16, seed=1)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    if not batch_first:
        tgt, memory = tgt.transpose(0, 1), memory.transpose(0, 1)
    full = dec(tgt, memory, tgt_is_causal=True, memory_key_padding_mask=pad)
    cache, memory_kv = dec.new_cache(2, 7), dec.project_memory(memory)
    chunks, t, outs = [3, 1, 2, 1], 0, []
    for n in chunks:
        piece = tgt[:, t : t + n] if batch_first else tgt[t : t + n]
        outs.append(dec.step(piece, cache, memory_kv, memory_key_padding_mask=pad))
        t += n
    torch.testing.assert_close(torch.cat(outs, 1 if batch_first else 0), full, atol=1e-5, rtol=1e-5)
    assert cache.length(0) == cache.length(2) == 7


def test_decoder_step_bad_input() -> None:
    dec = TransformerDecoder(TransformerDecoderLayer(8, 2, 16, dropout=0.0), 2)
    cache, memory_kv = dec.new_cache(1, 4), dec.project_memory(randn(1, 3, 8))
    with pytest.raises(RuntimeError, match=r"cached decoding is for inference: call model.eval"):
        dec.step(randn(1, 1, 8), cache, memory_kv)
    dec.eval()
    with pytest.raises(ValueError, match=r"memory_kv must hold one \(k, v\) pair per layer \(2\)"):
        dec.step(randn(1, 1, 8), cache, memory_kv[:1])
    with pytest.raises(ValueError, match=r"tgt must have shape \(B, T, E\) with E = 8"):
        dec.step(randn(1, 1, 6), cache, memory_kv)
    with pytest.raises(ValueError, match=r"projected_kv\[0\] must have shape \(B, H, Lk, D\)"):
        dec.step(randn(2, 1, 8), dec.new_cache(2, 4), memory_kv)
