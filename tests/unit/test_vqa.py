"""VQA models: shapes, padding that changes nothing, the stacked-attention equations by hand,
the transformer fusion's maps, the grounding score on hand-built maps, training and evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils.datasets.questions import make_questions
from course_utils.vqa import (
    BlindVQA,
    PooledVQA,
    QuestionEncoder,
    StackedAttentionVQA,
    TransformerFusionVQA,
    VQAJob,
    build_model,
    confusion_matrix,
    evaluate,
    grounding_score,
    per_kind_accuracy,
    train_jobs,
    train_vqa,
)

VOCAB, ANSWERS = 30, 16


def _models(dim: int = 16):
    torch.manual_seed(0)
    return {
        "blind": BlindVQA(VOCAB, ANSWERS, dim=dim),
        "concat": PooledVQA(VOCAB, ANSWERS, "concat", dim=dim),
        "product": PooledVQA(VOCAB, ANSWERS, "product", dim=dim),
        "san1": StackedAttentionVQA(VOCAB, ANSWERS, hops=1, dim=dim, attn_dim=dim),
        "san2": StackedAttentionVQA(VOCAB, ANSWERS, hops=2, dim=dim, attn_dim=dim),
        "transformer": TransformerFusionVQA(VOCAB, ANSWERS, d_model=dim, nhead=2, num_layers=2,
                                            dim_feedforward=2 * dim),
    }


@pytest.fixture(scope="module")
def data():
    return make_questions(24, seed=3)


@pytest.mark.parametrize("name", ["blind", "concat", "product", "san1", "san2", "transformer"])
def test_shapes_and_maps(name):
    model = _models()[name].eval()
    images, tokens = torch.rand(3, 3, 32, 32), torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0], [10, 0, 0, 0]])
    logits, maps = model(images, tokens)
    assert logits.shape == (3, ANSWERS) and torch.isfinite(logits).all()
    hops = {"san1": 1, "san2": 2, "transformer": 2}.get(name)
    if hops is None:
        assert maps is None
    else:
        assert maps.shape == (3, hops, 16)
        torch.testing.assert_close(maps.sum(-1), torch.ones(3, hops))  # distributions over cells
        assert (maps >= 0).all()


@pytest.mark.parametrize("name", ["blind", "concat", "product", "san1", "san2", "transformer"])
def test_padding_changes_nothing(name):
    """A question padded to a longer batch gets the same answer scores and maps."""
    model = _models()[name].eval()
    images = torch.rand(2, 3, 32, 32)
    short = torch.tensor([[4, 5, 6], [7, 8, 9]])
    padded = torch.cat([short, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, ma = model(images, short)
        b, mb = model(images, padded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if ma is not None:
        torch.testing.assert_close(ma, mb, atol=1e-6, rtol=1e-5)


def test_padding_must_come_last():
    model = _models()["san1"]
    with pytest.raises(ValueError, match="padding after the words"):
        model(torch.rand(1, 3, 32, 32), torch.tensor([[4, 0, 5]]))


def test_the_blind_model_ignores_the_image():
    model = _models()["blind"].eval()
    tokens = torch.tensor([[4, 5, 6]])
    torch.testing.assert_close(model(torch.rand(1, 3, 32, 32), tokens)[0],
                               model(torch.zeros(1, 3, 32, 32), tokens)[0])


def test_pooled_model_cannot_tell_where_things_are():
    """Mean pooling averages the cells: swapping two cells' pixels changes nothing."""
    model = _models()["concat"].eval()
    image = torch.rand(1, 3, 32, 32)
    swapped = image.clone()
    swapped[..., 0:8, 0:8], swapped[..., 24:32, 24:32] = image[..., 24:32, 24:32], image[..., 0:8, 0:8]
    tokens = torch.tensor([[4, 5]])
    with torch.no_grad():
        a, b = model(image, tokens)[0], model(swapped, tokens)[0]
    # the cells' features move with their pixels but keep their position embeddings: the mean
    # differs only by what the positions add, which is the same set: equal up to rounding
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    san = _models()["san1"].eval()
    with torch.no_grad():
        assert not torch.allclose(san(image, tokens)[1], san(swapped, tokens)[1])  # attention does move


def test_stacked_attention_by_hand():
    """u_k = u_{k-1} + Σ_i α^k_i a_i with α^k = softmax(w_kᵀ tanh(W_k a_i + V_k u_{k-1}))."""
    model = _models()["san2"].eval()
    images, tokens = torch.rand(2, 3, 32, 32), torch.tensor([[4, 5, 6], [7, 8, 0]])
    with torch.no_grad():
        logits, maps = model(images, tokens)
        feats = model.encoder(images)  # (B, N, D)
        u = model.question(tokens)  # (B, D)
        for k, hop in enumerate(model.hops):
            scores = hop.w_v(torch.tanh(hop.W_k(feats) + hop.W_q(u)[:, None]))[..., 0]  # (B, N)
            alpha = torch.softmax(scores, dim=-1)
            torch.testing.assert_close(maps[:, k], alpha)
            u = u + (alpha[..., None] * feats).sum(1)
        torch.testing.assert_close(logits, model.classify(u))
    # the second hop depends on what the first one read: a different first map, a different second
    with torch.no_grad():
        hop1 = model.hops[0]
        hop1.w_v.weight.mul_(-1)
        _, other = model(images, tokens)
    assert not torch.allclose(other[:, 1], maps[:, 1])


def test_question_encoder_reads_the_last_real_word():
    enc = QuestionEncoder(VOCAB, dim=8).eval()
    tokens = torch.tensor([[4, 5, 6, 0], [4, 5, 0, 0]])
    with torch.no_grad():
        states, _ = enc.lstm(enc.embed(tokens))
        torch.testing.assert_close(enc(tokens), torch.stack([states[0, 2], states[1, 1]]))


def test_transformer_maps_are_the_answer_tokens_cross_attention():
    model = _models()["transformer"].eval()
    images, tokens = torch.rand(2, 3, 32, 32), torch.tensor([[4, 5, 6], [7, 0, 0]])
    with torch.no_grad():
        _, maps = model(images, tokens)
        for layer_index, layer in enumerate(model.layers):
            weights = layer.multihead_attn.last_attn_weights  # (B, H, 1 + L, N)
            torch.testing.assert_close(maps[:, layer_index], weights[:, :, 0].mean(1))
        # the words' self-attention never looks at padding
        layer = model.layers[0]
        layer.self_attn.store_weights = True
        model(images, tokens)
        self_weights = layer.self_attn.last_attn_weights  # (B, H, 1 + L, 1 + L)
        assert self_weights[1, :, :, 2:].abs().max() == 0  # question 2 has one word: keys 2, 3 are padding
        layer.self_attn.store_weights = False


def test_grounding_score_on_hand_built_maps():
    focus = torch.zeros(3, 16, dtype=torch.bool)
    focus[0, [1, 2]] = True
    focus[1, 5] = True  # question 2 refers to no object (a count of zero): left out
    maps = torch.zeros(3, 16)
    maps[0, 1], maps[0, 2], maps[0, 9] = 0.5, 0.3, 0.2  # 0.8 on its objects, peak on one of them
    maps[1, 5], maps[1, 6] = 0.4, 0.6  # 0.4 on its object, peak elsewhere
    maps[2, 0] = 1.0
    assert grounding_score(maps, focus) == pytest.approx((0.8 + 0.4) / 2)
    assert grounding_score(maps, focus, "peak") == pytest.approx(0.5)
    uniform = torch.full((3, 16), 1 / 16)
    assert grounding_score(uniform, focus) == pytest.approx((2 / 16 + 1 / 16) / 2)
    with pytest.raises(ValueError, match="focus must be a bool tensor"):
        grounding_score(maps, focus.float())
    with pytest.raises(ValueError, match="no question refers to an object"):
        grounding_score(maps, torch.zeros(3, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="criterion must be one of"):
        grounding_score(maps, focus, "max")


def test_confusion_and_per_kind_accuracy(data):
    preds = data.answers.clone()
    preds[:5] = (preds[:5] + 1) % len(data.answer_names)  # five wrong answers
    acc = per_kind_accuracy(preds, data)
    assert acc["all"] == pytest.approx(1 - 5 / len(data))
    wrong_kinds = data.kinds[:5].tolist()
    for k, name in enumerate(data.kind_names):
        n = int((data.kinds == k).sum())
        assert acc[name] == pytest.approx(1 - wrong_kinds.count(k) / n)
    cm = confusion_matrix(preds, data.answers, len(data.answer_names))
    assert int(cm.sum()) == len(data) and int(cm.trace()) == len(data) - 5
    for p, a in zip(preds[:5].tolist(), data.answers[:5].tolist(), strict=True):
        assert cm[a, p] >= 1
    with pytest.raises(ValueError, match="token ids"):
        confusion_matrix(torch.tensor([20]), torch.tensor([0]), 16)


def test_training_learns_and_evaluate_reports_everything(data):
    model = _models()["san2"]
    history = train_vqa(model, data, steps=30, batch_size=8, lr=3e-3)
    assert len(history["loss"]) == 30 and all(math.isfinite(x) for x in history["loss"])
    assert sum(history["loss"][-5:]) < sum(history["loss"][:5])  # 24 questions: it memorises
    out = evaluate(model, data, batch_size=7)
    assert set(out["per_kind"]) == {"all", *data.kind_names}
    assert out["maps"].shape == (len(data), 2, 16) and len(out["grounding_per_hop"]) == 2
    assert 0 <= out["grounding"] <= 1 and out["confusion"].shape == (16, 16)
    assert evaluate(_models()["concat"], data)["maps"] is None


def test_train_jobs_in_two_processes_equals_one_after_the_other(data):
    jobs = [VQAJob("san", "attention", steps=3, lr=1e-3, batch_size=8, model_kwargs={"hops": 2, "dim": 16}),
            VQAJob("blind", "blind", steps=3, lr=1e-3, batch_size=8, model_kwargs={"dim": 16})]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = train_jobs(jobs, data, workers=1)
    finally:
        torch.set_num_threads(threads)
    there = train_jobs(jobs, data, workers=2)
    assert list(there) == ["san", "blind"]
    for name in here:
        a, b = here[name].model.state_dict(), there[name].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert here[name].history["loss"] == there[name].history["loss"]


def test_build_model_follows_the_job():
    job = VQAJob("t", "transformer", steps=1, lr=1e-3, model_kwargs={"d_model": 16, "nhead": 2, "num_layers": 3})
    model = build_model(job, VOCAB, ANSWERS)
    assert isinstance(model, TransformerFusionVQA) and len(model.layers) == 3
    assert build_model(VQAJob("p", "product", 1, 1e-3, model_kwargs={"dim": 8}), VOCAB, ANSWERS).fusion == "product"
    same = [build_model(VQAJob("s", "attention", 1, 1e-3, seed=4), VOCAB, ANSWERS) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(same[0].state_dict().values(), same[1].state_dict().values(),
                                                  strict=True))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: StackedAttentionVQA(VOCAB, ANSWERS, hops=0), ValueError, "hops must be a positive int"),
        (lambda: PooledVQA(VOCAB, ANSWERS, "sum"), ValueError, "fusion must be one of 'concat', 'product'"),
        (lambda: BlindVQA(VOCAB, 0), ValueError, "num_answers must be a positive int"),
        (lambda: QuestionEncoder(0), ValueError, "vocab_size"),
        (lambda: _models()["san1"](torch.rand(1, 3, 32, 32), torch.tensor([[VOCAB]])), ValueError,
         rf"tokens must hold token ids in \[0, {VOCAB}\)"),
        (lambda: _models()["san1"](torch.rand(1, 3, 32, 32), torch.tensor([4, 5])), ValueError,
         r"tokens must have shape \(B, L\)"),
        (lambda: _models()["san1"](torch.rand(1, 3, 32, 32), torch.zeros(1, 3)), TypeError, "integer tensor"),
        (lambda: _models()["san1"](torch.rand(1, 3, 64, 64), torch.tensor([[4]])), ValueError,
         r"images must have shape \(B, 3, 32, 32\)"),
        (lambda: _models()["concat"](torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([[4]])), TypeError,
         "images must be a floating-point tensor"),
        (lambda: build_model(VQAJob("x", "mlp", 1, 1e-3), VOCAB, ANSWERS), ValueError, "job.model must be one of"),
        (lambda: train_jobs([], None), TypeError, "jobs must be a non-empty list of VQAJob"),
        (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2), ValueError, "one length"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps must be a positive int"), ({"batch_size": 0}, "batch_size"),
     ({"lr": 0.0}, "lr must be a real number"), ({"warmup": 3, "steps": 3}, "warmup"),
     ({"weight_decay": -1.0}, "weight_decay")],
)
def test_train_vqa_rejects_bad_settings(data, kwargs, message):
    settings = {"steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_vqa(_models()["blind"], data, **settings)
    with pytest.raises(TypeError, match="data must be a VQADataset"):
        train_vqa(_models()["blind"], [1, 2], steps=2)


# ---------------------------------------------------------------------------------------------
# The notebook's settings, shared with scripts/tune_vqa_baselines.py
# ---------------------------------------------------------------------------------------------


def _tuning_script():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tune_vqa_baselines", REPO / "scripts" / "tune_vqa_baselines.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_settings_jobs_follow_the_settings():
    from course_utils.vqa import SETTINGS, settings_job

    for dataset, s in SETTINGS.items():
        assert set(s["lr"]) == set(s["models"]), dataset  # every model has its tuned rate
        for name, base in s["models"].items():
            job = settings_job(dataset, name, seed=2)
            assert (job.steps, job.batch_size, job.warmup, job.lr, job.seed, job.dataset) == (
                s["steps"], s["batch_size"], s["warmup"], s["lr"][name], 2, dataset)
            assert job.model == base["model"] and job.model_kwargs == base["kwargs"]
    assert settings_job("relational", "concat", steps=10, lr=1e-2).steps == 10
    with pytest.raises(ValueError, match="name must be one of"):
        settings_job("relational", "mlp")
    with pytest.raises(ValueError, match="dataset must be one of"):
        settings_job("clevr", "concat")


def test_the_tuning_script_trains_what_the_notebook_trains():
    """Only the learning rate and the seed differ between a tuning run and the notebook's job."""
    import dataclasses

    from course_utils.vqa import SETTINGS, settings_job

    script = _tuning_script()
    for dataset, s in SETTINGS.items():
        jobs = script.jobs_for(dataset, list(s["models"]), list(script.LRS), [0])
        assert len(jobs) == len(s["models"]) * len(script.LRS)
        for job in jobs:
            _, name, lr, seed = job.name.split("|")
            mine = settings_job(dataset, name, seed=int(seed), lr=float(lr))
            assert dataclasses.replace(job, name=mine.name) == mine
        assert all(lr in script.LRS for lr in s["lr"].values()), "a rate outside the tuned grid"


def test_the_notebooks_learning_rates_are_the_best_of_its_tuning_table():
    """Notebook 13 shows the script's validation table (| model | lr ... |, the chosen rate in
    bold); the rates in SETTINGS must be the bold ones, the best mean of each row."""
    import json
    import re

    from conftest import REPO

    from course_utils.vqa import SETTINGS

    script = _tuning_script()
    path = REPO / "notebooks" / "13_visual_question_answering.ipynb"
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    header = re.search(r"^\| dataset \| model \|(.*)\|$", markdown, re.M)
    assert header, "notebook 13 shows no tuning table (| dataset | model | lr ... |)"
    rates = [float(h.strip().replace("lr ", "")) for h in header.group(1).split("|")]
    assert sorted(rates) == sorted(script.LRS)
    for dataset, s in SETTINGS.items():
        for name in s["models"]:
            row = re.search(rf"^\| {re.escape(dataset)} \| {re.escape(name)} \|(.*)\|$", markdown, re.M)
            assert row, f"the tuning table has no row for {dataset} {name}"
            cells_ = [c.strip() for c in row.group(1).split("|")]
            means = [float(c.strip("*").split("±")[0]) for c in cells_]
            best = rates[max(range(len(rates)), key=means.__getitem__)]
            assert s["lr"][name] == best, f"{dataset} {name}: SETTINGS has {s['lr'][name]}, the table's best is {best}"
            assert cells_[rates.index(best)].startswith("**"), f"{dataset} {name}: the chosen rate is not in bold"
