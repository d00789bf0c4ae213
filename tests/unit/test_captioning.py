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
    with pytest.raises(ValueError, match="job.decoder must be one of"):
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
