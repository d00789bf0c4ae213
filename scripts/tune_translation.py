"""Choose the learning rate of each of notebook 10's translation models on the validation split.

Notebook 10 compares three models (a GRU encoder–decoder with a fixed context, the same GRU with
Bahdanau attention, a transformer) under one protocol: the same corpus, batches, step budget,
warm-up and regularisation for all three, and for each model the learning rate that does best
on the **validation** split (never on test), chosen here. The notebook then trains each model
with its chosen rate on three seeds.

For every learning rate of ``--lrs`` and every label-smoothing value of ``--label-smoothing``,
each model trains once (seed 0) with the notebook's full-mode settings and is scored by greedy
BLEU on the 200 validation sentences. The label smoothing is one setting for all three models
(the one whose three best scores have the highest mean); each model then gets its best rate
under it. Two models train at a time, one process and one thread per core, as in the notebook.

    python scripts/tune_translation.py            # the table notebook 10 quotes (30 models, two at a time)
    python scripts/tune_translation.py --fast     # a tiny run that checks the script works (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils.datasets.translation import make_corpus, split_corpus, tokenize  # noqa: E402
from course_utils.datasets.vocab import Vocab  # noqa: E402
from course_utils.files import atomic_write_json  # noqa: E402
from course_utils.seq2seq import (  # noqa: E402
    MODEL_KINDS,
    TranslationData,
    TranslationJob,
    corpus_bleu,
    train_jobs,
    translate,
)

# Notebook 10's full-mode protocol (its cell "The protocol" states the same numbers; a test
# keeps the two in step).
FULL = dict(n_pairs=40_000, n_valid=200, n_test=1_000, steps=600, batch=64,
            sizes=dict(emb=64, enc=96, dec=160, d_model=128, layers=2, ff=256, heads=4))
FAST = dict(n_pairs=1_500, n_valid=40, n_test=40, steps=8, batch=16,
            sizes=dict(emb=16, enc=16, dec=32, d_model=32, layers=1, ff=64, heads=2))
LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
LABEL_SMOOTHING = (0.0, 0.1)
NAMES = {"gru": "GRU, fixed context", "attn": "GRU + attention", "transformer": "transformer"}


def warmup_steps(steps: int) -> int:
    """The shared warm-up policy: the first tenth of the budget."""
    return max(1, steps // 10)


def prepare(settings: dict) -> tuple[TranslationData, list[str], list[list[str]]]:
    """The notebook's corpus and vocabularies; the validation sources and their references."""
    corpus = split_corpus(make_corpus(settings["n_pairs"], seed=0), n_valid=settings["n_valid"],
                          n_test=settings["n_test"])
    src_tok = [tokenize(en) for en, _ in corpus.train]
    tgt_tok = [tokenize(fr) for _, fr in corpus.train]
    src_vocab, tgt_vocab = Vocab.build(src_tok), Vocab.build(tgt_tok)
    data = TranslationData([src_vocab.encode(t) for t in src_tok], [tgt_vocab.encode(t) for t in tgt_tok],
                           src_vocab, tgt_vocab)
    return data, [en for en, _ in corpus.valid], corpus.references("valid")


def choose(scores: dict[tuple[str, float, float], float]) -> tuple[float, dict[str, float]]:
    """The shared label smoothing and each model's learning rate, from ``{(kind, ls, lr): bleu}``.

    >>> s = {("gru", 0.0, 1e-3): 10.0, ("gru", 0.0, 2e-3): 12.0, ("gru", 0.1, 1e-3): 11.0,
    ...      ("gru", 0.1, 2e-3): 9.0}
    >>> choose(s)
    (0.0, {'gru': 0.002})
    """
    kinds = sorted({k for k, _, _ in scores}, key=MODEL_KINDS.index)
    best_ls, best_mean, best_lrs = None, -1.0, {}
    for ls in sorted({ls for _, ls, _ in scores}):
        lrs = {}
        for kind in kinds:
            rates = sorted(lr for k, s, lr in scores if k == kind and s == ls)
            lrs[kind] = max(rates, key=lambda lr: (scores[kind, ls, lr], -lr))  # ties: the smaller rate
        mean = statistics.mean(scores[kind, ls, lrs[kind]] for kind in kinds)
        if mean > best_mean:
            best_ls, best_mean, best_lrs = ls, mean, lrs
    return best_ls, best_lrs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny settings: checks that the script runs")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--label-smoothing", type=float, nargs="+", default=list(LABEL_SMOOTHING))
    parser.add_argument("--models", nargs="+", default=list(MODEL_KINDS), choices=MODEL_KINDS)
    parser.add_argument("--workers", type=int, default=2, help="models trained at a time (one per core)")
    parser.add_argument("--json", type=Path, help="also write every score to this JSON file")
    args = parser.parse_args(argv)
    settings = FAST if args.fast else FULL
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data, valid_src, valid_refs = prepare(settings)
    steps = settings["steps"]
    print(f"corpus: {len(data.src_ids)} training pairs, {len(valid_src)} validation sentences; "
          f"{steps} steps of {settings['batch']} pairs, warm-up {warmup_steps(steps)} steps, seed 0")
    jobs = [TranslationJob(f"{kind} ls={ls:g} lr={lr:g}", kind, steps=steps, lr=lr,
                           warmup=warmup_steps(steps), label_smoothing=ls, seed=0,
                           batch_size=settings["batch"], sizes=settings["sizes"])
            for ls in args.label_smoothing for kind in args.models for lr in args.lrs]
    trained = train_jobs(jobs, data, workers=args.workers)
    scores = {}
    for job in jobs:
        hyps = translate(trained[job.name].model, valid_src, data.src_vocab, data.tgt_vocab)
        scores[job.kind, job.label_smoothing, job.lr] = corpus_bleu(hyps, valid_refs)
    best_ls, best_lrs = choose(scores)

    print("\nvalidation BLEU (greedy), by learning rate")
    header = f"{'model':20} {'smoothing':>9}" + "".join(f"{lr:>9g}" for lr in args.lrs)
    print(header + "\n" + "-" * len(header))
    for ls in args.label_smoothing:
        for kind in args.models:
            cells = "".join(f"{scores[kind, ls, lr]:8.1f}{'*' if ls == best_ls and lr == best_lrs[kind] else ' '}"
                            for lr in args.lrs)
            print(f"{NAMES[kind]:20} {ls:9g}" + cells)
    chosen = ", ".join(f"{kind}={lr:g}" for kind, lr in best_lrs.items())
    print(f"\nchosen (*): label_smoothing={best_ls:g} for every model; learning rates {chosen}")
    print(f"({len(jobs)} models in {time.perf_counter() - t0:.0f} s)")
    if args.json is not None:
        table = [{"model": k, "label_smoothing": ls, "lr": lr, "valid_bleu": b} for (k, ls, lr), b in scores.items()]
        atomic_write_json(args.json, {"label_smoothing": best_ls, "lr": best_lrs, "scores": table}, indent=1)
    return {"label_smoothing": best_ls, "lr": best_lrs, "scores": scores}


if __name__ == "__main__":
    main()
