"""Seq2seq models, decoding and BLEU: shapes, batched = step-by-step, beam 1 = greedy, padding."""

from __future__ import annotations

import pytest
import sacrebleu
import torch

from course_utils.datasets.translation import Vocab
from course_utils.seq2seq import (
    BatchIterator,
    GRUSeq2Seq,
    TransformerSeq2Seq,
    beam_search,
    bleu_by_length,
    build_model,
    corpus_bleu,
    greedy_decode,
    make_batch,
    train_jobs,
    train_seq2seq,
    translate,
)

SV, TV = 23, 31  # vocabulary sizes (ids 0..3 are the special tokens)


def models():
    torch.manual_seed(0)
    return {
        "gru": GRUSeq2Seq(SV, TV, emb_dim=8, enc_hidden=8, dec_hidden=16, attention=False),
        "attn": GRUSeq2Seq(SV, TV, emb_dim=8, enc_hidden=8, dec_hidden=16, attention=True),
        "transformer": TransformerSeq2Seq(SV, TV, d_model=16, nhead=2, num_layers=2,
                                          dim_feedforward=32, max_len=64),
    }


def batch(b=3, s=7, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, SV, (b, s), generator=g)
    src[0, 4:] = 0  # the first sentence is shorter: padding
    src[0, 3] = 2
    tgt = torch.randint(4, TV, (b, t), generator=g)
    tgt[:, 0] = 1
    return src, src == 0, tgt


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
def test_shapes(name):
    model = models()[name].eval()
    src, pad, tgt = batch()
    assert model(src, pad, tgt).shape == (3, 6, TV)
    tokens, weights = greedy_decode(model, src, pad, max_len=9)
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 9
    assert (weights is not None) == (name == "attn")
    if weights is not None:
        assert weights.shape == (3, tokens.shape[1], 7)


def test_attention_weights_are_distributions_that_skip_padding():
    model = models()["attn"].eval()
    src, pad, tgt = batch()
    _, w = model(src, pad, tgt, return_attention=True)  # (B, T, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 6))
    assert torch.all(w[0, :, 4:] == 0)


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
def test_batched_teacher_forcing_equals_step_by_step(name):
    """The fast batched decoder computes exactly what decoding one step at a time computes."""
    model = models()[name].eval()
    src, pad, tgt = batch()
    with torch.no_grad():
        full = model(src, pad, tgt).log_softmax(-1)  # (B, T, V)
        memory = model.encode(src, pad)
        state = model.init_state(memory)
        steps = []
        for t in range(tgt.size(1)):
            logp, state, _ = model.step(tgt[:, t], state, memory)
            steps.append(logp)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
def test_padding_does_not_change_the_translation(name):
    model = models()[name].eval()
    src, pad, tgt = batch()
    with torch.no_grad():
        batched = model(src, pad, tgt)[0]
        alone = model(src[:1, :4], pad[:1, :4], tgt[:1])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
def test_beam_width_1_equals_greedy(name):
    model = models()[name].eval()
    src, pad, _ = batch(b=4, seed=3)
    greedy, _ = greedy_decode(model, src, pad, max_len=10)
    beam = beam_search(model, src, pad, beam_width=1, max_len=10)
    n = min(greedy.size(1), beam.size(1))
    assert torch.equal(greedy[:, :n], beam[:, :n])
    assert torch.all(greedy[:, n:] == 0) and torch.all(beam[:, n:] == 0)


def _sequence_logprob(model, src, pad, tokens, eos=2):
    """log p(tokens | src) up to and including the first <eos>."""
    with torch.no_grad():
        tgt_in = torch.cat([torch.ones_like(tokens[:, :1]), tokens[:, :-1]], 1)
        logp = model(src, pad, tgt_in).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for i, row in enumerate(tokens.tolist()):
        if eos in row:
            keep[i, row.index(eos) + 1 :] = False
    return (logp * keep).sum(-1)


def test_wider_beam_finds_a_likelier_translation():
    """Without a length penalty, the best of 8 beams is at least as likely as greedy's choice."""
    model = models()["attn"].eval()
    src, pad, _ = batch(b=6, seed=5)
    greedy = beam_search(model, src, pad, beam_width=1, max_len=8, length_penalty=0.0)
    wide = beam_search(model, src, pad, beam_width=8, max_len=8, length_penalty=0.0)
    lp_g = _sequence_logprob(model, src, pad, greedy)
    lp_w = _sequence_logprob(model, src, pad, wide)
    assert torch.all(lp_w >= lp_g - 1e-4), (lp_w, lp_g)


def _tiny_vocabs():
    return Vocab([f"e{i}" for i in range(SV - 4)]), Vocab([f"f{i}" for i in range(TV - 4)])


@pytest.mark.parametrize("call, error, message", [
    (lambda m, s, p: beam_search(m, s, p, beam_width=0, max_len=5), ValueError,
     "beam_width must be a positive int, got 0"),
    (lambda m, s, p: beam_search(m, s, p, beam_width=2, max_len=0), ValueError,
     "max_len must be a positive int, got 0"),
    (lambda m, s, p: beam_search(m, s, p, beam_width=2, max_len=4, length_penalty=-1.0), ValueError,
     "length_penalty must be a real number"),
    (lambda m, s, p: greedy_decode(m, s, p, max_len=0), ValueError, "max_len must be a positive int, got 0"),
    (lambda m, s, p: greedy_decode(m, s.clamp(max=SV - 1) + 3, p, max_len=4), ValueError,
     r"src must hold token ids in \[0, 23\)"),
    (lambda m, s, p: greedy_decode(m, s, torch.ones_like(p), max_len=4), ValueError,
     "src row 0 is all padding"),
    (lambda m, s, p: greedy_decode(m, s, p.long(), max_len=4), TypeError, "src_pad must be a bool tensor"),
    (lambda m, s, p: greedy_decode(m, s.float(), p, max_len=4), TypeError, "src must be an integer tensor"),
    (lambda m, s, p: greedy_decode(m, s[0], p[0], max_len=4), ValueError, "src must have 2 dims"),
    (lambda m, s, p: translate(m, "the cat", *_tiny_vocabs()), TypeError,
     "sentences must be a list of str .* got a single str 'the cat'"),
    (lambda m, s, p: translate(m, ["e1 e2"], *_tiny_vocabs(), batch_size=0), ValueError,
     "batch_size must be a positive int, got 0"),
    (lambda m, s, p: translate(m, ["e1 e2"], *_tiny_vocabs(), beam_width=0), ValueError,
     "beam_width must be a positive int, got 0"),
    (lambda m, s, p: translate(m, ["e1"], *_tiny_vocabs(), max_len_factor=0), ValueError,
     "max_len_factor must be a real number in \\(0.0, inf\\)"),
])
@pytest.mark.parametrize("name", ["attn", "transformer"])
def test_bad_input_gets_a_clear_error(name, call, error, message):
    model = models()[name].eval()
    src, pad, _ = batch()
    with pytest.raises(error, match=message):
        call(model, src, pad)


def test_translate_nothing_is_nothing_and_an_empty_sentence_is_eos_only():
    model = models()["attn"].eval()
    assert translate(model, [], *_tiny_vocabs()) == []
    assert len(translate(model, [""], *_tiny_vocabs())) == 1  # the source is just <eos>


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(emb_dim=0), ValueError, "emb_dim must be a positive int"),
    (dict(dropout=1.5), ValueError, "dropout must be a real number in"),
    (dict(attention="yes"), TypeError, "attention must be True or False"),
])
def test_gru_constructor_checks(kwargs, error, message):
    with pytest.raises(error, match=message):
        GRUSeq2Seq(SV, TV, **kwargs)


def test_transformer_constructor_checks():
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        TransformerSeq2Seq(SV, TV, d_model=16, nhead=2, num_layers=0)


@pytest.mark.parametrize("call, error, message", [
    (lambda v: make_batch([[4]], [[4], [5]], v, v), ValueError, "as many sources as targets"),
    (lambda v: make_batch([], [], v, v), TypeError, "src_ids must be a non-empty list"),
    (lambda v: make_batch(["ab"], [[4]], v, v), TypeError, r"src_ids\[0\] must be a list of token ids"),
    (lambda v: make_batch([[4, 99]], [[4]], v, v), ValueError, r"src_ids must hold token ids in \[0, 6\)"),
    (lambda v: make_batch([[4]], [[-1]], v, v), ValueError, "tgt_ids must hold token ids"),
    (lambda v: BatchIterator([[4]], [[4]], v, v, batch_size=0), ValueError, "batch_size must be a positive int"),
    (lambda v: BatchIterator([[4]], [[4]], v, v, pool=0), ValueError, "pool must be a positive int"),
])
def test_batches_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(Vocab(["a", "b"]))


def _job(**kw):
    from course_utils.seq2seq import TranslationJob

    return TranslationJob(**{"name": "t", "kind": "gru", "steps": 1, "lr": 1e-3, "warmup": 0,
                             **kw})


def _data(**kw):
    from course_utils.seq2seq import TranslationData

    v = Vocab(["a"])
    return TranslationData(**{"src_ids": [[4]], "tgt_ids": [[4]], "src_vocab": v,
                              "tgt_vocab": v, **kw})


# One case per kind of mistake: the wrong kind of object where a model, a vocabulary, a job or
# an iterator is expected; ids on another device than the model; a padding id that is no token;
# a flag that is not a bool; a device that does not exist; a job or data set that is wrong when
# it is made (not steps later, in a worker process).
@pytest.mark.parametrize("call, error, message", [
    (lambda m, s, p: greedy_decode("model", s, p, max_len=4), TypeError,
     "model must be a translation model .* got str 'model'"),
    (lambda m, s, p: beam_search(None, s, p, 2, 4), TypeError, "model must be a translation model"),
    (lambda m, s, p: translate(m, ["e1"], "vocab", _tiny_vocabs()[1]), TypeError,
     "src_vocab must be a course_utils.datasets.vocab.Vocab, got str"),
    (lambda m, s, p: BatchIterator([[4]], [[4]], Vocab(["a"]), None), TypeError,
     "tgt_vocab must be a course_utils.datasets.vocab.Vocab, got NoneType"),
    (lambda m, s, p: m(s.to("meta"), p, s), ValueError, "src must be on cpu .* got src on meta"),
    (lambda m, s, p: m(s, p.to("meta"), s), ValueError, "src_pad must be on cpu"),
    (lambda m, s, p: m(s, p, s.to("meta")), ValueError, "tgt_in must be on cpu"),
    (lambda m, s, p: m(s[:0], p[:0], s), ValueError,
     r"tgt_in must have one row per source sentence \(src has 0 rows\)"),
    (lambda m, s, p: translate(m, ["e1"], *_tiny_vocabs(), device="gpu"), ValueError,
     "device must be a device such as 'cpu'"),
    (lambda m, s, p: translate(m, ["e1"], *_tiny_vocabs(), device=None), TypeError,
     "device must be a device such as 'cpu' or 'cuda', got None"),
])
def test_wrong_objects_and_devices_get_a_clear_error(call, error, message):
    model = models()["transformer"].eval()
    src, pad, _ = batch()
    with pytest.raises(error, match=message):
        call(model, src, pad)


@pytest.mark.parametrize("make, error, message", [
    (lambda: GRUSeq2Seq(SV, TV, pad_id=-1), ValueError, r"pad_id must be an int in \[0, 22\]"),
    (lambda: TransformerSeq2Seq(SV, TV, pad_id=SV), ValueError, "pad_id must be an int in"),
    (lambda: TransformerSeq2Seq(SV, TV, pad_id=None), TypeError, "pad_id must be an int"),
    (lambda: GRUSeq2Seq(SV, TV, attn_dim=0), ValueError, "attn_dim must be a positive int"),
    (lambda: models()["attn"](*batch()[:2], batch()[0], return_attention="no"), TypeError,
     "return_attention must be True or False"),
    (lambda: BatchIterator([[4]], [[4]], Vocab(["a"]), Vocab(["a"]), seed=None), ValueError,
     "seed must be a non-negative int, got None"),
    (lambda: _job(kind="lstm"), ValueError, "kind must be one of 'gru', 'attn', 'transformer'"),
    (lambda: _job(steps=0), ValueError, "steps must be a positive int, got 0"),
    (lambda: _job(lr="1e-3"), TypeError, "lr must be a real number, got str"),
    (lambda: _job(warmup=-1), ValueError, "warmup must be a non-negative int"),
    (lambda: _job(label_smoothing=None), TypeError, "label_smoothing must be a real number"),
    (lambda: _job(seed=1.5), ValueError, "seed must be a non-negative int, got 1.5"),
    (lambda: _job(batch_size=0), ValueError, "batch_size must be a positive int"),
    (lambda: _job(sizes="small"), TypeError, "sizes must be a dict"),
    (lambda: _job(sizes=dict(layer=2)), ValueError,
     "a key of sizes must be one of 'emb', .* got 'layer'"),
    (lambda: _job(sizes=dict(heads=0)), ValueError, r"sizes\['heads'\] must be a positive int"),
    (lambda: _data(src_ids=[]), TypeError, "src_ids must be a non-empty list of id lists"),
    (lambda: _data(tgt_ids="ab"), TypeError, "tgt_ids must be a non-empty list of id lists"),
    (lambda: _data(src_vocab=None), TypeError, "src_vocab must be a .*Vocab, got NoneType"),
])
def test_models_jobs_and_data_check_their_settings_when_made(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("call, error, message", [
    (lambda m, it: train_seq2seq("model", it, 1), TypeError, "model must be a torch.nn.Module"),
    (lambda m, it: train_seq2seq(m, [it], 1), TypeError, "batches must be an iterator of Batch"),
    (lambda m, it: train_seq2seq(m, it, 0), ValueError, "num_steps must be a positive int, got 0"),
    (lambda m, it: train_seq2seq(m, it, 1, pad_id=-1), ValueError,
     "pad_id must be a non-negative int"),
    (lambda m, it: train_seq2seq(m, it, 1, progress="no"), TypeError,
     "progress must be True or False"),
    (lambda m, it: train_seq2seq(m, it, 1, device=""), ValueError,
     "device must be a device such as 'cpu'"),
    (lambda m, it: build_model("gru", 5, 5), TypeError,
     "job must be a course_utils.seq2seq.TranslationJob, got str"),
    (lambda m, it: train_jobs(["t"], _data()),
     TypeError, r"jobs\[0\] must be a course_utils.seq2seq.TranslationJob, got str"),
    (lambda m, it: train_jobs([_job()], None),
     TypeError, "data must be a course_utils.seq2seq.TranslationData, got NoneType"),
])
def test_training_wrong_objects(call, error, message):
    v = Vocab(["a"])
    with pytest.raises(error, match=message):
        call(models()["gru"], BatchIterator([[4]], [[4]], v, v))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr must be a real number in \\(0.0, inf\\)"),
    (dict(lr=float("nan")), "lr must be a real number"),
    (dict(warmup=-1), "warmup must be a non-negative int"),
    (dict(clip=0.0), "clip must be a real number"),
    (dict(label_smoothing=1.0), "label_smoothing must be a real number in \\[0.0, 1.0\\)"),
])
def test_training_bad_settings(kwargs, message):
    v = Vocab(["a"])
    with pytest.raises(ValueError, match=message):
        train_seq2seq(models()["gru"], BatchIterator([[4]], [[4]], v, v), num_steps=1, **kwargs)


@pytest.mark.parametrize("call, error, message", [
    (lambda: corpus_bleu("le chat", "le chat"), TypeError, "hypotheses must be a list of str .* single str"),
    (lambda: corpus_bleu(["le chat"], "le chat"), TypeError, "references must be a list"),
    (lambda: corpus_bleu(["le chat"], [["le chat", 3]]), TypeError, r"references\[0\]\[1\] must be a str"),
    (lambda: corpus_bleu(["le chat"], [[]]), ValueError, r"references\[0\] must not be empty"),
    (lambda: corpus_bleu([], []), ValueError, "hypotheses must not be empty"),
    (lambda: corpus_bleu(["a"], ["a"], lowercase="no"), TypeError, "lowercase must be True or False"),
    (lambda: bleu_by_length(["a b"], ["x"], ["x"], edges=(3, 2)), ValueError, "strictly increasing"),
    (lambda: bleu_by_length(["a b", "c"], ["x"], ["x"]), ValueError, "2 sources for 1 hypotheses"),
])
def test_bleu_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_make_batch_shifts_targets():
    v = Vocab(["a", "b"])
    b = make_batch([[4, 5]], [[5, 4]], v, v)
    assert b.src.tolist() == [[4, 5, 2]]
    assert b.tgt_in.tolist() == [[1, 5, 4]] and b.tgt_out.tolist() == [[5, 4, 2]]


def test_bleu_matches_sacrebleu_and_buckets():
    hyp = ["le chat noir dort .", "la voiture rouge .", "un homme lit le livre ."]
    ref = ["le chat noir dort .", "la petite voiture rouge .", "un homme lit un livre ."]
    assert corpus_bleu(hyp, ref) == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref]).score)
    src = ["the black cat sleeps .", "the small red car .", "a man reads the book ."]
    by_len = bleu_by_length(src, hyp, ref, edges=(5,))  # lengths with the full stop: 5, 5, 6
    assert list(by_len) == ["1-5", "6+"]
    assert by_len["1-5"][1] == 2 and by_len["6+"][1] == 1
    assert by_len["1-5"][0] == pytest.approx(corpus_bleu(hyp[:2], ref[:2]))
    with pytest.raises(ValueError, match="hypotheses"):
        corpus_bleu(hyp, ref[:2])


def test_training_learns_to_reverse():
    """A small attention GRU learns to reverse sequences: the loss falls and decoding works."""
    torch.manual_seed(0)
    words = [chr(ord("a") + i) for i in range(8)]
    v = Vocab(words)
    g = torch.Generator().manual_seed(0)
    srcs = [[4 + int(x) for x in torch.randint(0, 8, (int(n),), generator=g)]
            for n in torch.randint(3, 7, (400,), generator=g)]
    tgts = [s[::-1] for s in srcs]
    model = GRUSeq2Seq(len(v), len(v), emb_dim=16, enc_hidden=24, dec_hidden=48, attention=True,
                       attn_dim=24, dropout=0.0)
    it = BatchIterator(srcs, tgts, v, v, batch_size=32, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and fair to parallel tests
    try:
        hist = train_seq2seq(model, it, num_steps=200, lr=5e-3, warmup=20, desc="reverse")
    finally:
        torch.set_num_threads(threads)
    assert sum(hist["loss"][-10:]) / 10 < 0.3 * sum(hist["loss"][:10]) / 10
    sents = [" ".join(v.decode(s, strip=False)) for s in srcs[:50]]
    refs = [" ".join(v.decode(t, strip=False)) for t in tgts[:50]]
    hyps = translate(model, sents, v, v)
    assert sum(h == r for h, r in zip(hyps, refs, strict=True)) >= 25


def test_transformer_embeddings_do_not_drown_the_positions():
    """Words (embedding × √d) and sinusoidal positions enter the transformer at the same scale.

    With nn.Embedding's default N(0, 1) the scaled words were √d ≈ 11 times louder than the
    positions at d = 128, and notebook 10's transformer reached 15.6 test BLEU instead of ~98.
    """
    d = 128
    torch.manual_seed(0)
    m = TransformerSeq2Seq(200, 300, d_model=d, nhead=4, num_layers=1, dim_feedforward=64)
    pe_std = m.pos.pe[:50].std().item()  # ≈ 0.7: sin and cos of the first 50 positions
    for emb in (m.src_emb, m.tgt_emb):
        words = emb.weight[4:] * d**0.5  # what the encoder/decoder add the positions to
        assert 0.8 < words.std().item() < 1.25, words.std().item()
        assert words.std().item() < 2 * pe_std
        assert torch.all(emb.weight[0] == 0)  # <pad> still embeds to zero


def test_transformer_learns_word_order():
    """A small transformer learns to reverse sequences: it must use the positions to do it.

    150 steps suffice when words and positions have the same scale (≈ 75 of 100 reversed
    exactly); with the embeddings' default N(0, 1) initialisation it got 2 of 100.
    """
    torch.manual_seed(0)
    v = Vocab([chr(ord("a") + i) for i in range(8)])
    g = torch.Generator().manual_seed(0)
    srcs = [[4 + int(x) for x in torch.randint(0, 8, (int(n),), generator=g)]
            for n in torch.randint(3, 9, (600,), generator=g)]
    tgts = [s[::-1] for s in srcs]
    model = TransformerSeq2Seq(len(v), len(v), d_model=64, nhead=2, num_layers=2,
                               dim_feedforward=128, dropout=0.0, max_len=32)
    it = BatchIterator(srcs, tgts, v, v, batch_size=32, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_seq2seq(model, it, num_steps=150, lr=3e-3, warmup=20, desc="reverse")
    finally:
        torch.set_num_threads(threads)
    sents = [" ".join(v.decode(s, strip=False)) for s in srcs[:100]]
    refs = [" ".join(v.decode(t, strip=False)) for t in tgts[:100]]
    hyps = translate(model, sents, v, v)
    assert sum(h == r for h, r in zip(hyps, refs, strict=True)) >= 50


def test_transformer_greedy_equals_argmax_of_teacher_forcing_on_its_own_output():
    """Feeding a trained transformer's greedy output back with teacher forcing reproduces it:
    training (one causal pass over the shifted target) and decoding see the same inputs."""
    torch.manual_seed(0)
    v = Vocab([chr(ord("a") + i) for i in range(8)])
    g = torch.Generator().manual_seed(1)
    srcs = [[4 + int(x) for x in torch.randint(0, 8, (int(n),), generator=g)]
            for n in torch.randint(3, 9, (300,), generator=g)]
    model = TransformerSeq2Seq(len(v), len(v), d_model=32, nhead=2, num_layers=1,
                               dim_feedforward=64, dropout=0.0, max_len=32)
    train_seq2seq(model, BatchIterator(srcs, [s[::-1] for s in srcs], v, v, batch_size=32),
                  num_steps=40, lr=3e-3, warmup=10, desc="reverse")
    b = make_batch(srcs[:16], [[4]] * 16, v, v)
    tokens, _ = greedy_decode(model, b.src, b.src_pad, max_len=12)  # (B, T)
    tgt_in = torch.cat([torch.full_like(tokens[:, :1], v.bos), tokens[:, :-1]], 1)  # <bos> y
    with torch.no_grad():
        logits = model(b.src, b.src_pad, tgt_in)  # (B, T, V)
    logits[..., [v.pad, v.bos]] = float("-inf")  # greedy never emits these
    alive = torch.ones_like(tokens, dtype=torch.bool)  # positions up to the first <eos>
    alive[:, 1:] = (tokens[:, :-1] != v.eos).cumprod(1).bool()
    assert torch.equal(logits.argmax(-1)[alive], tokens[alive])


# ---- the decoders before they went through course_utils.decoding --------------------------------
# Kept verbatim (apart from the step, which reads the models' teacher-forcing core `_decode`, the
# same computation their old `step` ran, without a KV cache) to prove that the thin wrappers over
# course_utils.decoding give the same tokens as before on fixed models.


def _legacy_step(model, y_prev, state, memory):
    if isinstance(model, GRUSeq2Seq):
        logits, state, weights = model._decode(y_prev[:, None], state, memory)
        return logits[:, 0].log_softmax(-1), state, None if weights is None else weights[:, 0]
    prefix = torch.cat([state, y_prev[:, None]], dim=1)  # (B, t): re-read the whole prefix
    return model._decode(prefix, memory)[:, -1].log_softmax(-1), prefix, None


def _legacy_init_state(model, memory):
    if isinstance(model, GRUSeq2Seq):
        return model.init_state(memory)
    return memory["memory"].new_zeros(memory["memory"].size(0), 0, dtype=torch.long)


def _legacy_reorder(model, state, index):
    if isinstance(model, GRUSeq2Seq):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(0, index)


@torch.no_grad()
def _legacy_greedy_decode(model, src, src_pad, max_len, bos=1, eos=2, pad=0):
    memory = model.encode(src, src_pad)
    state = _legacy_init_state(model, memory)
    b = src.size(0)
    y = torch.full((b,), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    tokens, weights = [], []
    for _ in range(max_len):
        logp, state, w = _legacy_step(model, y, state, memory)
        logp[:, [pad, bos]] = float("-inf")  # never emit <pad> or <bos> as a word
        y = logp.argmax(-1).masked_fill(done, pad)  # (B,)
        tokens.append(y)
        if w is not None:
            weights.append(w)
        done |= y == eos
        if done.all():
            break
    return torch.stack(tokens, 1), (torch.stack(weights, 1) if weights else None)


@torch.no_grad()
def _legacy_beam_search(model, src, src_pad, beam_width, max_len, length_penalty=0.6, bos=1, eos=2,
                        pad=0):
    b, k = src.size(0), beam_width
    memory = {name: t.repeat_interleave(k, dim=0) for name, t in model.encode(src, src_pad).items()}
    state = _legacy_init_state(model, memory)
    dev = src.device
    y = torch.full((b * k,), bos, dtype=torch.long, device=dev)
    scores = torch.zeros(b, k, device=dev)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first one alive
    finished = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, dtype=torch.long, device=dev)
    tokens = torch.empty(b * k, 0, dtype=torch.long, device=dev)
    base = (torch.arange(b, device=dev) * k)[:, None]  # (B, 1)
    for _ in range(max_len):
        logp, state, _ = _legacy_step(model, y, state, memory)  # (B·K, V)
        v = logp.size(-1)
        logp[:, bos] = float("-inf")  # never emit <bos> as a word
        logp = torch.where(finished[:, None], torch.full_like(logp, float("-inf")), logp)
        logp[:, pad] = torch.where(finished, 0.0, float("-inf"))
        cand = (scores.view(-1, 1) + logp).view(b, k * v)  # (B, K·V)
        scores, flat = cand.topk(k, dim=-1)  # (B, K)
        rows = (base + flat // v).view(-1)  # (B·K,) which beam each survivor extends
        y = (flat % v).view(-1)
        state = _legacy_reorder(model, state, rows)
        tokens = torch.cat([tokens[rows], y[:, None]], dim=1)
        lengths = lengths[rows] + (~finished[rows]).long()
        finished = finished[rows] | (y == eos)
        if finished.all():
            break
    penalty = ((5.0 + lengths.float()) / 6.0) ** length_penalty  # (B·K,)
    best = (scores.view(-1) / penalty).view(b, k).argmax(-1)  # (B,)
    return tokens.view(b, k, -1)[torch.arange(b, device=dev), best]


def _trimmed(tokens, eos=2):
    """Each row up to and including its first <eos> (the rest is padding)."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
@pytest.mark.parametrize("seed", [1, 3, 5])
def test_greedy_gives_the_same_tokens_and_weights_as_before(name, seed):
    model = models()[name].eval()
    src, pad, _ = batch(b=5, seed=seed)
    new, new_w = greedy_decode(model, src, pad, max_len=12)
    old, old_w = _legacy_greedy_decode(model, src, pad, max_len=12)
    assert _trimmed(new) == _trimmed(old)
    assert (new_w is None) == (old_w is None)
    if old_w is not None:
        torch.testing.assert_close(new_w[:, : old_w.size(1)], old_w)


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
@pytest.mark.parametrize("width, penalty", [(1, 0.6), (3, 0.6), (4, 0.0), (5, 1.0)])
def test_beam_search_gives_the_same_tokens_as_before(name, width, penalty):
    model = models()[name].eval()
    for seed in (1, 3, 5):
        src, pad, _ = batch(b=5, seed=seed)
        new = beam_search(model, src, pad, beam_width=width, max_len=12, length_penalty=penalty)
        old = _legacy_beam_search(model, src, pad, width, 12, length_penalty=penalty)
        assert _trimmed(new) == _trimmed(old), (seed, new, old)


# ---- the real-data path end to end: a perfect system scores 100 -----------------------------------


class _PerfectSystem(torch.nn.Module):
    """A "model" that knows the answer: for each source it writes one given translation, token by
    token, through the same interface (encode / init_state / step / reorder_state) as the
    course's models, so it runs through translate(), the decoders and the detokeniser."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], eos: int = 2):
        super().__init__()
        self.answers, self.eos = answers, eos
        self.vocab_size = 1 + max(max(a) for a in answers.values())

    def encode(self, src, src_pad):
        return {"src": src, "src_pad": src_pad}

    def init_state(self, memory, *args, **kwargs):
        return torch.zeros(memory["src"].size(0), dtype=torch.long)  # (B,) tokens written so far

    def step(self, y_prev, state, memory):
        logits = torch.zeros(y_prev.size(0), self.vocab_size)
        for b in range(y_prev.size(0)):
            key = tuple(memory["src"][b][~memory["src_pad"][b]].tolist())
            answer = self.answers[key] + [self.eos]
            logits[b, answer[min(int(state[b]), len(answer) - 1)]] = 50.0
        return logits.log_softmax(-1), state + 1, None

    @staticmethod
    def reorder_state(state, index):
        return state.index_select(0, index)


def test_a_perfect_system_scores_100_on_the_tatoeba_sample():
    """Tatoeba-style references are cased, elided and French-spaced, and a source may have several:
    a system that writes one of them must score exactly 100 BLEU after the whole pipeline."""
    from conftest import REPO

    from course_utils.datasets.translation import load_tatoeba, split_corpus, tokenize

    pairs = load_tatoeba(REPO / "data" / "tatoeba_sample.tsv")
    c = split_corpus(pairs, n_valid=8, n_test=24, seed=0)
    src_vocab = Vocab.build(tokenize(en) for en, _ in pairs)
    tgt_vocab = Vocab.build(tokenize(fr) for _, fr in pairs)  # a perfect system knows every word
    sources, refs = [en for en, _ in c.test], c.references("test")
    assert any(len(r) > 1 for r in refs)
    answers = {tuple(src_vocab.encode(tokenize(en), add_eos=True)): tgt_vocab.encode(tokenize(r[-1]))
               for en, r in zip(sources, refs, strict=True)}  # the LAST reference of each
    oracle = _PerfectSystem(answers, eos=tgt_vocab.eos)
    for beam_width in (1, 3):
        hyps = translate(oracle, sources, src_vocab, tgt_vocab, beam_width=beam_width, batch_size=5)
        assert hyps == [r[-1].replace("\u202f", " ").replace("\xa0", " ") for r in refs]
        assert corpus_bleu(hyps, refs) == pytest.approx(100.0)
    assert corpus_bleu(hyps, [r[0] for r in refs]) < 95  # scored on the first reference only
    lowered = [h.lower() for h in hyps]
    assert corpus_bleu(lowered, refs) < 90  # case counts...
    assert corpus_bleu(lowered, refs, lowercase=True) == pytest.approx(100.0)  # ...unless asked


# ---- several models side by side, and the validation sweep -----------------------------------------


def _reverse_data(n=120, seed=0):
    from course_utils.seq2seq import TranslationData

    v = Vocab([chr(ord("a") + i) for i in range(6)])
    g = torch.Generator().manual_seed(seed)
    srcs = [[4 + int(x) for x in torch.randint(0, 6, (int(k),), generator=g)]
            for k in torch.randint(2, 6, (n,), generator=g)]
    return TranslationData(srcs, [s[::-1] for s in srcs], v, v)


def _tiny_jobs():
    from course_utils.seq2seq import TranslationJob

    sizes = dict(emb=8, enc=8, dec=16, d_model=16, layers=1, ff=32, heads=2)
    return [TranslationJob(f"{kind}-{seed}", kind, steps=6, lr=3e-3, warmup=2, label_smoothing=0.1,
                           seed=seed, batch_size=8, sizes=sizes)
            for kind in ("gru", "attn", "transformer") for seed in (0, 1)]


def test_train_jobs_are_seeded_per_job():
    from course_utils.seq2seq import train_jobs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jobs = _tiny_jobs()
        a = train_jobs(jobs[:2], _reverse_data())
        b = train_jobs(jobs[:2][::-1], _reverse_data())  # another order: the same models
    finally:
        torch.set_num_threads(threads)
    for name in ("gru-0", "gru-1"):
        for p, q in zip(a[name].model.parameters(), b[name].model.parameters(), strict=True):
            assert torch.equal(p, q)
    assert a["gru-0"].history["loss"] != a["gru-1"].history["loss"]  # the seed changes the run


@pytest.mark.slow
def test_train_jobs_in_two_processes_give_the_same_models_as_in_this_one():
    from course_utils.seq2seq import train_jobs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers use one thread each; so must this process to be equal
    try:
        here = train_jobs(_tiny_jobs(), _reverse_data(), workers=1)
        there = train_jobs(_tiny_jobs(), _reverse_data(), workers=2)
    finally:
        torch.set_num_threads(threads)
    assert list(there) == [j.name for j in _tiny_jobs()]
    for name, trained in here.items():
        assert trained.history["loss"] == there[name].history["loss"]
        for p, q in zip(trained.model.parameters(), there[name].model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_train_jobs_bad_input():
    from course_utils.seq2seq import TranslationJob, train_jobs

    job = _tiny_jobs()[0]
    with pytest.raises(ValueError, match="job names must be unique"):
        train_jobs([job, job], _reverse_data())
    with pytest.raises(TypeError, match="jobs must be a non-empty list of TranslationJob"):
        train_jobs(job, _reverse_data())
    with pytest.raises(ValueError, match="workers must be a positive int"):
        train_jobs([job], _reverse_data(), workers=0)
    with pytest.raises(ValueError, match="kind must be one of 'gru', 'attn', 'transformer'"):
        TranslationJob("x", "lstm", steps=1, lr=1e-3, warmup=0)  # refused when it is made


@pytest.mark.slow
def test_the_tuning_script_runs_and_chooses_on_the_validation_split(capsys):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tune_translation", REPO / "scripts" / "tune_translation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        out = script.main(["--fast", "--workers", "1", "--lrs", "1e-3", "4e-3", "--label-smoothing", "0", "0.1"])
    finally:
        torch.set_num_threads(threads)
    assert set(out["lr"]) == {"gru", "attn", "transformer"} and out["label_smoothing"] in (0.0, 0.1)
    assert len(out["scores"]) == 12
    printed = capsys.readouterr().out
    assert "validation BLEU (greedy)" in printed and "chosen (*): label_smoothing=" in printed
    # the choice is the best validation score under the chosen smoothing
    for kind, lr in out["lr"].items():
        ls = out["label_smoothing"]
        assert out["scores"][kind, ls, lr] == max(out["scores"][kind, ls, r] for r in (1e-3, 4e-3))


def test_the_tuning_script_uses_the_notebooks_full_mode_protocol():
    """scripts/tune_translation.py chooses learning rates for notebook 10: same corpus, sizes,
    budget, batch and warm-up as the notebook's full mode, or its table means nothing there."""
    import ast
    import importlib.util
    import json
    import re

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tune_translation", REPO / "scripts" / "tune_translation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cells = json.loads((REPO / "notebooks" / "10_translation.ipynb").read_text(encoding="utf-8"))["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")

    def full(name):
        match = re.search(rf"^{name} = by_mode\(\s*full=(.*?),\s*fast=", source, re.M | re.S)
        assert match, f"notebook 10 defines no {name} = by_mode(full=..., fast=...)"
        return eval(match.group(1), {"dict": dict})  # a literal: a number or dict(...)

    assert full("N_PAIRS") == script.FULL["n_pairs"] and full("N_TEST") == script.FULL["n_test"]
    assert full("STEPS") == script.FULL["steps"] and full("BATCH") == script.FULL["batch"]
    assert full("SIZES") == script.FULL["sizes"]
    assert "n_valid=200" in source and script.FULL["n_valid"] == 200
    assert "WARMUP = STEPS // 10" in source and script.warmup_steps(600) == 600 // 10
    chosen = re.search(r"^LR = (dict\(.*?\))", source, re.M)
    assert chosen, "notebook 10 states its learning rates as LR = dict(...)"
    lrs = eval(chosen.group(1), {"dict": dict})
    assert set(lrs) == {"gru", "attn", "transformer"} and all(lr in script.LRS for lr in lrs.values())
    ls = ast.literal_eval(re.search(r"^LABEL_SMOOTHING = ([0-9.]+)", source, re.M).group(1))
    assert ls in script.LABEL_SMOOTHING


def test_the_notebooks_learning_rates_are_the_ones_its_tuning_table_chooses():
    """Notebook 10 prints the validation table of scripts/tune_translation.py and trains with
    LR = dict(...) and LABEL_SMOOTHING = ...: the rates must be the ones the script's rule picks
    from that table (and the table's bold cells must mark them), or the comparison is not the
    protocol the prose describes."""
    import importlib.util
    import json
    import re

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tune_translation", REPO / "scripts" / "tune_translation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cells = json.loads((REPO / "notebooks" / "10_translation.ipynb").read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    header = re.search(r"^\| model \| label smoothing \|(.*)\|$", markdown, re.M)
    assert header, "notebook 10 shows no validation table (| model | label smoothing | ... |)"
    rates = [float(h.strip().split("·")[0]) * 1e-3 for h in header.group(1).split("|")]
    assert sorted(rates) == sorted(script.LRS), "the table's columns are not the script's grid"
    kinds = {"GRU, fixed context": "gru", "GRU + Bahdanau attention": "attn", "transformer": "transformer"}
    scores, bold = {}, set()
    for name, kind in kinds.items():
        rows = re.findall(rf"^\| {re.escape(name)} \| ([0-9.]+) \|(.*)\|$", markdown, re.M)
        assert rows, f"the validation table has no row for {name}"
        for ls, cells_ in rows:
            for lr, cell in zip(rates, cells_.split("|"), strict=True):
                scores[kind, float(ls), lr] = float(cell.strip().strip("*"))
                if cell.strip().startswith("**"):
                    bold.add((kind, float(ls), lr))
    assert {ls for _, ls, _ in scores} == set(script.LABEL_SMOOTHING)
    best_ls, best_lrs = script.choose(scores)
    lrs = eval(re.search(r"^LR = (dict\(.*?\))", code, re.M).group(1), {"dict": dict})
    ls = float(re.search(r"^LABEL_SMOOTHING = ([0-9.]+)", code, re.M).group(1))
    assert (ls, lrs) == (best_ls, best_lrs), "notebook 10 trains with other rates than its table chooses"
    assert bold == {(kind, best_ls, lr) for kind, lr in best_lrs.items()}, "the table's bold cells"


# ---- the transformer decodes with a KV cache: the same steps, the same tokens -------------------


def _trained_reverser(seed=0):
    torch.manual_seed(seed)
    v = Vocab([chr(ord("a") + i) for i in range(8)])
    g = torch.Generator().manual_seed(seed)
    srcs = [[4 + int(x) for x in torch.randint(0, 8, (int(n),), generator=g)]
            for n in torch.randint(3, 9, (300,), generator=g)]
    model = TransformerSeq2Seq(len(v), len(v), d_model=32, nhead=2, num_layers=2,
                               dim_feedforward=64, dropout=0.0, max_len=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_seq2seq(model, BatchIterator(srcs, [s[::-1] for s in srcs], v, v, batch_size=32),
                      num_steps=40, lr=3e-3, warmup=10, desc="reverse", progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval(), v, srcs


def test_cached_transformer_step_equals_rereading_the_prefix():
    model = models()["transformer"].eval()
    src, pad, tgt = batch(b=3, t=7)
    with torch.no_grad():
        memory = model.encode(src, pad)
        cached, uncached = model.init_state(memory, max_len=7), model.init_state(memory, use_cache=False)
        for t in range(tgt.size(1)):
            a, cached, _ = model.step(tgt[:, t], cached, memory)
            b, uncached, _ = model.step(tgt[:, t], uncached, memory)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert cached["cache"].length(0) == tgt.size(1)  # one position per step, nothing re-read


@pytest.mark.parametrize("trained", [False, True])
def test_the_transformer_decodes_the_same_tokens_with_and_without_the_cache(trained):
    if trained:
        model, v, srcs = _trained_reverser()
        b = make_batch(srcs[:24], [[4]] * 24, v, v)
        src, pad = b.src, b.src_pad
    else:
        model = models()["transformer"].eval()
        src, pad, _ = batch(b=6, seed=4)
    with_cache, _ = greedy_decode(model, src, pad, max_len=12, use_cache=True)
    without, _ = greedy_decode(model, src, pad, max_len=12, use_cache=False)
    assert torch.equal(with_cache, without)
    for width in (2, 4):
        assert torch.equal(beam_search(model, src, pad, width, 12, use_cache=True),
                           beam_search(model, src, pad, width, 12, use_cache=False))
    assert len({tuple(row) for row in with_cache.tolist()}) > 3  # not one output for every source


def test_translate_with_and_without_the_cache_and_bad_use_cache():
    model, v, srcs = _trained_reverser(seed=1)
    sents = [" ".join(v.decode(s)) for s in srcs[:30]]
    assert translate(model, sents, v, v, use_cache=True) == translate(model, sents, v, v, use_cache=False)
    with pytest.raises(TypeError, match="use_cache must be True or False"):
        translate(model, sents, v, v, use_cache="yes")


@pytest.mark.parametrize("name", ["gru", "attn", "transformer"])
def test_teacher_forcing_bad_targets(name):
    model = models()[name]
    src, pad, tgt = batch()
    with pytest.raises(ValueError, match=r"tgt_in must hold token ids in \[0, 31\)"):
        model(src, pad, tgt + TV)
    with pytest.raises(ValueError, match="tgt_in must have one row per source sentence"):
        model(src, pad, tgt[:2])
    with pytest.raises(ValueError, match="tgt_in must have 2 dims"):
        model(src, pad, tgt[0])


def test_cross_attention_layer_out_of_range():
    model = models()["transformer"].eval()
    src, pad, tgt = batch()
    assert model.cross_attention(src, pad, tgt, layer=0).shape == (3, 6, 7)
    with pytest.raises(ValueError, match=r"layer must be an int in \[-2, 1\], got 2"):
        model.cross_attention(src, pad, tgt, layer=2)


# ---- on a GPU: autocast in training, no device synchronisation per step ---------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["attn", "transformer"])
def test_training_on_cuda_autocasts_and_reads_the_loss_rarely(name, monkeypatch):
    from course_utils.precision import amp_dtype

    model = models()[name]
    dtypes = []
    model.register_forward_hook(lambda m, args, out: dtypes.append((out[0] if isinstance(out, tuple) else out).dtype))
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or item(self))
    v = Vocab([chr(ord("a") + i) for i in range(SV - 4)])
    srcs = [[4 + (i * 7 + j) % (SV - 4) for j in range(5)] for i in range(64)]
    history = train_seq2seq(model, BatchIterator(srcs, srcs, v, v, batch_size=16), num_steps=20,
                            lr=1e-3, warmup=2, device="cuda", progress=False)
    assert set(dtypes) == {amp_dtype("cuda")}  # the forward pass ran under autocast
    assert len(history["loss"]) == 20 and len(reads) <= 2  # not one .item() (sync) per step
