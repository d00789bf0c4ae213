"""Captioning: decoders, decoding, metrics against references, and the grounding score."""

from __future__ import annotations

import math

import pytest
import sacrebleu
import torch

from course_utils.captioning import (
    AttentionLSTMDecoder,
    Captioner,
    CaptionJob,
    GridEncoder,
    PooledLSTMDecoder,
    TransformerCaptionDecoder,
    beam_search,
    bleu4,
    build_captioner,
    caption_loss,
    doubly_stochastic_penalty,
    evaluate,
    exact_match,
    greedy_decode,
    grounding_hits,
    grounding_score,
    slot_accuracy,
    train_captioner,
    train_jobs,
    transformer_grounding,
)
from course_utils.datasets.scenes import caption_vocab, make_dataset

V = len(caption_vocab())


def _models(dim: int = 32):
    torch.manual_seed(0)
    return {
        "attention": Captioner(GridEncoder(dim), AttentionLSTMDecoder(V, dim, 16, 32, 32)),
        "flat": Captioner(GridEncoder(dim), PooledLSTMDecoder(V, dim, 16, "flat", 16, 32)),
        "mean": Captioner(GridEncoder(dim), PooledLSTMDecoder(V, dim, 16, "mean", 16, 32)),
        "transformer": Captioner(GridEncoder(dim), TransformerCaptionDecoder(V, dim, 32, 4, 2, 64)),
    }


@pytest.fixture(scope="module")
def data():
    return make_dataset(12, seed=5)


# ---- the grounding score on hand-built attention maps ----


def _scene(data, i):
    n = int(data.num_objects[i])
    return [o.description for o in data.objects[i]], data.cells[i, :n]


def _maps_on(data, i, target):
    """One-hot maps: every word of the reference caption looks at object ``target(k)``."""
    words = data.captions[i].split()
    objects, cells = _scene(data, i)
    att = torch.zeros(len(words), 16)
    k = -1
    for t, w in enumerate(words):
        k += w == "a"
        att[t, int(cells[target(k, len(objects))].flatten().nonzero()[0])] = 1.0
    return words, att


def test_grounding_right_object_scores_one(data):
    for i in range(len(data)):
        words, att = _maps_on(data, i, lambda k, n: k)
        objects, cells = _scene(data, i)
        hits = grounding_hits(words, att, objects, cells)
        assert len(hits) == 2 * len(objects) and all(hits)
        assert all(grounding_hits(words, att, objects, cells, criterion="mass"))


def test_grounding_wrong_object_scores_zero(data):
    checked = 0
    for i in range(len(data)):
        objects, cells = _scene(data, i)
        # look at the next object instead; skip scenes where two objects share a colour or shape
        # (then "the object the word names" is ambiguous and the next one may be named too)
        if len({o[1] for o in objects}) < len(objects) or len({o[2] for o in objects}) < len(objects):
            continue
        words, att = _maps_on(data, i, lambda k, n: (k + 1) % n)
        assert not any(grounding_hits(words, att, objects, cells))
        assert not any(grounding_hits(words, att, objects, cells, criterion="mass"))
        checked += 1
    assert checked >= 3


def test_grounding_score_mass_and_peak_differ():
    objects = [("small", "red", "circle"), ("large", "blue", "square")]
    cells = torch.zeros(2, 4, dtype=torch.bool)
    cells[0, 0] = cells[1, 3] = True
    words = ["a", "small", "red", "circle"]
    att = torch.tensor([[0.25] * 4, [0.25] * 4, [0.4, 0.2, 0.2, 0.2], [0.6, 0.1, 0.1, 0.2]])
    assert grounding_hits(words, att, objects, cells, "peak") == [True, True]
    assert grounding_hits(words, att, objects, cells, "mass") == [False, True]
    # a colour that is not in the scene names nothing: a miss
    assert grounding_hits(["a", "green", "circle"], att[1:], objects, cells) == [False, True]


def test_grounding_score_over_a_dataset(data):
    words, maps = [], torch.zeros(len(data), 30, 16)
    for i in range(len(data)):
        w, att = _maps_on(data, i, lambda k, n: k)
        words.append(w)
        maps[i, : len(w)] = att
    assert grounding_score(words, maps, data) == 1.0


# ---- decoding ----


@pytest.mark.parametrize("name", ["attention", "flat", "mean", "transformer"])
def test_decoding_shapes_and_beam1_equals_greedy(name, data):
    model = _models()[name].eval()
    images, vocab = data.images[:5], data.vocab
    greedy = greedy_decode(model, images, vocab, max_len=12)
    assert greedy.tokens.shape == (5, 12) and greedy.tokens.dtype == torch.long
    beam1 = beam_search(model, images, vocab, beam_size=1, max_len=12)
    assert torch.equal(greedy.tokens, beam1.tokens)
    beam3 = beam_search(model, images, vocab, beam_size=3, max_len=12)
    assert beam3.tokens.shape[0] == 5 and beam3.tokens.shape[1] <= 12
    if name in ("flat", "mean"):
        assert greedy.attention is None and beam3.attention is None
    else:
        assert greedy.attention.shape == (5, 12, 16)
        torch.testing.assert_close(greedy.attention, beam1.attention)
        live = greedy.attention.sum(-1) > 0
        torch.testing.assert_close(greedy.attention.sum(-1)[live], torch.ones(int(live.sum())))


def test_beam_search_finds_a_likelier_caption_than_greedy(data):
    model = _models()["attention"].eval()
    images, vocab = data.images, data.vocab

    def logp(tokens):
        full = torch.cat([torch.full((len(tokens), 1), vocab.bos), tokens], 1)
        logits, _ = model(images, full[:, :-1])
        lp = torch.log_softmax(logits, -1).gather(-1, full[:, 1:, None])[..., 0]
        # sum up to and including <eos> (a caption without <eos> is cut at max_len)
        keep = torch.cumsum((full[:, 1:] == vocab.eos).long(), 1) - (full[:, 1:] == vocab.eos).long() == 0
        return (lp * keep).sum(1)

    with torch.no_grad():
        g = greedy_decode(model, images, vocab, max_len=10).tokens
        b = beam_search(model, images, vocab, beam_size=4, max_len=10).tokens
        b = torch.nn.functional.pad(b, (0, 10 - b.size(1)), value=vocab.pad)
        g = torch.nn.functional.pad(g, (0, 10 - g.size(1)), value=vocab.pad)
        assert (logp(b) >= logp(g) - 1e-5).all()


def _assert_steps_equal_teacher_forcing(model, images, tokens):
    """Decode ``tokens`` one step at a time; every step's logits (and attention maps, when the
    decoder returns them) must equal the teacher-forced pass. Returns the final state."""
    dec = model.decoder
    feats = model.encoder(images)
    logits, maps = dec(feats, tokens)
    state = dec.init_state(feats)
    for t in range(tokens.size(1)):
        lg, state, alpha = dec.step(tokens[:, t], state)
        torch.testing.assert_close(lg, logits[:, t], atol=1e-5, rtol=1e-5)
        if maps is not None:
            torch.testing.assert_close(alpha, maps[:, t], atol=1e-6, rtol=1e-5)
    return state


def test_transformer_step_equals_teacher_forcing(data):
    model = _models()["transformer"].eval()
    with torch.no_grad():
        _assert_steps_equal_teacher_forcing(model, data.images[:3], data.tokens[:3, :7])
        assert model.decoder.cross_attention().shape == (3, 2, 4, 7, 16)


def test_lstm_step_equals_teacher_forcing(data):
    model = _models()["attention"].eval()
    dec = model.decoder
    with torch.no_grad():
        feats = model.encoder(data.images[:3])
        tokens = data.tokens[:3, :7]
        logits, alphas = dec(feats, tokens)
        state = dec.init_state(feats)
        for t in range(tokens.size(1)):
            lg, state, alpha = dec.step(tokens[:, t], state)
            torch.testing.assert_close(lg, logits[:, t])
            torch.testing.assert_close(alpha, alphas[:, t])


def test_encoder_is_patch_local():
    enc = GridEncoder(32).eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 8:16, 16:24] = torch.rand(3, 8, 8)  # change cell (1, 2) only
    fx, fy = enc(x), enc(y)
    changed = (fx - fy).abs().amax(-1)[0] > 1e-6  # (16,)
    assert changed.nonzero().flatten().tolist() == [1 * 4 + 2]


# ---- metrics ----


def test_bleu_matches_sacrebleu_and_exact_match():
    hyps = ["a small red circle above a blue square", "a large green cross", "a small red circle"]
    refs = ["a small red circle above a large blue square", "a large green cross", "a small red cross"]
    assert bleu4(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert bleu4(refs, refs) == pytest.approx(100.0)
    assert exact_match(hyps, refs) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="hypotheses"):
        bleu4(hyps[:2], refs)


def test_slot_accuracy():
    refs = ["a small red circle left of a large blue square", "a large green cross above a small red cross"]
    hyps = ["a small red circle left of a large blue square", "a large green cross"]
    acc = slot_accuracy(hyps, refs)
    assert acc == {"size": 0.75, "colour": 0.75, "shape": 0.75, "relation": 0.5, "count": 0.5}


def test_doubly_stochastic_penalty():
    alphas = torch.softmax(torch.randn(3, 5, 4), -1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]).bool()
    expected = sum(((1 - alphas[b, mask[b]].sum(0)) ** 2).sum() for b in range(3)) / 3
    torch.testing.assert_close(doubly_stochastic_penalty(alphas, mask), expected)
    # perfectly "doubly stochastic": T = N words, each cell attended once in total
    eye = torch.eye(4)[None]
    assert doubly_stochastic_penalty(eye).item() == 0.0
    with pytest.raises(ValueError, match="B, T, N"):
        doubly_stochastic_penalty(torch.zeros(4, 4))


def test_training_runs_and_evaluate_reports_everything(data):
    model = _models()["attention"]
    history = train_captioner(model, data, steps=3, batch_size=4, ds_weight=1.0)
    assert len(history["loss"]) == 3 and "ds_penalty" in history
    assert all(math.isfinite(x) for x in history["loss"])
    out = caption_loss(model, data.images[:2], data.tokens[:2], ds_weight=0.0)
    assert "ds_penalty" not in out
    result = evaluate(model, data, batch_size=5)
    for key in ("bleu4", "exact", "size", "colour", "shape", "relation", "grounding", "grounding_mass"):
        assert math.isfinite(result[key]), key
    flat = evaluate(_models()["flat"], data)
    assert math.isnan(flat["grounding"])
    tf = _models()["transformer"]
    res = evaluate(tf, data)
    scores = transformer_grounding(tf, data, res["words"])
    assert scores.shape == (2, 5) and ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("pool", ["flat", "mean"])
def test_pooled_step_equals_teacher_forcing_and_sees_the_image_every_step(pool, data):
    model = _models()[pool].eval()
    dec = model.decoder
    with torch.no_grad():
        tokens = data.tokens[:3, :7]
        state = _assert_steps_equal_teacher_forcing(model, data.images[:3], tokens)
        # the image vector is an input of every step, not only of the initial state: with the
        # same (h, c), a different image still changes the next word's logits
        other = dec.init_state(model.encoder(data.images[3:6]))
        swapped = {**state, "v": other["v"]}
        lg_swapped, _, _ = dec.step(tokens[:, -1], swapped)
        lg_same, _, _ = dec.step(tokens[:, -1], state)
        assert not torch.allclose(lg_swapped, lg_same)


def test_pooled_decoder_rejects_a_wrong_grid():
    dec = PooledLSTMDecoder(10, feat_dim=16, grid_cells=16, pool="flat")
    with pytest.raises(ValueError, match="16 grid cells"):
        dec(torch.randn(2, 9, 16), torch.randint(0, 10, (2, 3)))
    with pytest.raises(ValueError, match="pool must be"):
        PooledLSTMDecoder(10, pool="max")


def test_transformer_word_and_position_embeddings_on_one_scale():
    # the bug this guards against: N(0, 1) word embeddings times √d swamped the N(0, 0.02²)
    # positions, and the decoder could not tell where in the caption it was
    dec = TransformerCaptionDecoder(vocab_size=19, feat_dim=32, d_model=32, nhead=4, num_layers=1)
    ratio = dec.embed.weight.std() / dec.pos.weight.std()
    assert 0.5 < ratio < 2.0, ratio
    with torch.no_grad():
        tokens = torch.full((1, 6), 3)  # the same word at six positions
        x = dec.pos(dec.embed(tokens))[0]  # what the first layer sees (T, d)
        assert (x[1:] - x[0]).norm(dim=-1).min() > 0.2 * x[0].norm()


def test_train_captioner_warmup(data):
    model = _models()["transformer"]
    with pytest.raises(ValueError, match="warmup"):
        train_captioner(model, data, steps=3, batch_size=4, warmup=3)
    history = train_captioner(model, data, steps=4, batch_size=4, warmup=2)
    assert len(history["loss"]) == 4


def test_train_jobs_in_two_processes_equals_one_after_the_other(data):
    small = {"hidden_dim": 16, "embed_dim": 8}
    jobs = [
        CaptionJob("att", "attention", steps=3, lr=3e-3, ds_weight=0.1, dim=16, decoder_kwargs={**small, "attn_dim": 16}),
        CaptionJob("flat", "flat", steps=3, lr=3e-3, dim=16, decoder_kwargs=small),
        CaptionJob("tf", "transformer", steps=3, lr=1e-3, warmup=1, dim=16,
                   decoder_kwargs={"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32}),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same summation order, the same bits
    try:
        here = train_jobs(jobs, data, workers=1)
    finally:
        torch.set_num_threads(threads)
    there = train_jobs(jobs, data, workers=2)
    assert list(there) == ["att", "flat", "tf"]  # in the order asked, whatever order they ran in
    for name in here:
        a, b = here[name].model.state_dict(), there[name].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert here[name].history["loss"] == there[name].history["loss"]
        assert there[name].seconds > 0


def test_caption_jobs_reject_bad_input(data):
    with pytest.raises(ValueError, match="decoder must be one of"):
        build_captioner(CaptionJob("x", "gru", 1, 1e-3), V)
    job = CaptionJob("x", "flat", 1, 1e-3, dim=16)
    with pytest.raises(ValueError, match="unique"):
        train_jobs([job, job], data)
    with pytest.raises(ValueError, match="workers"):
        train_jobs([job], data, workers=0)


def test_transformer_memory_has_a_position_per_cell():
    dec = TransformerCaptionDecoder(vocab_size=19, feat_dim=32, d_model=32, nhead=4, num_layers=1)
    feats = torch.zeros(1, 16, 32)  # sixteen identical cells: only the positions tell them apart
    memory = dec.memory(feats)  # (1, 16, 32)
    assert torch.cdist(memory[0], memory[0]).add(torch.eye(16) * 1e9).min() > 1.0
    with pytest.raises(ValueError, match="16"):
        dec.memory(torch.zeros(1, 9, 32))


def test_the_baseline_tuning_script_builds_every_variant_it_lists():
    """scripts/tune_caption_baselines.py reproduces notebook 12's tuning table; it must not rot."""
    import importlib.util

    from conftest import REPO

    path = REPO / "scripts" / "tune_caption_baselines.py"
    spec = importlib.util.spec_from_file_location("tune_caption_baselines", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    feats, tokens = torch.randn(2, 16, 128), torch.randint(0, 20, (2, 6))  # (B, cells, C), (B, T)
    for name in sorted({v.split("@")[0] for v in tune.TABLE}):
        logits, _ = tune.build(name, vocab_size=20).decoder(feats, tokens)
        assert logits.shape == (2, 6, 20), name
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        tune.build("nope", 20)


# ---- how the loss is put together ----


class _FixedDecoder(torch.nn.Module):
    """A decoder that returns given logits and attention maps, whatever it is fed."""

    def __init__(self, logits, alphas):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.alphas = None if alphas is None else torch.nn.Parameter(alphas.clone())
        self.seen = None

    def init_state(self, feats):
        return {}

    def step(self, tokens, state):
        raise NotImplementedError

    def forward(self, feats, tokens):
        self.seen = tokens
        return self.logits, (None if self.alphas is None else torch.softmax(self.alphas, -1))


def _fixed_captioner(b=2, t=4, v=V, n=16, attention=True):
    gen = torch.Generator().manual_seed(3)
    decoder = _FixedDecoder(torch.randn(b, t, v, generator=gen),
                            torch.randn(b, t, n, generator=gen) if attention else None)
    return Captioner(GridEncoder(16), decoder)


def test_caption_loss_is_cross_entropy_over_real_words_plus_lambda_times_the_penalty():
    model = _fixed_captioner()
    pad = 0
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])  # <bos> words <eos> <pad>...
    images = torch.rand(2, 3, 32, 32)
    out = caption_loss(model, images, tokens, pad=pad, ds_weight=0.3)
    # by hand: the decoder reads tokens[:, :-1] and is scored on tokens[:, 1:]
    assert torch.equal(model.decoder.seen, tokens[:, :-1])
    targets = tokens[:, 1:]
    logits, alphas = model.decoder.logits, torch.softmax(model.decoder.alphas, -1)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]  # (B, T)
    real = targets != pad
    ce = -(logp * real).sum() / real.sum()  # mean over the 6 real target words, not the 8 slots
    per_cell = (alphas * real[..., None]).sum(1)  # (B, N): padding steps give no attention
    penalty = ((1 - per_cell) ** 2).sum(1).mean()
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["ds_penalty"], penalty)
    torch.testing.assert_close(out["loss"], ce + 0.3 * penalty)
    # the penalty is part of the graph: its gradient reaches the attention maps
    out["loss"].backward()
    grad_with = model.decoder.alphas.grad.clone()
    model.zero_grad()
    caption_loss(model, images, tokens, pad=pad, ds_weight=0.0)["loss"].backward()
    assert model.decoder.alphas.grad is None or model.decoder.alphas.grad.abs().max() == 0
    assert grad_with.abs().max() > 0


def test_caption_loss_weight_scales_only_the_penalty():
    model = _fixed_captioner()
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    images = torch.rand(2, 3, 32, 32)
    parts = [caption_loss(model, images, tokens, ds_weight=w) for w in (0.0, 1.0, 2.5)]
    assert "ds_penalty" not in parts[0]  # λ = 0: cross-entropy alone, no penalty computed
    torch.testing.assert_close(parts[0]["loss"], parts[1]["ce"])
    for w, part in zip((1.0, 2.5), parts[1:], strict=True):
        torch.testing.assert_close(part["ce"], parts[0]["ce"])  # the cross-entropy does not move
        torch.testing.assert_close(part["loss"] - part["ce"], w * part["ds_penalty"])
    # a decoder without attention has no penalty, whatever the weight
    plain = _fixed_captioner(attention=False)
    out = caption_loss(plain, images, tokens, ds_weight=5.0)
    assert "ds_penalty" not in out
    torch.testing.assert_close(out["loss"].detach(), out["ce"])


def test_train_captioner_logs_the_loss_it_optimises(data):
    torch.manual_seed(0)
    model = _models(16)["attention"]
    history = train_captioner(model, data, steps=2, batch_size=4, ds_weight=0.5)
    for loss, ce, reg in zip(history["loss"], history["ce"], history["ds_penalty"], strict=True):
        assert loss == pytest.approx(ce + 0.5 * reg, rel=1e-5)


# ---- bad input gets a clear error ----


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: GridEncoder(16, 0), ValueError, "grid must be a positive int, got 0"),
        (lambda: GridEncoder(0), ValueError, "dim must be a positive int"),
        (lambda: GridEncoder(16, 4, image_size=30), ValueError, "multiple of grid"),
        (lambda: GridEncoder(16)(torch.zeros(1, 3, 32, 32, dtype=torch.long)), TypeError,
         "images must be a floating-point tensor"),
        (lambda: GridEncoder(16)(torch.zeros(3, 32, 32)), ValueError, r"images must have shape \(B, 3, 32, 32\)"),
        (lambda: AttentionLSTMDecoder(0, 16), ValueError, "vocab_size must be a positive int"),
        (lambda: AttentionLSTMDecoder(V, 16, dropout=1.5), ValueError, "dropout"),
        (lambda: AttentionLSTMDecoder(V, 16, hidden_dim=16)(torch.zeros(2, 16, 8), torch.zeros(2, 3, dtype=torch.long)),
         ValueError, r"feats must have shape \(B, N, 16\)"),
        (lambda: AttentionLSTMDecoder(V, 16, hidden_dim=16)(torch.zeros(2, 16, 16), torch.full((2, 3), V)),
         ValueError, rf"tokens must hold token ids in \[0, {V}\)"),
        (lambda: AttentionLSTMDecoder(V, 16, hidden_dim=16)(torch.zeros(2, 16, 16), torch.zeros(3, 3, dtype=torch.long)),
         ValueError, "B = 2"),
        (lambda: AttentionLSTMDecoder(V, 16, hidden_dim=16)(torch.zeros(2, 16, 16), torch.zeros(2, 3)),
         TypeError, "integer tensor of token ids"),
        (lambda: PooledLSTMDecoder(V, 16, grid_cells=0), ValueError, "grid_cells must be a positive int"),
        (lambda: PooledLSTMDecoder(V, 16, 16, "flat")(torch.zeros(2, 16, 16), torch.zeros(2, 0, dtype=torch.long)),
         ValueError, "T >= 1"),
        (lambda: TransformerCaptionDecoder(V, 16, 16, 2, 1, max_len=0), ValueError, "max_len must be a positive int"),
        (lambda: TransformerCaptionDecoder(V, 16, 16, 2, 1, max_len=4)(torch.zeros(1, 16, 16),
                                                                       torch.zeros(1, 5, dtype=torch.long)),
         ValueError, "at most max_len=4"),
        (lambda: Captioner(torch.nn.Linear(2, 2), PooledLSTMDecoder(V, 16)), TypeError, "encoder must be a GridEncoder"),
        (lambda: Captioner(GridEncoder(16), torch.nn.Linear(2, 2)), TypeError, "decoder must be a caption decoder"),
        (lambda: doubly_stochastic_penalty(torch.ones(2, 3, 4, dtype=torch.long)), TypeError, "floating-point"),
        (lambda: doubly_stochastic_penalty(torch.ones(2, 3, 4), torch.ones(2, 4, dtype=torch.bool)), ValueError,
         r"mask must be a bool tensor of shape \(B, T\) = \(2, 3\)"),
        (lambda: doubly_stochastic_penalty(torch.ones(2, 3, 4), torch.ones(2, 3)), ValueError, "mask must be a bool"),
        (lambda: caption_loss(_fixed_captioner(), torch.rand(2, 3, 32, 32), torch.ones(2, 1, dtype=torch.long)),
         ValueError, "T >= 2"),
        (lambda: caption_loss(_fixed_captioner(), torch.rand(2, 3, 32, 32), torch.ones(2, 5, dtype=torch.long),
                              ds_weight=-1.0), ValueError, "ds_weight"),
        (lambda: greedy_decode(_models(16)["attention"], torch.rand(1, 3, 32, 32), caption_vocab(), max_len=0),
         ValueError, "max_len must be a positive int, got 0"),
        (lambda: beam_search(_models(16)["attention"], torch.rand(1, 3, 32, 32), caption_vocab(), beam_size=0),
         ValueError, "beam_size must be a positive int, got 0"),
        (lambda: greedy_decode(_models(16)["attention"], torch.rand(1, 3, 32, 32), {"<bos>": 1}), TypeError,
         "vocab must be"),
        (lambda: bleu4("a red circle", "a red circle"), TypeError, "a single str"),
        (lambda: exact_match(["a"], ["a", "b"]), ValueError, "1 hypotheses for 2 references"),
        (lambda: slot_accuracy("a b", ["a b"]), TypeError, "hypotheses must be a list of str"),
        (lambda: grounding_hits(["a"], torch.zeros(1, 16), [("small", "red", "circle")], torch.zeros(2, 4, 4, dtype=torch.bool)),
         ValueError, "one mask per object"),
        (lambda: grounding_hits(["a"], torch.zeros(1, 16), [("small", "red", "circle")], torch.zeros(1, 4, 4)),
         TypeError, "cells must be a bool tensor"),
        (lambda: grounding_hits(["a"], torch.zeros(1, 16, dtype=torch.long), [], torch.zeros(0, 16, dtype=torch.bool)),
         TypeError, "attention must be a floating-point"),
        (lambda: grounding_hits(["a"], torch.zeros(1, 16), [], torch.zeros(0, 16, dtype=torch.bool), criterion="max"),
         ValueError, "criterion must be one of 'peak', 'mass'"),
        (lambda: CaptionJob("x", "flat", steps=0, lr=1e-3), ValueError,
         "steps must be a positive int"),
        (lambda: CaptionJob("x", "flat", steps=10, lr=0.0), ValueError, "lr must be a real number"),
        (lambda: CaptionJob("x", "flat", steps=10, lr=1e-3, warmup=10), ValueError,
         "warmup must be an int"),
        (lambda: CaptionJob("", "flat", steps=10, lr=1e-3), ValueError,
         "name must be a non-empty str"),
        (lambda: train_jobs("flat", None), TypeError, "jobs must be a non-empty list of CaptionJob"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _meta(t):
    return t.to("meta")


_IMAGES = torch.rand(2, 3, 32, 32)
_FEATS = torch.randn(2, 16, 16)
_TOKENS = torch.ones(2, 3, dtype=torch.long)


# One case per kind of mistake, each message naming its argument: inputs of another dtype or
# device than the layer that reads them (float64, the meta device), an empty batch whose
# mismatch is reported against the right input, NaN/inf that would surface steps later (as
# logits or as a finite grounding score), the wrong kind of object, settings that hid behind a
# default (log_every=0, progress="no"), the fields of a job named as the caller wrote them.
@pytest.mark.parametrize("decoder", ["attention", "flat", "transformer"])
@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m: m.encoder(_IMAGES.double()), TypeError, "images must have the module's dtype"),
    (lambda m: m.encoder(_meta(_IMAGES)), ValueError, "images must be on the module's device"),
    (lambda m: m.decoder(_FEATS.double(), _TOKENS), TypeError,
     "feats must have the module's dtype"),
    (lambda m: m.decoder(_meta(_FEATS), _TOKENS), ValueError,
     "feats must be on the module's device"),
    (lambda m: m.decoder(_FEATS, _meta(_TOKENS)), ValueError, "tokens must be on cpu"),
    (lambda m: m.decoder(_FEATS[:0], _TOKENS), ValueError,
     r"B = 0 \(the images, feats \(0, 16, 16\)\)"),
    (lambda m: m(_IMAGES, _meta(_TOKENS)), ValueError, "tokens must be on cpu"),
    (lambda m: greedy_decode(m, _IMAGES.masked_fill(_IMAGES > 0.5, math.nan), caption_vocab()),
     ValueError, "images contains NaN or infinite values"),
    (lambda m: beam_search(m, _IMAGES + math.inf, caption_vocab()), ValueError,
     "images contains NaN or infinite values"),
])
def test_inputs_of_another_dtype_device_or_batch_name_themselves(decoder, call, error, message):
    with pytest.raises(error, match=message):
        call(_models(16)[decoder])


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda d: caption_loss("model", _IMAGES, _TOKENS), TypeError,
     "model must be a torch.nn.Module"),
    (lambda d: caption_loss(_fixed_captioner(), _IMAGES, _TOKENS, pad=None), ValueError,
     "pad must be a non-negative int"),
    (lambda d: train_captioner(None, d, 2), TypeError, "model must be a torch.nn.Module"),
    (lambda d: train_captioner(_models(16)["flat"], d, 2, log_every=0), ValueError,
     "log_every must be a positive int, got 0"),
    (lambda d: train_captioner(_models(16)["flat"], d, 2, progress="no"), TypeError,
     "progress must be True or False"),
    (lambda d: evaluate("model", d), TypeError,
     "model must be a course_utils.captioning.Captioner"),
    (lambda d: build_captioner(CaptionJob("x", "flat", 1, 1e-3, dim=16), V, grid=None), ValueError,
     "grid must be a positive int, got None"),
    (lambda d: TransformerCaptionDecoder(V, 16, d_model=0), ValueError,
     "d_model must be a positive int, got 0"),
    (lambda d: CaptionJob("x", "flat", 1, 1e-3, dim=0), ValueError, "^dim must be a positive int"),
    (lambda d: CaptionJob("x", "flat", 1, 1e-3, seed=-1), ValueError, "^seed must be an int"),
    (lambda d: doubly_stochastic_penalty(torch.ones(0, 3, 4), torch.ones(2, 3, dtype=torch.bool)),
     ValueError, r"mask must be a bool tensor of shape \(B, T\) = \(0, 3\) of alphas"),
    (lambda d: doubly_stochastic_penalty(torch.ones(2, 3, 4), _meta(torch.ones(2, 3).bool())),
     ValueError, "mask must be on cpu .*device of alphas"),
    (lambda d: grounding_hits(["a", "red"], torch.full((2, 16), math.nan),
                              [("small", "red", "circle")], torch.ones(1, 16, dtype=torch.bool)),
     ValueError,
     "attention contains NaN or infinite values"),
    (lambda d: grounding_hits(["a", "red"], torch.zeros(0, 16), [("small", "red", "circle")],
                              torch.ones(1, 16, dtype=torch.bool)), ValueError,
     r"attention must hold a map per word \(2\)"),
    (lambda d: grounding_hits(["a"], torch.zeros(1, 16), None, torch.ones(1, 16, dtype=torch.bool)),
     TypeError, "objects must be a list of"),
    (lambda d: grounding_hits(["a"], _meta(torch.zeros(1, 16)), [("small", "red", "circle")],
                              torch.ones(1, 16, dtype=torch.bool)), ValueError,
     "cells must be on meta .*device of attention"),
    (lambda d: grounding_score([["a"]], torch.zeros(1, 2, 16), None), TypeError,
     "data must be a SceneDataset"),
    (lambda d: grounding_score([["a"]], torch.full((1, 2, 16), math.inf), d), ValueError,
     "attention contains NaN or infinite values"),
])
def test_wrong_objects_settings_and_values_name_themselves(data, call, error, message):
    with pytest.raises(error, match=message):
        call(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps must be a positive int"), ({"batch_size": 0}, "batch_size must be a positive int"),
     ({"lr": -1.0}, "lr must be a real number"), ({"ds_weight": float("nan")}, "ds_weight"),
     ({"warmup": 5, "steps": 5}, "warmup must be in"), ({"clip": 0.0}, "clip"), ({"seed": -1}, "seed")],
)
def test_train_captioner_rejects_bad_settings(data, kwargs, message):
    model = _models(16)["flat"]
    settings = {"steps": 2, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_captioner(model, data, **settings)
    with pytest.raises(TypeError, match="data must be a SceneDataset"):
        train_captioner(model, {"images": data.images}, steps=2)


def test_evaluate_rejects_bad_settings(data):
    model = _models(16)["flat"]
    for kwargs, message in (({"beam_size": 0}, "beam_size"), ({"batch_size": 0}, "batch_size"),
                            ({"max_len": 0}, "max_len")):
        with pytest.raises(ValueError, match=message):
            evaluate(model, data, **kwargs)


# ---- greedy and beam search through course_utils.decoding: the same tokens as before ----
# The decoders below are this module's own, as they were before they were rewired through
# course_utils.decoding; the wrappers must give the same tokens and maps on fixed models.


def _legacy_select(state, idx):
    # as before, recursing into the nested state of the wrapper decoder below
    return {k: _legacy_select(v, idx) if isinstance(v, dict) else v.index_select(0, idx)
            for k, v in state.items()}


@torch.no_grad()
def _legacy_greedy(model, images, vocab, max_len=30):
    feats = model.encoder(images)
    b = feats.size(0)
    state = model.decoder.init_state(feats)
    token = torch.full((b,), vocab.bos, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    tokens, maps = [], []
    for _ in range(max_len):
        logits, state, alpha = model.decoder.step(token, state)
        token = logits.argmax(dim=-1).masked_fill(done, vocab.pad)
        tokens.append(token)
        if alpha is not None:
            maps.append(alpha.masked_fill(done[:, None], 0.0))
        done = done | (token == vocab.eos)
        if bool(done.all()):
            break
    return torch.stack(tokens, 1), (torch.stack(maps, 1) if maps else None)


def _old_penalty(lengths, alpha):
    return lengths.clamp(min=1) ** alpha  # the convention before: raw length ** alpha


def _gnmt_penalty(lengths, alpha):
    return ((5 + lengths) / 6) ** alpha  # course_utils.decoding's convention


@torch.no_grad()
def _legacy_beam(model, images, vocab, beam_size=3, max_len=30, length_penalty=0.0, penalty=_old_penalty):
    import torch.nn.functional as F

    feats = model.encoder(images)
    b, k = feats.size(0), beam_size
    state = _legacy_select(model.decoder.init_state(feats), torch.arange(b).repeat_interleave(k))
    token = torch.full((b * k,), vocab.bos, dtype=torch.long)
    scores = torch.zeros(b, k)
    scores[:, 1:] = float("-inf")
    done = torch.zeros(b * k, dtype=torch.bool)
    lengths = torch.zeros(b * k)
    history = torch.zeros(b * k, 0, dtype=torch.long)
    maps = None
    for _ in range(max_len):
        logits, state, alpha = model.decoder.step(token, state)
        logp = F.log_softmax(logits.float(), dim=-1)
        v = logp.size(-1)
        logp[done] = float("-inf")
        logp[done, vocab.pad] = 0.0
        total = (scores.reshape(-1, 1) + logp).reshape(b, k * v)
        scores, flat = total.topk(k, dim=1)
        beam = flat // v
        word = (flat % v).reshape(-1)
        src = (torch.arange(b)[:, None] * k + beam).reshape(-1)
        state = _legacy_select(state, src)
        was_done = done[src]
        history = torch.cat([history[src], word[:, None]], dim=1)
        if alpha is not None:
            a = alpha[src].masked_fill(was_done[:, None], 0.0)[:, None]
            maps = a if maps is None else torch.cat([maps[src], a], dim=1)
        lengths = lengths[src] + (~was_done).float()
        done = was_done | (word == vocab.eos)
        token = word
        if bool(done.all()):
            break
    final = scores / penalty(lengths.reshape(b, k), length_penalty)
    rows = torch.arange(b) * k + final.argmax(dim=1)
    return history[rows], (None if maps is None else maps[rows])


class _EndsAtImageDependentSteps(torch.nn.Module):
    """A real decoder, with the <eos> logit growing step by step at a rate read from the image,
    so that captions end at different lengths (an untrained decoder says the same thing for
    every image). It keeps the decoder's protocol: init_state, step, and the maps."""

    def __init__(self, decoder):
        super().__init__()
        self.inner, self.eos = decoder, caption_vocab().eos

    def init_state(self, feats):
        rate = 0.3 + (feats[:, :, 0].abs().sum(1) * 37.0) % 1.0  # (B,): one pseudo-random rate per image
        return {"inner": self.inner.init_state(feats), "rate": rate, "t": torch.zeros_like(rate)}

    def step(self, tokens, state):
        logits, inner, alpha = self.inner.step(tokens, state["inner"])
        logits = logits * 4.0  # peaked: no near-ties between words
        logits[:, self.eos] += state["t"] * state["rate"] * 4.0 - 6.0
        return logits, {"inner": inner, "rate": state["rate"], "t": state["t"] + 1}, alpha


def _decoding_models():
    models = _models(16)
    for model in models.values():
        model.decoder = _EndsAtImageDependentSteps(model.decoder)
        model.eval()
    return models


@pytest.mark.parametrize("name", ["attention", "flat", "mean", "transformer"])
def test_greedy_decode_gives_the_same_tokens_and_maps_as_before(name, data):
    model, vocab = _decoding_models()[name], caption_vocab()
    for max_len in (1, 5, 30):
        new = greedy_decode(model, data.images, vocab, max_len=max_len)
        tokens, maps = _legacy_greedy(model, data.images, vocab, max_len=max_len)
        assert torch.equal(new.tokens, tokens), (name, max_len)
        assert (new.attention is None) == (maps is None)
        if maps is not None:
            assert torch.equal(new.attention, maps)
    lengths = (tokens != vocab.pad).sum(1)
    assert lengths.min() < lengths.max()  # the captions end at different steps: a real test


@pytest.mark.parametrize("name", ["attention", "flat", "transformer"])
@pytest.mark.parametrize("beam_size", [1, 2, 4])
def test_beam_search_gives_the_same_tokens_and_maps_as_before(name, beam_size, data):
    model, vocab = _decoding_models()[name], caption_vocab()
    new = beam_search(model, data.images, vocab, beam_size=beam_size, max_len=12)
    tokens, maps = _legacy_beam(model, data.images, vocab, beam_size=beam_size, max_len=12)
    assert torch.equal(new.tokens, tokens)
    if maps is not None:
        torch.testing.assert_close(new.attention, maps, rtol=0, atol=0)


def test_beam_search_length_penalty_is_gnmts_now(data):
    """The one change: with length_penalty α > 0 the best beam is ranked by
    log p / ((5 + |Y|) / 6) ** α (GNMT, course_utils.decoding's convention) instead of
    log p / |Y| ** α. With α = 0 (the default, and what notebook 12 uses) nothing changes."""
    differs = []
    for name in ("attention", "flat", "mean"):
        model, vocab = _decoding_models()[name], caption_vocab()
        for alpha in (0.6, 1.0, 2.0):
            new = beam_search(model, data.images, vocab, beam_size=4, max_len=12, length_penalty=alpha)
            gnmt, _ = _legacy_beam(model, data.images, vocab, 4, 12, alpha, penalty=_gnmt_penalty)
            before, _ = _legacy_beam(model, data.images, vocab, 4, 12, alpha, penalty=_old_penalty)
            assert torch.equal(new.tokens, gnmt), (name, alpha)
            differs.append(before.shape != gnmt.shape or not torch.equal(before, gnmt))
    assert any(differs)  # the two conventions do pick different captions here
