"""The English→French grammar corpus, its splits, tokenisation and the Tatoeba/Anki loader."""

from __future__ import annotations

import functools
import random
import zipfile

import pytest
import torch
from conftest import REPO

from course_utils.datasets import translation as tr
from course_utils.datasets.translation import (
    ADJECTIVES,
    NOUNS,
    Vocab,
    detokenize,
    encode_batch,
    generate_pair,
    load_tatoeba,
    make_corpus,
    noun_phrase,
    sha256_file,
    split_corpus,
    tokenize,
)


def noun(en: str):
    return next(n for n in NOUNS if n.en == en)


def adj(en: str):
    return next(a for a in ADJECTIVES if a.en == en)


def np_fr(*args, **kwargs) -> str:
    return detokenize(noun_phrase(*args, **kwargs)[1])


# ---- determinism -----------------------------------------------------------------------------


def test_corpus_is_deterministic_per_seed():
    assert make_corpus(100, seed=7) == make_corpus(100, seed=7)
    assert make_corpus(100, seed=7) != make_corpus(100, seed=8)


def test_split_is_deterministic():
    pairs = _corpus()
    a, b = split_corpus(pairs, 50, 80, seed=1), split_corpus(pairs, 50, 80, seed=1)
    assert (a.train, a.valid, a.test) == (b.train, b.valid, b.test)


# ---- agreement rules, on hand-written examples -----------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, english, french",
    [
        (("car", True), {"pre": "small", "post": "red"}, "the small red cars", "les petites voitures rouges"),
        (("car", False), {"pre": "small", "post": "red"}, "the small red car", "la petite voiture rouge"),
        (("cat", False), {"post": "black"}, "the black cat", "le chat noir"),
        (("cat", True), {"post": "white"}, "the white cats", "les chats blancs"),
        (("house", True), {"post": "white"}, "the white houses", "les maisons blanches"),
        (("man", False), {"pre": "old"}, "the old man", "le vieil homme"),
        (("woman", True), {"pre": "old"}, "the old women", "les vieilles femmes"),
        (("man", False), {}, "the man", "l'homme"),
        (("tree", False), {"pre": "beautiful"}, "the beautiful tree", "le bel arbre"),
        (("hotel", False), {"pre": "new", "det": "a"}, "a new hotel", "un nouvel hôtel"),
        (("tree", False), {"det": "this"}, "this tree", "cet arbre"),
        (("dog", False), {"det": "this"}, "this dog", "ce chien"),
        (("car", True), {"det": "this"}, "these cars", "ces voitures"),
        (("school", False), {"det": "my"}, "my school", "mon école"),
        (("sister", False), {"det": "my"}, "my sister", "ma sœur"),
        (("apple", False), {"det": "a"}, "an apple", "une pomme"),
        (("horse", True), {"pre": "beautiful"}, "the beautiful horses", "les beaux chevaux"),
        (("woman", False), {"post": "happy"}, "the happy woman", "la femme heureuse"),
        (("cake", True), {"post": "expensive"}, "the expensive cakes", "les gâteaux chers"),
    ],
)
def test_noun_phrase_agreement(args, kwargs, english, french):
    kwargs = dict(kwargs)
    for slot in ("pre", "post"):
        if slot in kwargs:
            kwargs[slot] = adj(kwargs[slot])
    en, fr = noun_phrase(noun(args[0]), args[1], **kwargs)
    assert " ".join(en) == english
    assert detokenize(fr) == french


def test_indefinite_plural_is_refused():
    with pytest.raises(ValueError, match="no plural"):
        noun_phrase(noun("cat"), plural=True, det="a")


@functools.cache
def _sample(n: int = 2000, seed: int = 0):
    rng = random.Random(seed)
    return tuple(generate_pair(rng) for _ in range(n))


@functools.cache
def _corpus(n: int = 2000, seed: int = 0):
    return make_corpus(n, seed=seed)


def test_negation_is_ne_pas_and_indefinite_objects_become_de():
    pairs = _sample()
    negated = [(en, fr) for en, fr in pairs if " not " in en]
    assert len(negated) > 200
    for en, fr in negated:
        toks = tokenize(fr)
        assert toks.count("pas") == en.split().count("not"), (en, fr)
        assert toks.count("ne") + toks.count("n'") == toks.count("pas"), (en, fr)
    # "any" (an indefinite object under negation) becomes "pas de"/"pas d'"
    anys = [fr for en, fr in negated if " not " in en and " any " in en]
    assert anys and all(" pas de " in fr or " pas d'" in fr for fr in anys)


def test_elision_happens_before_vowels_only():
    pairs = _sample()
    for _, fr in pairs:
        toks = tokenize(fr)
        for a, b in zip(toks, toks[1:], strict=False):
            if a in ("le", "la", "je", "ne", "que", "de", "me"):
                assert b[0] not in "aeiouéèêâîôûœh", (a, b, fr)  # should have been elided
            if a in ("l'", "j'", "n'", "qu'", "d'", "m'"):
                assert b[0] in "aeiouyéèêâîôûœh", (a, b, fr)


def test_hand_written_sentences_from_the_grammar():
    # The pieces compose: subject, negated verb, object with a pre- and a post-nominal adjective.
    en, fr = noun_phrase(noun("woman"), False, pre=adj("old"))
    g = tr._Grammar(random.Random(0), 0.0)
    read = next(v for v in tr.VERBS if v.en == "read")
    ven, vfr = g.verb_words(read, 2, True, neg=True, before=list(fr))
    obj_en, obj_fr = noun_phrase(noun("book"), True, pre=adj("small"), post=adj("red"))
    assert " ".join(en + ven + obj_en) == "the old woman does not read the small red books"
    assert detokenize(fr + vfr + obj_fr) == "la vieille femme ne lit pas les petits livres rouges"
    # je + vowel → j'
    like = next(v for v in tr.VERBS if v.en == "like")
    subj = ["je"]
    _, vfr = g.verb_words(like, 0, False, neg=False, before=subj)
    assert detokenize(subj + vfr) == "j'aime"
    # object pronouns go before the verb, inside ne … pas
    see = next(v for v in tr.VERBS if v.en == "see")
    ven, vfr = g.verb_words(see, 2, True, neg=True, before=["il"], obj_pronoun=("him", "le", "l'"))
    assert (" ".join(ven), detokenize(vfr)) == ("does not see him", "ne le voit pas")


def test_sentence_lengths_span_3_to_more_than_30_words():
    lengths = [len(tokenize(en)) for en, _ in _corpus()]
    assert min(lengths) <= 4 and max(lengths) >= 35
    assert max(lengths) <= 45  # max_words


# ---- splits ----------------------------------------------------------------------------------


def test_splits_are_disjoint_deduplicated_and_test_is_longer():
    pairs = _corpus()
    pairs = pairs + pairs[:300]  # duplicates must not leak across splits
    c = split_corpus(pairs, n_valid=100, n_test=200)
    tr_src, va_src, te_src = ({en for en, _ in s} for s in (c.train, c.valid, c.test))
    assert not (tr_src & va_src) and not (tr_src & te_src) and not (va_src & te_src)
    assert len(tr_src) == len(c.train)  # no duplicates inside a split either
    assert len(c.valid) == 100 and len(c.test) == 200

    def share_long(split):
        return sum(len(tokenize(en)) > 30 for en, _ in split) / len(split)

    assert share_long(c.test) > 1.5 * share_long(c.train)


# ---- tokens ----------------------------------------------------------------------------------


def test_tokenize_detokenize_round_trip():
    for _, fr in _sample(300):
        assert detokenize(tokenize(fr)) == fr


def test_vocab_and_padding_mask():
    v = Vocab.build([["le", "chat"], ["le", "chien"]])
    assert v.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids, pad = encode_batch([["le"], ["le", "chat", "dort"]], v, add_bos=True)
    assert ids.shape == (2, 5) and pad.dtype == torch.bool
    assert pad.tolist() == [[False, False, False, True, True], [False] * 5]
    assert ids[1].tolist() == [1, v.stoi["le"], v.stoi["chat"], v.unk, v.eos]


def test_bpe_tokenizer_trains_locally():
    texts = [fr for _, fr in _sample(300)]
    tok = tr.train_bpe(texts, vocab_size=300)
    assert [tok.token_to_id(s) for s in tr.SPECIALS] == [0, 1, 2, 3]
    enc = tok.encode(texts[0])
    assert tok.decode(enc.ids) == texts[0]


# ---- the Tatoeba / Anki loader (offline: the tests write their own files) --------------------

GOOD = (
    "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)\n"
    "Hi.\tSalut !\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM) & #509819 (Aiji)\n"
    "\n"
    "I'm tired.\tJe suis fatigué.\tCC-BY 2.0 (France)\n"
)


def test_tatoeba_good_file(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD, encoding="utf-8")
    pairs = load_tatoeba(f, sha256=sha256_file(f))
    assert pairs == [("Go.", "Va !"), ("Hi.", "Salut !"), ("I'm tired.", "Je suis fatigué.")]
    assert load_tatoeba(f, max_pairs=1) == [("Go.", "Va !")]


def test_tatoeba_zip_and_cache(tmp_path):
    z = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("_about.txt", "about")
        zf.writestr("fra.txt", GOOD)
    cache = tmp_path / "cache"
    first = load_tatoeba(z, cache_dir=cache)
    assert len(first) == 3 and len(list(cache.glob("*.json"))) == 1
    # the second call reads the cache: prove it by editing the cached file
    cached = next(cache.glob("*.json"))
    cached.write_text('[["cached", "en cache"]]', encoding="utf-8")
    assert load_tatoeba(z, cache_dir=cache) == [("cached", "en cache")]


def test_tatoeba_checksum_mismatch(tmp_path):
    f = tmp_path / "fra.txt"
    f.write_text(GOOD, encoding="utf-8")
    with pytest.raises(ValueError, match="checksum mismatch.*expected sha256 0{64}"):
        load_tatoeba(f, sha256="0" * 64)


def test_tatoeba_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "broken.txt"
    f.write_text("Go.\tVa !\tCC-BY\nno tab on this line\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.txt, line 2: expected 'english<TAB>french"):
        load_tatoeba(f)


def test_tatoeba_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_tatoeba"):
        load_tatoeba(tmp_path / "nope.txt")


def test_download_from_file_url_with_checksum(tmp_path):
    src = tmp_path / "fra.txt"
    src.write_text(GOOD, encoding="utf-8")
    dest = tr.download(src.as_uri(), tmp_path / "dl" / "fra.txt", sha256=sha256_file(src))
    assert dest.read_text(encoding="utf-8") == GOOD
    with pytest.raises(ValueError, match="checksum mismatch"):
        tr.download(src.as_uri(), tmp_path / "dl2" / "fra.txt", sha256="1" * 64)
    assert not (tmp_path / "dl2" / "fra.txt").exists()


def test_available_for_the_doctor():
    ok, detail = tr.available()
    assert ok and "→" in detail
    assert tr.NOTEBOOKS == ("10_translation",) and tr.FIX


# ---- the real-data path, offline, on the Tatoeba-format sample in data/ -----------------------

SAMPLE = tr.TATOEBA_SAMPLE
assert SAMPLE == REPO / "data" / "tatoeba_sample.tsv"


def _spaces(text: str) -> str:
    return text.replace("\u202f", " ").replace("\xa0", " ")  # the kind of space is not kept


def test_the_sample_round_trips_through_tokenize_and_detokenize():
    """Case, elision (l', qu', aujourd'hui, s’il), numbers (3,50 9:30), French spacing before
    ! ? : ; %, guillemets, quotes, brackets, ellipses: detokenize(tokenize(x)) gives x back."""
    pairs = load_tatoeba(SAMPLE)
    assert len(pairs) >= 70
    for en, fr in pairs:
        assert detokenize(tokenize(fr)) == _spaces(fr), fr
        assert detokenize(tokenize(en), lang="en") == _spaces(en), en


def test_the_sample_keeps_several_references_per_source():
    pairs = load_tatoeba(SAMPLE)
    c = split_corpus(pairs, n_valid=8, n_test=20, seed=0)
    refs = dict(zip([en for en, _ in c.test], c.references("test"), strict=True))
    multi = {en: r for en, r in refs.items() if len(r) > 1}
    assert multi, "the sample's test split should hold sources with several translations"
    by_source: dict[str, list[str]] = {}
    for en, fr in pairs:
        by_source.setdefault(en, []).append(fr)
    for en, r in refs.items():
        assert r == by_source[en]  # every translation, in file order
    # a training source keeps every translation as a training pair
    train_sources = {en for en, _ in c.train}
    assert sum(len(by_source[en]) for en in train_sources) == len(c.train)
    assert not train_sources & set(refs) and not train_sources & {en for en, _ in c.valid}


def test_repeated_pairs_are_one_reference_and_one_training_pair():
    pairs = [("Hi.", "Salut !"), ("Hi.", "Bonjour !"), ("Hi.", "Salut !"), ("Go.", "Va !"),
             ("Run!", "Cours !"), ("Who?", "Qui ?")]
    for seed in range(6):
        c = split_corpus(pairs, n_valid=1, n_test=1, seed=seed)
        assert c.translations["Hi."] == ("Salut !", "Bonjour !")
        assert sorted(set(c.train)) == sorted(c.train)  # no pair twice
        in_train = [p for p in c.train if p[0] == "Hi."]
        assert in_train in ([], [("Hi.", "Salut !"), ("Hi.", "Bonjour !")])
        for split in ("valid", "test"):
            for (en, fr), refs in zip(getattr(c, split), c.references(split), strict=True):
                assert fr == refs[0] and refs == list(c.translations[en])


def test_tokenize_keeps_case_unless_asked():
    assert tokenize("Tom est là.") == ["Tom", "est", "là", "."]
    assert tokenize("Tom est là.", lower=True) == ["tom", "est", "là", "."]
    assert tokenize("L’homme") == ["L’", "homme"]  # a typographic apostrophe stays what it was


def test_the_recommended_download_has_a_pinned_checksum():
    assert tr.TATOEBA_URL.startswith("https://") and tr.TATOEBA_URL.endswith("fra-eng.zip")
    assert len(tr.TATOEBA_SHA1) == 40 and int(tr.TATOEBA_SHA1, 16) >= 0


def test_download_tatoeba_checks_the_pinned_checksum(tmp_path):
    src = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("fra-eng/fra.txt", GOOD)
    import hashlib

    good = hashlib.sha1(src.read_bytes()).hexdigest()
    path = tr.download_tatoeba(tmp_path / "data" / "fra-eng.zip", url=src.as_uri(), sha1=good)
    assert len(load_tatoeba(path)) == 3
    with pytest.raises(ValueError, match="checksum mismatch.*expected sha1 0{40}"):
        tr.download_tatoeba(tmp_path / "other" / "fra-eng.zip", url=src.as_uri(), sha1="0" * 40)


def test_there_is_one_checksum_function():
    from course_utils import download

    assert tr.sha256_file is download.sha256_file


# ---- bad input: a clear error naming the argument, never a hang or a silent wrong answer ---------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_pairs=5, max_words=0), ValueError, "max_words must be at least 3"),
    (dict(n_pairs=3, max_words=2), ValueError, "max_words must be at least 3"),
    (dict(n_pairs=0), ValueError, "n_pairs must be a positive int"),
    (dict(n_pairs=-4), ValueError, "n_pairs must be a positive int"),
    (dict(n_pairs=2.5), ValueError, "n_pairs must be a positive int"),
    (dict(n_pairs=3, seed="a"), ValueError, "seed must be a non-negative int"),
    (dict(n_pairs=3, seed=-1), ValueError, "seed must be a non-negative int, got -1"),
])
def test_make_corpus_bad_arguments_fail_at_once(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_corpus(**kwargs)


def test_make_corpus_with_a_tight_limit_ends_with_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(tr, "generate_pair", lambda rng: ("a b c d e .", "x"))  # always 6 tokens
    with pytest.raises(ValueError, match="max_words=3 keeps too few sentences"):
        make_corpus(2, max_words=3)


def test_make_corpus_at_the_smallest_limit_still_works():
    pairs = make_corpus(3, seed=0, max_words=3)
    assert all(len(tokenize(en)) == 3 for en, _ in pairs)


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((10, 8, 8), {}, ValueError, "leaves no training pair"),
    ((10, -1, 2), {}, ValueError, "n_valid must be a non-negative int"),
    ((10, 1, 1.5), {}, ValueError, "n_test must be a non-negative int"),
    ((10, 1, 1), {"edges": (20, 10)}, ValueError, "strictly increasing"),
])
def test_split_corpus_bad_arguments(args, kwargs, error, message):
    n, n_valid, n_test = args
    with pytest.raises(error, match=message):
        split_corpus(make_corpus(n, seed=0), n_valid, n_test, **kwargs)


@pytest.mark.parametrize("pairs, message", [
    ("Go.\tVa !", "pairs must be a list of"),
    ([("Go.", "Va !"), "Hi."], r"pairs\[1\] must be an \(english, french\) pair"),
    ([("Go.", "")], r"pairs\[0\] must be an \(english, french\) pair of non-empty strings"),
    ([("Go.", "Va", "x")], r"pairs\[0\]"),
])
def test_split_corpus_rejects_what_is_not_pairs(pairs, message):
    with pytest.raises(TypeError, match=message):
        split_corpus(pairs, 0, 0)


def test_split_corpus_fills_a_small_bucket_from_the_others():
    pairs = [(f"w{i} x .", f"f{i} .") for i in range(30)] + [(" ".join(["y"] * 40) + " .", "long .")]
    c = split_corpus(pairs, n_valid=5, n_test=12, seed=0)
    assert len(c.test) == 12 and len(c.valid) == 5  # buckets 11-20 and 21-30 are empty, 31+ has one
    assert len(c.train) == 31 - 17


@pytest.mark.parametrize("n, edges, error, message", [
    (-1, (10, 20), ValueError, "n_words must be a positive int"),
    (3.5, (10, 20), ValueError, "n_words must be a positive int"),
    (0, (10, 20), ValueError, "n_words must be a positive int, got 0"),  # not "1-10"
    (3, (20, 10), ValueError, "strictly increasing"),
    (3, (10, 10), ValueError, "strictly increasing"),
    (3, (), ValueError, "non-empty"),
    (3, (0, 10), ValueError, "positive ints"),
    (3, "10", ValueError, "edges must be"),
])
def test_length_bucket_bad_input(n, edges, error, message):
    with pytest.raises(error, match=message):
        tr.length_bucket(n, edges)


def test_bucket_order_reads_the_labels_length_bucket_writes():
    labels = [tr.length_bucket(n) for n in (45, 3, 11, 30)]
    assert sorted(labels, key=tr.bucket_order) == ["1-10", "11-20", "21-30", "31+"]
    assert tr.bucket_order("31+") == 31


def test_an_empty_source_sentence_is_refused_by_name_not_put_in_the_first_bucket():
    from course_utils.seq2seq import bleu_by_length

    with pytest.raises(ValueError, match=r"sources\[1\] must hold at least one word, got ''"):
        bleu_by_length(["a b", ""], ["x", "y"], ["x", "y"])


@pytest.mark.parametrize("call, error, message", [
    (lambda: tokenize(["le", "chat"]), TypeError, "text must be a str"),
    (lambda: tokenize(None), TypeError, "text must be a str"),
    (lambda: detokenize("le chat"), TypeError, "got a single str 'le chat'"),
    (lambda: detokenize(["le", 3]), TypeError, r"tokens\[1\] must be a str"),
    (lambda: detokenize(["le"], lang="de"), ValueError, "lang must be one of 'fr', 'en'"),
    (lambda: encode_batch("le chat", Vocab(["le"])), TypeError, "token_lists must be a non-empty list"),
    (lambda: encode_batch([], Vocab(["le"])), TypeError, "token_lists must be a non-empty list"),
    (lambda: encode_batch(["le chat"], Vocab(["le"])), TypeError, "tokens must be a list of str"),
    (lambda: encode_batch([[]], Vocab(["le"]), add_eos=False), ValueError, "nothing to encode"),
    (lambda: generate_pair(0), TypeError, "rng must be a random.Random"),
    (lambda: generate_pair(random.Random(0), n_clauses=0), ValueError, "n_clauses must be an int in"),
    (lambda: generate_pair(random.Random(0), complexity=2.0), ValueError, "complexity must be a real"),
    (lambda: load_tatoeba(SAMPLE, max_pairs=0), ValueError, "max_pairs must be a positive int"),
    # the wrong kind of object, flags that are not bools, empty text where a value is needed
    (lambda: detokenize(None), TypeError, "tokens must be a list of str, got None"),
    (lambda: encode_batch([["le"]], "vocab"), TypeError, "vocab must be a .*Vocab, got str"),
    (lambda: encode_batch([["le"]], Vocab(["le"]), add_bos=1), TypeError,
     "add_bos must be True or False, got int 1"),
    (lambda: tr.train_bpe([]), ValueError, "sentences must not be empty"),
    (lambda: tr.train_bpe(iter(["le chat", 3])), TypeError, r"sentences\[1\] must be a str"),
    (lambda: tr.bucket_order("10-19x"), ValueError, "label must be a length bucket"),
    (lambda: tr.bucket_order(None), TypeError, "label must be a str"),
    (lambda: tr.split_corpus(tr.make_corpus(30, seed=1), 5, 5, seed=None), ValueError,
     "seed must be a non-negative int, got None"),
    (lambda: tr.Corpus("Hi.", [], []), TypeError, "train must be a list of"),
    (lambda: tr.Corpus([], [], []), ValueError, "train must hold at least one"),
    (lambda: tr.Corpus([("Hi.", "Salut.")], [], [], None), TypeError,
     "translations must be a dict"),
    (lambda: load_tatoeba(None), TypeError, "path must be a file path"),
    (lambda: load_tatoeba(SAMPLE, sha256=""), ValueError, "sha256 must be a non-empty str"),
    (lambda: load_tatoeba(SAMPLE, cache_dir=3), TypeError, "cache_dir must be a file path"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("tokens, lang, text", [
    (["l'", "homme", "qu'", "il", "voit", ",", "dort", "."], "fr", "l'homme qu'il voit, dort."),
    (["Qu'", "est-ce", "que", "c'", "est", "?"], "fr", "Qu'est-ce que c'est ?"),
    (["Il", "a", "crié", ":", "«", "Arrêtez", "!", "»"], "fr", "Il a crié : « Arrêtez ! »"),
    (["Vraiment", "?", "!"], "fr", "Vraiment ?!"),
    (["Attends", "…", "quoi", "?"], "fr", "Attends… quoi ?"),
    (["Il", "sait", "tout", "(", "ou", "presque", ")", "."], "fr", "Il sait tout (ou presque)."),
    (["Le", "taux", "est", "de", "5", "%", "."], "fr", "Le taux est de 5 %."),
    (["Ça", "coûte", "3,50", "euros", "."], "fr", "Ça coûte 3,50 euros."),
    (["s’", "il", "vous", "plaît"], "fr", "s’il vous plaît"),
    (["Did", "he", "say", '"', "yes", '"', "?"], "en", 'Did he say "yes"?'),
    (['"', "Come", "in", ",", '"', "she", "said", "."], "en", '"Come in," she said.'),
    (["It", "is", "5", "%", ";", "wait", "!"], "en", "It is 5%; wait!"),
    (["Tom'", "s", "car"], "en", "Tom's car"),
    ([], "fr", ""),
])
def test_detokenize_writes_each_language_s_typography(tokens, lang, text):
    assert detokenize(tokens, lang=lang) == text


@pytest.mark.parametrize("text, tokens", [
    ("L'homme dort.", ["L'", "homme", "dort", "."]),
    ("aujourd'hui, à 9:30 !", ["aujourd'", "hui", ",", "à", "9:30", "!"]),
    ("« Oui » ?", ["«", "Oui", "»", "?"]),
    ("3,5 ou 3, 5", ["3,5", "ou", "3", ",", "5"]),
    ("peut-être...", ["peut-être", ".", ".", "."]),
    ("Je l’ai vu", ["Je", "l’", "ai", "vu"]),
    ("les chats' queues", ["les", "chats", "'", "queues"]),  # an apostrophe before a space elides nothing
])
def test_tokenize_on_punctuation_and_apostrophes(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("le chat noir",), {}, TypeError, "a single str would be read as its characters"),
    ((["le chat"],), {"vocab_size": 0}, ValueError, "vocab_size must be a positive int"),
    ((["le chat"],), {"min_frequency": -1}, ValueError, "min_frequency must be a positive int"),
])
def test_train_bpe_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        tr.train_bpe(*args, **kwargs)
