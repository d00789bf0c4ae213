"""course_utils.gpt: the course's GPT equals transformers' GPT-2, its Llama-style variant equals
transformers' Llama (forward, left padding, the KV cache, generate), and the pieces around them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.gpt import (
    GPT,
    AttentionOnlyTransformer,
    GPTBlock,
    GPTConfig,
    LayerNorm,
    LlamaGPT,
    LlamaStyleConfig,
    LMTrainer,
    RMSNorm,
    cosine_lr,
    evaluate_loss,
    generate,
    gpt_from_hf,
    gpt_to_hf,
    induction_scores,
    llama_from_hf,
    loss_by_position,
    next_token_loss,
    repeated_random_tokens,
)
from course_utils.transformer import TransformerEncoderLayer

transformers = pytest.importorskip("transformers")


def _gpt(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=37, block_size=24, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def _hf_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=61, n_positions=32, n_embd=48, n_layer=3, n_head=4, bos_token_id=None,
               eos_token_id=None)
    cfg.update(kw)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()


def _hf_llama(seed=0, scale=1.0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=150, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=24,
               max_position_embeddings=128, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    cfg.update(kw)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    if scale != 1.0:  # larger random weights: sharper, more varied next-token choices
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" not in name:
                    p.mul_(scale)
    return hf


# ---------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------


def test_layernorm_written_out_equals_torch():
    x = torch.randn(3, 5, 16) * 4 + 2
    ours, ref = LayerNorm(16), nn.LayerNorm(16)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    no_bias = LayerNorm(16, bias=False)
    assert torch.allclose(no_bias(x), F.layer_norm(x, (16,)), atol=1e-5)


def test_rmsnorm_equals_torch_and_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(3, 5, 16) * 3
    ours, ref, hf = RMSNorm(16, eps=1e-6), nn.RMSNorm(16, eps=1e-6), LlamaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    hf.load_state_dict(ref.state_dict())
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert torch.allclose(ours(x), hf(x), atol=1e-6)
    xb = x.bfloat16()  # half precision: normalised in float32, as transformers does
    assert torch.equal(ours(xb), hf(xb))
    assert torch.equal(ours.bfloat16()(xb), hf.bfloat16()(xb)) and ours(xb).dtype == torch.bfloat16


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: LayerNorm(8)(torch.randn(2, 7)), ValueError, "last dim 8"),
    (lambda: RMSNorm(8)(torch.ones(2, 8, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: LayerNorm(0), ValueError, "dim must be a positive int"),
    (lambda: RMSNorm(8, eps=0.0), ValueError, "eps"),
])
def test_norms_reject_bad_input(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


# ---------------------------------------------------------------------------------------------
# The block and the model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False])
def test_gpt_block_is_the_course_encoder_layer_with_a_causal_mask(norm_first):
    torch.manual_seed(0)
    ours = GPTBlock(16, 4, 64, norm_first=norm_first).eval()
    ref = TransformerEncoderLayer(16, 4, 64, dropout=0.0, activation=lambda t: F.gelu(t, approximate="tanh"),
                                  norm_first=norm_first).eval()
    ref.load_state_dict(ours.state_dict())  # the written-out norms have nn.LayerNorm's names
    x = torch.randn(2, 7, 16)
    assert torch.allclose(ours(x, is_causal=True), ref(x, is_causal=True), atol=1e-5)
    changed = x.clone()
    changed[:, -1] += 1.0
    assert torch.allclose(ours(changed, is_causal=True)[:, :-1], ours(x, is_causal=True)[:, :-1], atol=1e-6)


def test_gpt_ties_weights_and_starts_near_uniform():
    model = _gpt()
    assert model.lm_head.weight is model.wte.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))
    tokens = torch.randint(0, 37, (4, 24))
    loss = next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).item()
    assert abs(loss - math.log(37)) < 0.1


@pytest.mark.parametrize("seed, kw", [(0, {}), (1, dict(n_layer=1, n_head=2, n_embd=16)),
                                      (2, dict(n_layer=4, n_head=6, n_embd=48, n_positions=20))])
def test_gpt_equals_hf_gpt2_with_copied_weights(seed, kw):
    hf = _hf_gpt2(seed, **kw)
    ours = gpt_from_hf(hf).eval()
    tokens = torch.randint(0, hf.config.vocab_size, (3, hf.config.n_positions))
    with torch.no_grad():
        assert torch.allclose(ours(tokens), hf(tokens).logits, atol=1e-5)
        # the loss on shifted targets is transformers' loss with labels (it shifts inside)
        ref_loss = hf(tokens, labels=tokens).loss
        assert torch.allclose(next_token_loss(ours(tokens)[:, :-1], tokens[:, 1:]), ref_loss, atol=1e-6)


def test_gpt_to_hf_round_trip_and_training_stay_equal():
    ours = _gpt(3)
    hf = gpt_to_hf(ours)
    assert hf.lm_head.weight is hf.transformer.wte.weight
    tokens = torch.randint(0, 37, (4, 24))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(tokens), hf.eval()(tokens).logits, atol=1e-5)
    a = LMTrainer(ours, lr=3e-3, total_steps=5, warmup=2)
    b = LMTrainer(hf, lr=3e-3, total_steps=5, warmup=2)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for _ in range(5):
        assert abs(a.step(x, y) - b.step(x, y)) < 1e-4
    with torch.no_grad():
        assert torch.allclose(ours.eval()(tokens), hf.eval()(tokens).logits, atol=1e-4)


def test_gpt2_copies_reject_other_models():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        gpt_from_hf(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="GPT-2-like"):
        gpt_to_hf(_gpt(positions="rope"))
    with pytest.raises(TypeError, match="course_utils.gpt.GPT"):
        gpt_to_hf(nn.Linear(2, 2))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi", "none"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoding_equals_the_full_forward(positions, norm_first):
    model = _gpt(4, positions=positions, norm_first=norm_first).eval()
    tokens = torch.randint(0, 37, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 20)
        parts = [model.forward_cached(tokens[:, :7], cache)]  # a prompt, then one token at a time
        parts += [model.forward_cached(tokens[:, t : t + 1], cache) for t in range(7, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    prompt = tokens[:, :5]
    assert torch.equal(generate(model, prompt, 12), generate(model, prompt, 12, use_cache=False))


def test_rope_is_applied_inside_the_attention_after_the_head_split():
    from course_utils.attention import merge_heads, split_heads
    from course_utils.positional import RotaryEmbedding

    model = _gpt(5, positions="rope").eval()
    attn = model.blocks[0].self_attn
    x = torch.randn(2, 9, 32)
    q, k, v = (split_heads(p(x), 4) for p in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, H, T, D)
    rope = RotaryEmbedding(8)
    ref = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
    with torch.no_grad():
        assert torch.allclose(attn(x, is_causal=True)[0], attn.out_proj(merge_heads(ref)), atol=1e-5)
    # a rotary model has no position vectors: shifting every position leaves the scores unchanged
    assert model.pos is None


def test_alibi_bias_equals_bloom_reference():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from course_utils.positional import alibi_bias, alibi_slopes

    for heads in (4, 6, 8, 12):
        t = 10
        ours = alibi_bias(heads, t)  # (H, T, T)
        bloom = build_alibi_tensor(torch.ones(1, t, dtype=torch.long), heads, torch.float32)  # (H, 1, T)
        keep = torch.ones(t, t, dtype=torch.bool).tril()
        # Bloom adds m·j and relies on the softmax ignoring a per-row constant (m·i): the same scores
        expected = (bloom - bloom.transpose(1, 2))  # m·j - m·i = -m·(i - j)
        assert torch.allclose(ours[:, keep], expected[:, keep], atol=1e-6), heads
        slopes_bloom = bloom[:, 0, 1]  # m_h · 1
        assert torch.allclose(alibi_slopes(heads), slopes_bloom, atol=1e-7)


def test_alibi_model_uses_the_bias_and_reads_past_its_training_context():
    model = _gpt(6, positions="alibi", block_size=8, max_positions=64).eval()
    with torch.no_grad():
        assert model(torch.randint(0, 37, (1, 40))).shape == (1, 40, 37)
    assert model.attention_bias(3).shape == (1, 4, 3, 3)


def test_learned_positions_cannot_run_past_block_size():
    model = _gpt(block_size=16)
    with pytest.raises(ValueError, match="reads at most 16 positions.*learned position table"):
        model(torch.zeros(1, 17, dtype=torch.long))
    prompt = torch.randint(0, 37, (2, 10))
    with pytest.raises(ValueError, match="reads at most 16 positions; with use_cache=False"):
        generate(model, prompt, 8)  # would feed position 16
    assert generate(model, prompt, 7).shape == (2, 17)  # position 16 is written, never read
    long = generate(model, prompt, 30, use_cache=False)  # a sliding window of the last 16 tokens
    assert long.shape == (2, 40) and torch.equal(long[:, :17], generate(model, prompt, 7))
    with torch.no_grad():
        assert torch.equal(long[:, 30], model(long[:, 14:30])[:, -1].argmax(-1))


@pytest.mark.parametrize("call, error, fragment", [
    (lambda m: m(torch.zeros(1, 4)), TypeError, "integer tensor"),
    (lambda m: m(torch.full((1, 4), 37)), ValueError, r"token ids in \[0, 37\)"),
    (lambda m: m(torch.zeros(4, dtype=torch.long)), ValueError, "2 dims"),
    (lambda m: generate(m, torch.zeros(1, 3, dtype=torch.long), -1), ValueError, "max_new_tokens"),
    (lambda m: generate(m, torch.zeros(1, 3, dtype=torch.long), 2,
                        key_padding_mask=torch.zeros(1, 3, dtype=torch.bool)), ValueError, "LlamaGPT only"),
    (lambda m: next_token_loss(torch.zeros(1, 4, 37), torch.zeros(1, 5, dtype=torch.long)), ValueError,
     "targets must have shape"),
])
def test_gpt_rejects_bad_input(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(_gpt())


def _meta(x):
    return x.to("meta")


# One case per kind of mistake the names of which the message must carry: an argument on another
# device than the model (the meta device: no values), a batch that does not name its own
# argument (x, y, prompt, data), the wrong kind of object (a str for a model or a config), a
# setting outside its range (negative learning rates, betas, eps), an empty batch.
@pytest.mark.parametrize("call, error, fragment", [
    (lambda m: LayerNorm(8)(_meta(torch.randn(2, 8))), ValueError, "x must be on cpu"),
    (lambda m: RMSNorm(8)(_meta(torch.randn(2, 8))), ValueError, "x must be on cpu"),
    (lambda m: next_token_loss(torch.zeros(1, 2, 37), _meta(torch.zeros(1, 2).long())),
     ValueError, "targets must be on cpu .*device of logits"),
    (lambda m: AttentionOnlyTransformer(37, 8)(_meta(torch.zeros(1, 3).long())), ValueError,
     "tokens must be on cpu"),
    (lambda m: generate(m, torch.full((1, 3), 40), 2), ValueError,
     r"prompt must hold token ids in \[0, 37\)"),
    (lambda m: generate(m, torch.zeros(1, 3), 2), TypeError, "prompt must be an integer tensor"),
    (lambda m: generate(m, torch.zeros(0, 3).long(), 2), ValueError,
     "prompt must hold at least one sequence"),
    (lambda m: LMTrainer(m).step(torch.full((2, 3), -1), torch.zeros(2, 3).long()), ValueError,
     r"x must hold token ids in \[0, 37\)"),
    (lambda m: LMTrainer(m).step(torch.zeros(2, 3).long(), torch.zeros(2, 4).long()), ValueError,
     r"y must have shape \(2, 3\), the shape of x"),
    (lambda m: LMTrainer(m).step(torch.zeros(2, 3).long(), _meta(torch.zeros(2, 3).long())),
     ValueError, "y must be on the CPU or on the model's device"),
    (lambda m: LMTrainer(m, betas=(0.9,)), TypeError, "betas must be a pair"),
    (lambda m: LMTrainer(m, betas=(math.nan, 0.9)), ValueError, r"betas\[0\] must be a real"),
    (lambda m: LMTrainer(m, lr=1e-3, min_lr=-1e-4), ValueError, "min_lr must be a real number"),
    (lambda m: cosine_lr(5, -1e-3, 2, 10), ValueError, "lr must be a real number in \\(0.0"),
    (lambda m: cosine_lr(5, 1e-3, 2, 10, min_lr="0"), TypeError, "min_lr must be a real number"),
    (lambda m: evaluate_loss("model", torch.arange(40) % 37, 8), TypeError,
     "model must be a torch.nn.Module"),
    (lambda m: evaluate_loss(m, torch.arange(40) - 1, 8), ValueError, "data must hold token ids"),
    (lambda m: loss_by_position(m, torch.arange(40) % 37, 0), ValueError,
     "length must be a positive int"),
    (lambda m: gpt_from_hf("gpt2"), TypeError, "hf must be a transformers GPT2LMHeadModel"),
    (lambda m: gpt_to_hf(m, attn_implementation=None), TypeError,
     "attn_implementation must be a str"),
    (lambda m: GPTConfig(vocab_size=10, layer_norm_eps=-1e-5), ValueError, "layer_norm_eps"),
    (lambda m: LayerNorm(8, bias="no"), TypeError, "bias must be True or False"),
    (lambda m: induction_scores(torch.zeros(0, 2, 8, 8), 4), ValueError,
     "weights must hold at least one sequence"),
])
def test_bad_input_names_its_argument(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(_gpt())


@pytest.mark.parametrize("call, error, fragment", [
    (lambda m: m(_meta(torch.zeros(1, 3).long())), ValueError, "tokens must be on cpu"),
    (lambda m: m(torch.zeros(1, 3).long(), key_padding_mask=_meta(torch.zeros(1, 3).bool())),
     ValueError, "key_padding_mask must be on cpu .*device of tokens"),
    (lambda m: m(torch.zeros(0, 3).long(), key_padding_mask=torch.zeros(1, 3).bool()),
     ValueError, r"key_padding_mask must be a bool .* for tokens \(0, 3\)"),
    (lambda m: m.layers[0].mlp(torch.randn(2, 3, 8, dtype=torch.float64)), TypeError,
     "x must have the module's dtype"),
    (lambda m: m.layers[0].mlp(torch.randn(2, 3, 7)), ValueError, "x must have last dim 8"),
    (lambda m: type(m.layers[0])("config"), TypeError, "c must be a course_utils.gpt"),
])
def test_llama_bad_input_names_its_argument(call, error, fragment):
    model = LlamaGPT(LlamaStyleConfig(vocab_size=10, n_layer=1, n_head=2, n_kv_head=1, n_embd=8,
                                      head_dim=4, intermediate_size=12))
    with pytest.raises(error, match=fragment):
        call(model)


@pytest.mark.parametrize("kw, error, fragment", [
    (dict(n_embd=30), ValueError, "divisible by n_head"),
    (dict(positions="relative"), ValueError, "positions must be one of"),
    (dict(norm="batchnorm"), ValueError, "norm must be one of"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(vocab_size=0), ValueError, "vocab_size"),
    (dict(norm_first="yes"), TypeError, "norm_first"),
])
def test_gpt_config_rejects_bad_values(kw, error, fragment):
    cfg = dict(vocab_size=10, n_embd=32, n_head=4)
    cfg.update(kw)
    with pytest.raises(error, match=fragment):
        GPTConfig(**cfg)


# ---------------------------------------------------------------------------------------------
# Sampling through course_utils.decoding
# ---------------------------------------------------------------------------------------------


def test_sampling_respects_top_k_top_p_and_the_seed():
    model = _gpt(7).eval()
    prompt = torch.randint(0, 37, (1, 6))
    with torch.no_grad():
        logits = model(prompt)[0, -1]
    top3 = set(logits.topk(3).indices.tolist())
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    drawn_k, drawn_p = set(), set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        drawn_k.add(int(generate(model, prompt, 1, temperature=1.0, top_k=3, generator=g)[0, -1]))
        g = torch.Generator().manual_seed(seed)
        drawn_p.add(int(generate(model, prompt, 1, temperature=1.0, top_p=0.5, generator=g)[0, -1]))
    assert drawn_k <= top3 and len(drawn_k) > 1
    assert drawn_p <= nucleus
    greedy = generate(model, prompt, 8)
    assert torch.equal(generate(model, prompt, 8, temperature=1.0, top_k=1), greedy)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(generate(model, prompt, 8, temperature=0.8, generator=g1),
                       generate(model, prompt, 8, temperature=0.8, generator=g2))


def test_low_temperature_sampling_is_greedy_and_high_temperature_spreads():
    model = _gpt(8).eval()
    prompt = torch.randint(0, 37, (1, 4))
    greedy = generate(model, prompt, 6)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt, 6, temperature=1e-4, generator=g), greedy)
    g = torch.Generator().manual_seed(0)
    hot = {int(generate(model, prompt, 1, temperature=100.0, generator=g)[0, -1]) for _ in range(40)}
    assert len(hot) > 15  # nearly uniform over 37 tokens


# ---------------------------------------------------------------------------------------------
# The Llama-style model against transformers' LlamaForCausalLM
# ---------------------------------------------------------------------------------------------


def test_llama_full_forward_equals_transformers():
    hf = _hf_llama(0)
    ours = llama_from_hf(hf).eval()
    assert ours.layers[0].self_attn.head_dim == 24 != 64 // 4  # an explicit head_dim
    assert ours.layers[0].self_attn.k_proj.weight.shape == (2 * 24, 64)  # 2 key/value heads
    tokens = torch.randint(1, 97, (3, 20))
    with torch.no_grad():
        assert torch.allclose(ours(tokens), hf(tokens).logits, atol=1e-5)


def test_llama_left_padded_batch_equals_transformers():
    hf = _hf_llama(1)
    ours = llama_from_hf(hf).eval()
    tokens = torch.randint(1, 97, (3, 16))
    pad = torch.zeros(3, 16, dtype=torch.bool)
    pad[1, :5], pad[2, :11] = True, True
    tokens = tokens.masked_fill(pad, 0)
    positions = LlamaGPT.default_positions(pad)
    with torch.no_grad():
        ref = hf(tokens, attention_mask=(~pad).long(), position_ids=positions).logits
        mine = ours(tokens, key_padding_mask=pad)
    assert torch.allclose(mine[~pad], ref[~pad], atol=1e-5)
    # and a padded row gives the logits of the same row without its padding
    with torch.no_grad():
        alone = ours(tokens[2:, 11:])
    assert torch.allclose(mine[2, 11:], alone[0], atol=1e-5)


def test_llama_incremental_decoding_through_the_kv_cache_equals_transformers():
    hf = _hf_llama(2, scale=3.0)
    ours = llama_from_hf(hf).eval()
    tokens = torch.randint(1, 97, (2, 14))
    cache = ours.new_state(tokens[:, :6], 8)["cache"]
    hf_cache = transformers.DynamicCache(config=hf.config)
    with torch.no_grad():
        ref = hf(tokens[:, :6], cache=hf_cache, use_cache=True).logits
        assert torch.allclose(ours(tokens[:, :6], cache=cache), ref, atol=1e-4)
        for t in range(6, 14):
            ref = hf(tokens[:, t : t + 1], cache=hf_cache, use_cache=True).logits
            mine = ours(tokens[:, t : t + 1], cache=cache)
            assert torch.allclose(mine, ref, atol=1e-4), t
    assert cache.length(0) == 14


@pytest.mark.parametrize("padded", [False, True])
def test_llama_generate_token_for_token(padded):
    hf = _hf_llama(3, scale=3.0)
    ours = llama_from_hf(hf).eval()
    torch.manual_seed(0)
    prompt = torch.randint(1, 97, (3, 10))
    pad = torch.zeros(3, 10, dtype=torch.bool)
    if padded:
        pad[1, :3], pad[2, :7] = True, True
        prompt = prompt.masked_fill(pad, 0)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=(~pad).long(), max_new_tokens=20, do_sample=False,
                          pad_token_id=0)
    mine = generate(ours, prompt, 20, key_padding_mask=pad if padded else None)
    assert torch.equal(mine, ref)
    assert len(set(mine[:, 10:].flatten().tolist())) > 5  # not a degenerate repetition
    assert torch.equal(generate(ours, prompt, 20, key_padding_mask=pad if padded else None,
                                use_cache=False), mine)


def test_llama_rejects_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        LlamaStyleConfig(vocab_size=10, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="head_dim must be even"):
        LlamaStyleConfig(vocab_size=10, head_dim=15)
    model = LlamaGPT(LlamaStyleConfig(vocab_size=10))
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        model(torch.zeros(1, 4, dtype=torch.long), key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        llama_from_hf(_hf_gpt2())


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def test_cosine_lr_warms_up_then_decays():
    lrs = [cosine_lr(s, 1.0, warmup=10, total=100, min_lr=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == lrs[119] == pytest.approx(0.1)
    assert cosine_lr(5, 1.0, warmup=0, total=10) < 1.0


def test_trainer_decays_matrices_only_and_learns():
    model = _gpt(9)
    trainer = LMTrainer(model, lr=1e-2, total_steps=40, warmup=0)
    decay, no_decay = trainer.optimizer.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in (decay, no_decay)) == len(list(model.parameters()))
    x = torch.randint(0, 37, (8, 24))
    losses = [trainer.step(x, x) for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0]
    assert len(trainer.seconds) == 40 and all(s > 0 for s in trainer.seconds)


def test_trainer_stops_on_a_non_finite_loss():
    model = _gpt(10)
    with torch.no_grad():
        model.wte.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 0"):
        LMTrainer(model).step(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_evaluate_loss_and_loss_by_position_agree():
    model = _gpt(11).eval()
    data = torch.randint(0, 37, (500,))
    loss = evaluate_loss(model, data, block_size=16, batch_size=7)
    by_pos = loss_by_position(model, data, 16, batch_size=7)
    assert by_pos.shape == (16,)
    assert by_pos.mean().item() == pytest.approx(loss, rel=1e-6)
    x = data[: 31 * 16].view(31, 16)
    y = data[1 : 31 * 16 + 1].view(31, 16)
    with torch.no_grad():
        assert loss == pytest.approx(next_token_loss(model(x), y).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Induction heads
# ---------------------------------------------------------------------------------------------


def test_induction_scores_of_perfect_uniform_and_previous_token_heads():
    length = 6
    t = 2 * length
    perfect = torch.zeros(1, 3, t, t)
    for i in range(t):
        perfect[0, 0, i, i - length + 1 if i >= length else 0] = 1.0  # induction
        perfect[0, 1, i, max(i - 1, 0)] = 1.0  # previous token
    perfect[0, 2] = torch.ones(t, t).tril() / torch.arange(1, t + 1)[:, None]  # uniform causal
    scores = induction_scores(perfect, length)
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert scores[2] == pytest.approx((1 / torch.arange(length + 1, t + 1)).mean().item())
    with pytest.raises(ValueError, match="2·length"):
        induction_scores(perfect, 5)


def test_attention_only_model_keeps_its_maps():
    seqs = repeated_random_tokens(3, 8, 20, torch.Generator().manual_seed(0))
    assert torch.equal(seqs[:, :8], seqs[:, 8:])
    model = AttentionOnlyTransformer(vocab_size=20, max_len=16, d_model=16, n_head=2)
    assert model(seqs).shape == (3, 16, 20)
    assert all(layer.last_attn_weights.shape == (3, 2, 16, 16) for layer in model.layers)
    assert not hasattr(model, "blocks")  # attention only: no feed-forward network anywhere
    assert not any(isinstance(m, nn.Linear) and m.out_features > 16 and m is not model.unembed
                   for m in model.modules())
